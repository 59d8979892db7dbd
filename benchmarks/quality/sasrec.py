"""Quality of a preset over several seeds: test metrics mean ± std, with the protocol next to them.

    python -m benchmarks.quality.sasrec s3rec-beauty-sasrec --seeds 1,2,3 train.threads=1

Trains (or resumes) one run per seed under ``--runs-root``, then writes ``<out>/<preset>.json`` (with the
provenance of :mod:`benchmarks.harness`) and ``<out>/<preset>.md`` and prints one JSON summary line.
``--out`` defaults to ``benchmarks/out/quality/sasrec`` (git-ignored); the current summaries are committed
in ``benchmarks/quality/results/sasrec/``. Runs that already finished are reused, so seeds
can be trained in parallel processes (``--seeds 1`` in one, ``--seeds 2`` in another) and summarised
afterwards with ``--summarise-only --seeds 1,2,3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.runs import train

METRICS = ["HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR@10"]
TRAINING_KEYS = ["sample_mode", "loss", "lr", "batch_size", "epochs", "patience", "valid_metric"]


def summarise(preset: str, runs: list[Path], out: Path) -> dict[str, Any]:
    unfinished = [str(run) for run in runs if not (run / "results.json").exists()]
    if unfinished:
        raise SystemExit(f"no results.json yet (still training or never trained): {', '.join(unfinished)}")
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    trains = [json.loads((run / "config.json").read_text())["train"] for run in runs]
    test = [r["test"]["metrics"] for r in results]
    summary: dict[str, Any] = {
        "preset": preset,
        "seeds": [r["test"]["protocol"]["seed"] for r in results],
        "protocol": {k: v for k, v in results[0]["test"]["protocol"].items() if k != "seed"},
        "best_epochs": [r["best_epoch"] for r in results],
        "training": {key: sorted({str(t[key]) for t in trains}) for key in TRAINING_KEYS},
        "runs": [str(run) for run in runs],
        "provenance": harness.provenance(),
    }
    for metric in METRICS:
        values = [t[metric] for t in test]
        summary[metric] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{preset}.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"### {preset}",
        "",
        f"seeds {summary['seeds']}, best epochs {summary['best_epochs']}; protocol: "
        f"{summary['protocol']['split']}, {summary['protocol']['candidates']}, "
        f"{summary['protocol']['history_masking']}; training: "
        + ", ".join(f"{key} {'/'.join(values)}" for key, values in summary["training"].items()),
        "",
        "| metric | mean | std | per seed |",
        "|---|---|---|---|",
    ]
    for metric in METRICS:
        m = summary[metric]
        lines.append(f"| {metric} | {m['mean']:.4f} | {m['std']:.4f} | {', '.join(f'{v:.4f}' for v in m['values'])} |")
    (out / f"{preset}.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/quality"))
    parser.add_argument("--out", type=Path, default=harness.out_dir("quality", "sasrec"))
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_intermixed_args()
    tune_allocator()  # as the CLI does
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = args.runs_root / f"{args.preset}-s{seed}"
        runs.append(run_dir)
        if args.summarise_only or (run_dir / "results.json").exists():
            continue
        cfg = load_config(args.preset, [*args.overrides, f"train.seed={seed}", "progress=never"])
        train(cfg, run_dir)
    print(json.dumps(summarise(args.preset, runs, args.out)))


if __name__ == "__main__":
    main()
