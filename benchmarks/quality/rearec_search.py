"""A grid search on validation only, as one resumable command: every combination of the ``--grid`` values
for every seed is trained (a finished run is skipped, a killed one resumes after its last epoch), and one
table ranks the settings by their mean validation metric over seeds.

    python -m benchmarks.quality.rearec_search --preset ml100k-time-sasrec-prl \
        --grid reasoning.tau=0.05,0.1,0.5,1.0 --grid reasoning.prl_alpha=1.2,2,5 --seeds 1 --threads 1
    python -m benchmarks.quality.rearec_search --preset beauty-time-sasrec-prl-released \
        --grid reasoning.tau=0.05,0.1,0.5,1.0 --grid reasoning.prl_alpha=1.2,2,5 --seeds 1 \
        --out benchmarks/out/quality/search/beauty-prl-released

The table (``<out>/search.md`` and ``search.json``, rewritten after every finished run, so a stopped search
still leaves the table of what it finished) lists per setting the mean validation metric (and, for reasoning
runs, every step's and the oracle's), the best epochs and seconds per epoch. Test metrics are shown for the
setting chosen on validation only: nothing else of the test set is read to choose. Positional arguments are
dotted overrides for every run (e.g. ``train.epochs=60``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from thinkrec.config.loader import load_config
from thinkrec.runs import read_log, set_threads, train
from thinkrec.storage import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="preset or config file every run starts from")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="values of one key (repeatable)"
    )
    parser.add_argument("--seeds", default="1", help="comma list of seeds (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--metric", default=None, help="validation metric to rank by (default: train.valid_metric)")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/out/quality/search/<preset>)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    return parser.parse_args(argv)


def grid_settings(grid: list[str]) -> list[dict[str, str]]:
    """Every combination of the ``KEY=V1,V2`` values, as ``{key: value}`` dicts (in the order given)."""
    axes: list[tuple[str, list[str]]] = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,...")
        axes.append((key.strip(), [v.strip() for v in values.split(",") if v.strip()]))
    return [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]


def setting_name(setting: dict[str, str]) -> str:
    """A folder name for a setting: ``tau=0.05,prl_alpha=1.2`` (the last part of each key)."""
    return ",".join(f"{key.rpartition('.')[2]}={value}" for key, value in setting.items()) or "default"


def run_one(args: argparse.Namespace, setting: dict[str, str], seed: int, out: Path) -> dict[str, Any]:
    """Train (or resume, or read) one run; its validation (and test) results and epoch log summary."""
    run_dir = out / "runs" / setting_name(setting) / f"s{seed}"
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in setting.items()), f"train.seed={seed}"]
    overrides += [f"train.threads={args.threads}", "progress=never"]
    cfg = load_config(args.preset, overrides)
    if not (run_dir / "results.json").exists():
        set_threads(args.threads)
        train(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    log = read_log(run_dir)
    seconds = [row["train_seconds"] for row in log if not row.get("warmup")]
    return {
        "setting": setting,
        "seed": seed,
        "run_dir": str(run_dir),
        "best_epoch": results["best_epoch"],
        "epochs_run": results["epochs_run"],
        "valid": results["valid"],
        "test": results["test"],
        "epoch_seconds": statistics.median(seconds) if seconds else None,
        "valid_metric": cfg.train.valid_metric,
    }


def summarise(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per setting, best mean validation metric first."""
    rows = []
    for name in dict.fromkeys(setting_name(r["setting"]) for r in runs):
        mine = [r for r in runs if setting_name(r["setting"]) == name]
        valid = [r["valid"]["metrics"][metric] for r in mine]
        steps = [r["valid"].get("reasoning") for r in mine]
        row: dict[str, Any] = {
            "setting": name,
            "seeds": [r["seed"] for r in mine],
            "valid": statistics.fmean(valid),
            "valid_std": statistics.stdev(valid) if len(valid) > 1 else 0.0,
            "best_epochs": [r["best_epoch"] for r in mine],
            "epoch_seconds": statistics.fmean(s for r in mine if (s := r["epoch_seconds"]) is not None)
            if any(r["epoch_seconds"] is not None for r in mine)
            else None,
        }
        if all(s is not None for s in steps):
            k = len(steps[0]["steps"])
            row["valid_steps"] = [statistics.fmean(s["steps"][i][metric] for s in steps) for i in range(k)]
            row["valid_oracle"] = statistics.fmean(s["oracle"][metric] for s in steps)
        rows.append(row)
    rows.sort(key=lambda row: -row["valid"])
    if rows:  # the test set is read for the setting chosen on validation only
        chosen = [r for r in runs if setting_name(r["setting"]) == rows[0]["setting"]]
        rows[0]["test"] = statistics.fmean(r["test"]["metrics"][metric] for r in chosen)
    return rows


def markdown(rows: list[dict[str, Any]], metric: str, preset: str) -> str:
    lines = [
        f"# Search over {preset}, ranked by validation {metric} (mean over seeds)",
        "",
        f"| setting | seeds | valid {metric} | valid per step r_0..r_K | valid oracle | best epochs | s/epoch |"
        f" test {metric} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        steps = " / ".join(f"{v:.4f}" for v in row.get("valid_steps", []))
        oracle = f"{row['valid_oracle']:.4f}" if "valid_oracle" in row else ""
        seconds = f"{row['epoch_seconds']:.1f}" if row["epoch_seconds"] is not None else ""
        test = f"**{row['test']:.4f}** (chosen on validation)" if "test" in row else "–"
        lines.append(
            f"| {row['setting']} | {len(row['seeds'])} | {row['valid']:.4f} ± {row['valid_std']:.4f} | {steps} |"
            f" {oracle} | {row['best_epochs']} | {seconds} | {test} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or harness.out_dir("quality", "search", Path(args.preset).stem)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs: list[dict[str, Any]] = []
    for setting in grid_settings(args.grid):
        for seed in seeds:
            runs.append(run_one(args, setting, seed, out))
            metric = args.metric or runs[0]["valid_metric"]
            rows = summarise(runs, metric)
            summary = harness.stamp(
                {"preset": args.preset, "overrides": args.overrides, "metric": metric, "rows": rows}
            )
            atomic_write_text(out / "search.json", json.dumps(summary, indent=1) + "\n")
            atomic_write_text(out / "search.md", markdown(rows, metric, args.preset))
    print((out / "search.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
