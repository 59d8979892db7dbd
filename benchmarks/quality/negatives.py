"""Full softmax against sampled softmax with uniform, popularity and in-batch negatives (± log-Q correction):
test quality and time per epoch, per preset.

    python -m benchmarks.quality.negatives --presets ml1m-sasrec,beauty-loo-sasrec --seeds 1,2,3 train.threads=8
    python -m benchmarks.quality.negatives --presets ml100k-sasrec --variants ce,in_batch_logq \\
        train.epochs=1 data.prepare.max_users=100 model.max_len=20 train.stride=20   # a check that it runs

Every variant is the preset with ``train.loss`` / ``train.negatives`` / ``train.logq`` set (and
``train.n_negatives`` from ``--n-negatives``); everything else, early stopping included, is the preset's.
Runs go under ``--runs-root`` (one per preset, variant and seed; a finished run is reused, an interrupted
one resumes), one record per run goes to the JSONL file of :mod:`benchmarks.harness`, and
``<out>/negatives.md`` gets the table (mean over seeds): test NDCG@10 / HR@10, epochs to the best
checkpoint, seconds per training epoch and per validation pass. Times are comparable only within one
machine and one ``train.threads``.
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
from thinkrec.runs import read_log, train

# uniform and popularity negatives are drawn as the preset says (train.negatives_per); in-batch ones are the
# batch's own
VARIANTS: dict[str, list[str]] = {
    "ce": ["train.loss=ce", "train.negatives_per=batch", "train.logq=false"],
    "uniform": ["train.loss=sampled", "train.negatives=uniform"],
    # the same draws; Adam updates only the item rows each batch touched (lazy)
    "uniform_touched": ["train.loss=sampled", "train.negatives=uniform", "train.item_updates=touched"],
    "popularity": ["train.loss=sampled", "train.negatives=popularity"],
    "popularity_logq": ["train.loss=sampled", "train.negatives=popularity", "train.logq=true"],
    "in_batch": ["train.loss=sampled", "train.negatives=in_batch", "train.negatives_per=batch"],
    "in_batch_logq": ["train.loss=sampled", "train.negatives=in_batch", "train.logq=true", "train.negatives_per=batch"],
}
METRICS = ["NDCG@10", "HR@10", "NDCG@20", "HR@20"]


def run_one(preset: str, variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    overrides = [*VARIANTS[variant], f"train.seed={seed}", "progress=never", *args.overrides]
    if variant != "ce":
        overrides.append(f"train.n_negatives={args.n_negatives}")
    cfg = load_config(preset, overrides)
    run_dir = Path(args.runs_root) / f"{preset}-{variant}-s{seed}"
    if not (run_dir / "results.json").exists():
        train(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    log = read_log(run_dir)
    epochs = [row["train_seconds"] for row in log]
    evals = [row["eval_seconds"] for row in log if "eval_seconds" in row]
    metrics = results["test"]["metrics"]
    return {
        "preset": preset,
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "test": {m: metrics[m] for m in METRICS if m in metrics},
        "best_epoch": results["best_epoch"],
        "epochs_run": results["epochs_run"],
        "train_seconds_per_epoch": statistics.median(epochs) if epochs else None,
        "valid_seconds_per_pass": statistics.median(evals) if evals else None,
        "run_dir": str(run_dir),
    }


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | variant | seeds | NDCG@10 | HR@10 | best epoch | s / epoch | s / validation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["preset"], record["variant"]), []).append(record)

    def mean(rows: list[dict[str, Any]], key: str, digits: int) -> str:
        values = [r["test"].get(key) if key in METRICS else r[key] for r in rows]
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.{digits}f}{spread}"

    for (preset, variant), rows in groups.items():
        cells = [
            mean(rows, "NDCG@10", 4),
            mean(rows, "HR@10", 4),
            mean(rows, "best_epoch", 1),
            mean(rows, "train_seconds_per_epoch", 2),
            mean(rows, "valid_seconds_per_pass", 2),
        ]
        lines.append(f"| {preset} | {variant} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="ml1m-sasrec,beauty-loo-sasrec", help="comma-separated presets")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="1", help="comma-separated seeds")
    p.add_argument("--n-negatives", type=int, default=256, help="train.n_negatives of the sampled variants")
    p.add_argument("--runs-root", default=str(harness.out_dir("quality", "negatives", "runs")))
    p.add_argument("--out", type=Path, default=harness.out_dir("quality", "negatives"))
    harness.add_records_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.threads=8")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    tune_allocator()
    records = harness.Records("quality", "negatives", args.records)
    done = []
    for preset in args.presets.split(","):
        for variant in args.variants.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                done.append(records.write(run_one(preset, variant, seed, args)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "negatives.md").write_text(table(done))
    print(table(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
