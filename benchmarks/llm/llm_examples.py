"""What an R²ec run writes and recommends for a few test users, and what one user costs.

    python -m benchmarks.llm.llm_examples RUN --users 5 -k 5 --threads 1 [--md docs-snippet.md]

Takes the first ``--users`` of the run's seeded test samples (the same samples its test report holds) and, one
user at a time (batch 1, as a served request), writes the reasoning greedily with the run's best weights, ranks
the full catalogue (pad and, with ``eval.mask_history``, the user's history masked) and prints the last history
titles, the reasoning, the top-``k`` titles and the true next item with its rank. Per user it times the
reasoning (generation plus the user-vector forward) and the scoring, and counts the generated tokens and
whether the answer marker ended the text. Prints one JSON record with machine, torch version and commit;
``--md`` also writes the examples as Markdown.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from thinkrec.eval.metrics import target_ranks
from thinkrec.llm.data import eval_examples
from thinkrec.llm.recpo import history_mask, mask_scores
from thinkrec.llm.run import load_split
from thinkrec.llm.trainer import peak_memory
from thinkrec.serve.llm import LLMRecommender
from thinkrec.storage import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an LLM run directory (thinkrec llm train)")
    parser.add_argument("--users", type=int, default=5, help="test samples shown (default 5)")
    parser.add_argument("-k", type=int, default=5, help="top-k titles per user (default 5)")
    parser.add_argument("--history", type=int, default=5, help="last history titles shown (default 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--md", type=Path, help="also write the examples as Markdown here")
    return parser.parse_args(argv)


def markdown(record: dict[str, Any]) -> str:
    """The examples as Markdown: one block per user."""
    lines = [f"Run `{record['run']}` ({record['scorer']}); {record['protocol']}.", ""]
    for i, ex in enumerate(record["examples"], 1):
        lines += [
            f"**User {ex['user']}** (test sample {i}; last {len(ex['history'])} of {ex['history_len']} history items:"
            f" {'; '.join(ex['history'])})",
            "",
            "> " + (html.escape(ex["reasoning"].strip().replace("\n", " ")) or "(no reasoning)"),  # <answer> shows
            "",
            f"Top {len(ex['top'])}: " + "; ".join(f"{j}. {t}" for j, t in enumerate(ex["top"], 1)),
            f" · true next item: {ex['target']} (rank {ex['target_rank'] + 1} of {record['n_items']})",
            "",
        ]
    cost = record["cost"]
    lines.append(
        f"Per user (batch 1, {cost['device']}, {record['threads']} thread(s)): reasoning"
        f" {cost['reasoning_seconds_mean']:.1f} s (generation + user vector), scoring"
        f" {cost['scoring_seconds_mean']:.3f} s, {cost['tokens_mean']:.0f} tokens at"
        f" {cost['tokens_per_second']:.1f} tokens/s; the model wrote the answer marker itself in"
        f" {cost['marker_share']:.0%} of the texts (the others were cut at the token budget);"
        f" peak memory {cost['peak_memory_mb']:.0f} MB ({cost['peak_memory_kind']})."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    rec = LLMRecommender.from_run(args.run)
    load_seconds = time.perf_counter() - t_load
    trainer = rec.timed_trainer  # the run's own prompts (with its time setting), as in its test report
    cfg, model = trainer.cfg, trainer.model
    split = load_split(cfg)
    examples = eval_examples(split, cfg, "test")[: args.users]
    reasoning = cfg.recpo.variant == "recpo"
    titles = ["<pad>", *rec.vocabulary.titles]
    shown, reason_s, score_s, tokens = [], [], [], []
    with torch.inference_mode():
        for ex in examples:
            t0 = time.perf_counter()
            users, texts, ended = trainer.user_vectors([ex], reasoning)
            t1 = time.perf_counter()
            scores = model.score_all(users)
            if cfg.eval.mask_history:
                scores = mask_scores(scores, history_mask([ex.seen], scores.shape[1], device=scores.device))
            top = torch.topk(scores[0], args.k).indices.tolist()
            rank = int(target_ranks(scores, torch.as_tensor([ex.target], device=scores.device))[0])
            t2 = time.perf_counter()
            reason_s.append(t1 - t0)
            score_s.append(t2 - t1)
            n_tokens = len(model.tokenizer.encode(texts[0], add_special_tokens=False)) if reasoning else 0
            tokens.append(n_tokens)
            shown.append(
                {
                    "user": str(split.dataset.user_ids[ex.user]),
                    "position": ex.position,
                    "history_len": len(ex.seen),
                    "history": [titles[i] for i in ex.shown[-args.history :]],
                    "reasoning": texts[0],
                    "marker_written": ended[0],  # by the model, not appended at the length limit
                    "top": [titles[i] for i in top],
                    "target": titles[ex.target],
                    "target_rank": rank,
                }
            )
    described = rec.describe()
    record = harness.stamp(
        {
            "benchmark": "llm_examples",
            "run": str(args.run),
            "scorer": described["scorer"],
            "reasoning": described["reasoning"],
            "n_items": rec.n_items,
            "threads": args.threads,
            "protocol": (
                f"the first {len(examples)} of the run's seeded test samples (sample.seed={cfg.sample.seed}), full"
                f" catalogue, history {'masked' if cfg.eval.mask_history else 'not masked'}, batch 1"
            ),
            "load_seconds": load_seconds,
            "cost": {
                **peak_memory(model.device),
                "device": str(model.device),
                "reasoning_seconds": reason_s,
                "scoring_seconds": score_s,
                "reasoning_seconds_mean": float(np.mean(reason_s)),
                "scoring_seconds_mean": float(np.mean(score_s)),
                "tokens": tokens,
                "tokens_mean": float(np.mean(tokens)),
                "tokens_per_second": float(sum(tokens) / sum(reason_s)) if reasoning else 0.0,
                "marker_share": float(np.mean([ex["marker_written"] for ex in shown])),
            },
            "examples": shown,
        }
    )
    print(json.dumps(record, indent=1, ensure_ascii=False))
    if args.md:
        atomic_write_text(args.md, markdown(record))


if __name__ == "__main__":
    main()
