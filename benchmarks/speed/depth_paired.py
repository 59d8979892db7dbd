"""Paired rounds of one evaluation with a depth selector against the same evaluation at fixed K, in one process.

The two sides evaluate the same samples of a trained reasoning run in turns, the side going first alternating
between rounds (the structure of ``eval_paired``), so a drift of the host slower than a round cancels in the
round's ratio:

- **fixed K**: what ``thinkrec evaluate RUN`` computes without ``--depth``: the run's inference mode with every
  step's ranks and the mean of steps (the per-step table);
- **selector**: ``thinkrec evaluate RUN --depth NAME``: the same, plus the signals the selector reads (from the
  same score blocks), its choice per sample and the ranks of that choice.

With ``--no-steps`` (``thinkrec evaluate --no-steps``: what batch recommendation computes) neither side computes the
per-step table:

- **fixed K**: the run's inference mode only: every reasoning step for every sample (the inference mode
  reads r_K), one scoring of the chosen user vector;
- **selector**: a halting evaluation: after each step the selector decides which samples stop, only the
  others get the next reasoning step, and each step a sample reached is scored once (its signals and its
  rank from the same blocks).

Both are :func:`thinkrec.runs.evaluation_report` (what ``thinkrec evaluate`` times as ``eval_seconds``), timed
around the whole call. The selector is loaded from the run directory, or fit on the run's validation samples
and saved there, once before the rounds (not timed). One untimed evaluation per side comes first.

    python -m benchmarks.speed.depth_paired RUN_DIR --depth router --rounds 60 --threads 2
    python -m benchmarks.speed.depth_paired RUN_DIR --depth entropy --split valid --rounds 30
    python -m benchmarks.speed.depth_paired RUN_DIR --depth router-prefix --no-steps --rounds 30 --threads 1

Writes one record per round and a summary record (``"kind": "summary"``; to stdout and ``benchmarks/out/speed/``):
both sides' fastest and median times, the median of the per-round ratios (selector / fixed K) with a
distribution-free 95% interval, how many rounds were at or under ``--goal`` (default 1.05), and the selector's
mean steps used and their histogram (fixed K uses K for every sample).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

from benchmarks import harness
from benchmarks.speed.eval_paired import median_interval
from thinkrec.allocator import tune_allocator
from thinkrec.errors import ThinkrecError
from thinkrec.runs import evaluation_report, load_data, load_run, run_selector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory of a reasoning model (thinkrec train)")
    parser.add_argument("--depth", required=True, help="the depth selector (router, entropy, agree, fixed:1, ...)")
    parser.add_argument("--split", choices=["valid", "test"], default="test", help="which samples (default test)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=60, help="paired rounds (one evaluation per side each)")
    parser.add_argument("--goal", type=float, default=1.05, help="the ratio the summary counts rounds at or under")
    parser.add_argument(
        "--no-steps",
        action="store_true",
        help="no per-step table on either side: fixed K scores the inference mode, the selector halts",
    )
    harness.add_records_argument(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    records = harness.Records("speed", f"depth_paired_{args.run_dir.name}", args.records)

    tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    try:
        cfg, model = load_run(args.run_dir, args.checkpoint)
        cfg = cfg.model_copy(update={"progress": "never"})
        _dataset, split = load_data(cfg)
        t0 = time.perf_counter()
        selector = run_selector(args.run_dir, args.depth, model, cfg, checkpoint=args.checkpoint, data=lambda: split)
        ready_seconds = time.perf_counter() - t0
    except ThinkrecError as exc:
        print(f"depth_paired: {exc}", file=sys.stderr)
        return 2

    per_step = not args.no_steps

    def fixed() -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        report, _ = evaluation_report(model, split, cfg, args.split, cfg.eval, per_step=per_step)
        return time.perf_counter() - start, report

    def adaptive() -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        report, _ = evaluation_report(model, split, cfg, args.split, cfg.eval, depth=selector, per_step=per_step)
        return time.perf_counter() - start, report

    _, fixed_report = fixed()  # untimed: kernel setup on both sides
    _, depth_report = adaptive()
    fixed_times: list[float] = []
    depth_times: list[float] = []
    for r in range(args.rounds):
        if r % 2 == 0:
            (a, _), (b, _) = fixed(), adaptive()
        else:
            (b, _), (a, _) = adaptive(), fixed()
        fixed_times.append(a)
        depth_times.append(b)
        records.write(
            {"kind": "round", "round": r, "fixed_first": r % 2 == 0, "fixed_k": a, "selector": b, "ratio": b / a}
        )
    ratios = [b / a for a, b in zip(fixed_times, depth_times, strict=True)]
    lo, hi = median_interval(ratios)
    depth = depth_report["depth"]
    summary = {
        "kind": "summary",
        "run_dir": str(args.run_dir),
        "split": args.split,
        "n_samples": depth_report["n_samples"],
        "depth": args.depth,
        "selector": depth["description"],
        "steps": depth["fixed_k"]["step"],
        "threads": args.threads,
        "rounds": args.rounds,
        "allocator_tuned": tuned,
        "per_step_table": per_step,
        "baseline": (
            "thinkrec evaluate without --depth: the inference mode, every step's ranks and the mean of steps"
            if per_step
            else "thinkrec evaluate --no-steps without --depth: every reasoning step, the inference mode's ranks"
        ),
        "selector_side": (
            "the same, plus the selector's signals from the same score blocks, its choice and its ranks"
            if per_step
            else "halting: each sample's steps until the selector stops it, each reached step scored once"
        ),
        "selector_ready_seconds": ready_seconds,
        "fit": depth["fit"],
        "fixed_k_fastest": min(fixed_times),
        "fixed_k_median": median(fixed_times),
        "selector_fastest": min(depth_times),
        "selector_median": median(depth_times),
        "fastest_ratio": min(depth_times) / min(fixed_times),
        "median_ratio_of_rounds": median(ratios),
        "median_ratio_95": [lo, hi],
        "goal": args.goal,
        "rounds_at_or_under_goal": sum(x <= args.goal for x in ratios),
        "steps_used_mean": depth["steps_used"]["mean"],
        "steps_used_histogram": depth["steps_used"]["histogram"],
        "rows_per_step": depth["steps_used"].get("rows_per_step"),
        "inference_mode_metrics": fixed_report["metrics"],
        "fixed_k_metrics": depth["fixed_k"].get("metrics", fixed_report["metrics"]),
        "selector_metrics": depth["metrics"],
    }
    records.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
