"""Seconds per training step of the LLM under several model settings, paired in one process.

    python -m benchmarks.llm.llm_precision --threads 1
    python -m benchmarks.llm.llm_precision --arm "" --arm "model.autocast=bf16" \\
        --arm "model.autocast=bf16 model.lora_layers=10"

Each arm loads the model with its overrides on top of ``config`` (default: the ML-100K cold start, no
reasoning) and trains ``--steps`` steps of ``--users`` users on the same examples; the first step of each arm
is a warm-up and is reported apart. ``--rounds`` repeats the whole sequence of arms (each round loads every arm
again), so that no arm always runs in the warmest process state. The item table is random (a step's cost does
not depend on its values), so nothing is built or cached. One JSONL record per arm and round, with machine,
torch version and commit.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time

import torch

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.data.split import Split
from thinkrec.llm.config import load_llm_config
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.run import build_model, load_split, make_builder
from thinkrec.llm.trainer import LLMTrainer

DEFAULT_ARMS = ["", "model.autocast=bf16", "model.autocast=bf16 model.lora_layers=10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "config", nargs="?", default=str(harness.REPO / "benchmarks" / "llm" / "llm_ml100k_coldstart.toml")
    )
    parser.add_argument("--arm", action="append", help="overrides of one arm, space-separated (repeatable)")
    parser.add_argument("--base", default="model.autocast=none model.lora_layers=null", help="overrides of every arm")
    parser.add_argument("--users", type=int, default=4, help="users per step")
    parser.add_argument("--steps", type=int, default=3, help="steps per arm, the first a warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="times the whole sequence of arms runs")
    parser.add_argument("--threads", type=int, default=1)
    harness.add_records_argument(parser)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    records = harness.Records("llm", "precision", args.records)
    arms = [(r, arm) for r in range(args.rounds) for arm in (args.arm or DEFAULT_ARMS)]
    splits: dict[str, Split] = {}  # one load per data setting, not per arm and round
    for round_, arm in arms:
        overrides = [*shlex.split(args.base), *shlex.split(arm), f"recpo.users_per_step={args.users}"]
        cfg = load_llm_config(args.config, overrides)
        key = cfg.data.model_dump_json()
        if key not in splits:
            splits[key] = load_split(cfg)
        split = splits[key]
        model = build_model(cfg)
        bank = PromptBank(split.dataset, cfg, make_builder(model, cfg))
        trainer = LLMTrainer(model, bank, cfg)
        model.item_table = torch.randn(split.dataset.n_items + 1, model.hidden_size, device=model.device)
        examples = train_examples(split, cfg)
        if len(examples) < args.steps * args.users:
            raise SystemExit(f"{len(examples)} training examples: fewer than --steps x --users")
        seconds = []
        for step in range(args.steps):
            batch = examples[step * args.users : (step + 1) * args.users]
            t0 = time.perf_counter()
            trainer.step(batch, step + 1)
            seconds.append(time.perf_counter() - t0)
        timed = seconds[1:] or seconds
        records.write(
            {
                "benchmark": "llm_precision",
                "config": args.config,
                "arm": arm or "(base)",
                "round": round_,
                "overrides": overrides,
                "variant": cfg.recpo.variant,
                "users_per_step": args.users,
                "prompt_tokens": [len(bank.user_ids(ex)) for ex in examples[: args.steps * args.users]],
                "threads": args.threads,
                "warmup_seconds": seconds[0],
                "step_seconds": timed,
                "median_step_seconds": statistics.median(timed),
            }
        )
        del trainer, model


if __name__ == "__main__":
    main()
