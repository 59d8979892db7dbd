"""Time one RecPO step of B=4 users x G=4 rollouts with the default model, phase by phase, and profile it.

    python -m benchmarks.llm.llm_step --threads 1      # timings JSON: benchmarks/out/llm/step.json

Compares the library's step with the avoidable work it removes, measured on the same users:

- ``naive rollouts``: Hugging Face ``generate(num_return_sequences=G, stop_strings=[marker])`` -- the prompt
  is expanded G times before prefill, so it is encoded once per rollout;
- ``naive policy forward``: every rollout's full ``prompt + completion`` sequence run with gradients (no shared
  prompt cache), plus a separate no-grad pass to score rewards;
- ``item table``: rebuilding the full table every step instead of refreshing the batch's targets.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.llm.config import load_llm_config
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.run import build_model, initial_item_table, load_split, make_builder
from thinkrec.llm.trainer import LLMTrainer


def naive_rollouts(trainer: LLMTrainer, prompts: list[list[int]]) -> float:
    model, cfg = trainer.model, trainer.cfg
    t0 = time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:  # one user at a time: no padding effects, same work as a padded batch
            ids = torch.tensor([prompt])
            model.lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=cfg.recpo.temperature,
                top_k=cfg.recpo.top_k,
                max_new_tokens=cfg.recpo.max_new_tokens,
                num_return_sequences=cfg.recpo.group_size,
                stop_strings=[cfg.prompt.answer_marker],
                tokenizer=model.tokenizer,
                pad_token_id=model.pad_id,
            )
    return time.perf_counter() - t0


def naive_policy_forward(trainer: LLMTrainer, prompts: list[list[int]], completions: list[list[int]]) -> float:
    """Full sequences per rollout with gradients + a separate no-grad reward pass, then backward."""
    model, g = trainer.model, trainer.cfg.recpo.group_size
    t0 = time.perf_counter()
    seqs = [prompts[i // g] + c for i, c in enumerate(completions)]
    with torch.no_grad():
        for u in range(len(prompts)):
            model.encode(seqs[u * g : (u + 1) * g])  # the reward pass
    total = torch.zeros(())
    for u in range(len(prompts)):
        from thinkrec.llm.model import right_pad

        ids, mask = right_pad(seqs[u * g : (u + 1) * g], model.pad_id)
        hidden, _ = model.hidden_states(ids, mask)
        logits = model.lm_head(hidden[:, :-1])
        total = total - torch.log_softmax(logits, -1).mean() + 1e-3 * hidden[:, -1].sum()
    total.backward()  # type: ignore[no-untyped-call]
    model.lm.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(harness.REPO / "benchmarks" / "llm" / "llm_ml100k.toml"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true", help="only the library's step")
    parser.add_argument(
        "--out", type=Path, default=harness.out_dir("llm", "step.json"), help="the timings JSON (%(default)s)"
    )
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    torch.set_num_threads(args.threads)
    cfg = load_llm_config(args.config, ["recpo.users_per_step=4", "recpo.group_size=4"])
    split = load_split(cfg)
    model = build_model(cfg)
    bank = PromptBank(split.dataset, cfg, make_builder(model, cfg))
    t0 = time.perf_counter()
    initial_item_table(model, bank, cfg, cache=True, progress=True)
    table_seconds = time.perf_counter() - t0
    trainer = LLMTrainer(model, bank, cfg)
    batch = train_examples(split, cfg)[:4]
    prompts = [bank.user_ids(ex) for ex in batch]
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    log = trainer.step(batch, 1)
    profiler.disable()
    step_seconds = time.perf_counter() - t0
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
    result: dict[str, Any] = {
        "threads": args.threads,
        "users": 4,
        "rollouts_per_user": 4,
        "max_new_tokens": cfg.recpo.max_new_tokens,
        "prompt_tokens": [len(p) for p in prompts],
        "reasoning_len_mean": log.reasoning_len,
        "step_seconds": step_seconds,
        "phases": log.seconds,
        "item_table_seconds (cached after the first build)": table_seconds,
    }
    print(json.dumps(result, indent=2))
    print(stream.getvalue()[:6000])
    if not args.skip_naive:
        completions = trainer.model.generate(
            prompts,
            4,
            max_new_tokens=cfg.recpo.max_new_tokens,
            marker=cfg.prompt.answer_marker,
            marker_ids=bank.builder.marker_ids,
            temperature=cfg.recpo.temperature,
            top_k=cfg.recpo.top_k,
            generator=torch.Generator().manual_seed(0),
        ).ids
        result["naive_rollouts_seconds"] = naive_rollouts(trainer, prompts)
        result["naive_policy_forward_backward_seconds"] = naive_policy_forward(trainer, prompts, completions)
        print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(harness.stamp(result), indent=2))


if __name__ == "__main__":
    main()
