"""Test metrics of reasoning runs stopped before early stopping, against a finished base record.

``rearec_repro.py`` reports finished runs only. When a session ends before a long run has stopped (patience
not reached, epoch cap not hit), this scores the run's best checkpoint so far (selected on the run's
validation metric, NDCG@20 in the presets) on the test split and compares it with the base run's committed
record, sample by sample (paired t-test on NDCG@20)::

    python benchmarks/rearec_partial.py benchmarks/results/rearec/records/game-time/sasrec-s1 \\
        benchmarks/results/rearec/runs/game-time/sasrec-erl-s1 benchmarks/results/rearec/runs/game-time/sasrec-prl-s1 \\
        --out /tmp/rearec-game-time-partial.json

Prints one JSON line per run (metrics, per-step NDCG@20, oracle, epochs trained, best epoch, relative change
and p-value vs the base) and writes them together to ``--out``. These are partial results: a run with more
epochs may select another checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from thinkrec.allocator import tune_allocator
from thinkrec.data.split import Split
from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import per_sample
from thinkrec.eval.significance import paired_t_test
from thinkrec.runs import evaluation_report, load_data, load_run, set_threads
from thinkrec.storage import atomic_write_text
from thinkrec.train.checkpoint import checkpoint_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "base_record", type=Path, help="a record folder of rearec_repro.py (test_ranks.npz, results.json)"
    )
    parser.add_argument("runs", type=Path, nargs="+", help="run directories of the unfinished reasoning runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tune_allocator()
    set_threads(args.threads)
    base = EvalResult.load(args.base_record / "test_ranks.npz")
    base_ndcg = per_sample(base.ranks, "NDCG@20")
    base_metrics = json.loads((args.base_record / "results.json").read_text())["test"]["metrics"]
    rows: list[dict[str, Any]] = [{"run": str(args.base_record), "metrics": base_metrics}]
    splits: dict[str, Split] = {}
    for run in args.runs:
        cfg, model = load_run(run, "best")
        key = cfg.data.model_dump_json()  # the runs usually share one dataset: prepare/split it once
        if key not in splits:
            splits[key] = load_data(cfg)[1]
        split = splits[key]
        report, result = evaluation_report(model, split, cfg, "test", cfg.eval)
        if len(result.ranks) != len(base.ranks):
            raise SystemExit(f"{run}: {len(result.ranks)} test samples, the base has {len(base.ranks)}")
        # the scored checkpoint's own record (selected on cfg.train's metric), not a re-selection from the log
        best = checkpoint_info(run / "checkpoints", "best")
        trained = checkpoint_info(run / "checkpoints", "last")["trainer_state"]["epoch"]
        test = paired_t_test(base_ndcg, per_sample(result.ranks, "NDCG@20"))  # variant - base
        row = {
            "run": str(run),
            "partial": f"stopped before early stopping; best checkpoint so far (validation {cfg.train.valid_metric})",
            "epochs_trained": trained,
            "best_epoch": best["epoch"],
            "best_valid_ndcg20": best["valid"]["NDCG@20"],
            "metrics": report["metrics"],
            "reasoning": report.get("reasoning"),
            "rel_ndcg20_vs_base": report["metrics"]["NDCG@20"] / base_metrics["NDCG@20"] - 1.0,
            "p_ndcg20_paired_t": test.p_value,
            "protocol": report["protocol"],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "protocol"}), flush=True)
    atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
