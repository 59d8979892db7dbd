"""Which setting validation chooses: a table of finished runs that differ in one hyper-parameter.

    thinkrec train ml100k-time-sasrec-erl reasoning.erl_lambda=0.001 train.seed=1 train.epochs=40 \
        run_dir=benchmarks/out/quality/sweep/runs/ml100k-time/erl-0.001-s1      # one run per value
    python -m benchmarks.quality.selection_table benchmarks/out/quality/sweep/runs/ml100k-time/erl-*-s1 \
        --keys reasoning.erl_lambda --out benchmarks/out/quality/sweep/selection-ml100k-time

For every run directory (or record: ``config.json``, ``log.jsonl`` and ``results.json`` are all it reads) it
prints the values of ``--keys``, the best epoch, the best validation score of the run's own
``train.valid_metric`` (what early stopping and the choice use) and the test NDCG@20 of that best
checkpoint. Runs are grouped by reasoning objective; in each group the run with the highest validation
score is marked as chosen. The test column is reported, never used to choose. ``--save DIR`` copies the
three small files of every run into ``DIR/<run name>/`` (no checkpoints), so the table can be rebuilt
without the checkpoints. ``--out STEM`` writes the table to ``STEM.md`` and ``STEM.json``. The last line
printed is one machine-readable JSON object: the rows and the provenance of :mod:`benchmarks.harness`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks import harness
from thinkrec.reasoning.config import KINDS
from thinkrec.runs import flat_config, read_log, saved_config

FILES = ("config.json", "log.jsonl", "results.json")
TEST_METRIC = "NDCG@20"


def is_reasoning_key(key: str) -> bool:
    """Whether ``key`` is a setting of some reasoning kind (``reasoning.erl_lambda``)."""
    section, _, name = key.partition(".")
    return section == "reasoning" and any(name in member.model_fields for member in KINDS.values())


def row_of(run: Path, keys: list[str]) -> dict[str, Any]:
    missing = [name for name in FILES if not (run / name).exists()]
    if missing:
        raise SystemExit(f"{run}: no {', '.join(missing)} (is the run finished?)")
    cfg = saved_config(run)
    results = json.loads((run / "results.json").read_text())
    metric = cfg.train.valid_metric
    history = read_log(run)
    best = max(history, key=lambda row: row["valid"][metric])
    config = flat_config(cfg)
    # a setting of another reasoning kind (erl_lambda in a PRL run) is blank in this run's row
    unknown = [key for key in keys if key not in config and not is_reasoning_key(key)]
    if unknown:
        raise SystemExit(f"{run}/config.json has no key {', '.join(map(repr, unknown))}")
    return {
        "run": run.name,
        "objective": cfg.reasoning.kind,
        **{key: config.get(key) for key in keys},
        "seed": cfg.train.seed,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "valid_metric": metric,
        "valid": best["valid"][metric],
        f"test_{TEST_METRIC}": results["test"]["metrics"][TEST_METRIC],
    }


def mark_chosen(rows: list[dict[str, Any]]) -> None:
    for objective in {row["objective"] for row in rows}:
        group = [row for row in rows if row["objective"] == objective]
        best = max(group, key=lambda row: row["valid"])
        for row in group:
            row["chosen"] = row is best


def markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    metric = rows[0]["valid_metric"]
    head = ["run", "objective", *keys, "seed", "epochs / best", f"valid {metric}", f"test {TEST_METRIC}", "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["run"],
            row["objective"],
            *(str(row[key]) for key in keys),
            str(row["seed"]),
            f"{row['epochs_run']} / {row['best_epoch']}",
            f"{row['valid']:.4f}",
            f"{row[f'test_{TEST_METRIC}']:.4f}",
            "**yes**" if row["chosen"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories or records")
    parser.add_argument(
        "--keys", default="", help="comma list of dotted config keys to show, e.g. reasoning.erl_lambda"
    )
    parser.add_argument("--save", type=Path, help="copy each run's config, log and results into this folder")
    parser.add_argument("--out", type=Path, help="write the table to OUT.md and OUT.json")
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.keys.split(",") if key.strip()]
    rows = [row_of(run, keys) for run in args.runs]
    mark_chosen(rows)
    if args.save is not None:
        for run in args.runs:
            target = args.save / run.name
            target.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                if (run / name).resolve() != (target / name).resolve():
                    shutil.copyfile(run / name, target / name)
    table = markdown(rows, keys)
    result = harness.stamp({"rows": rows})
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
