"""Cold-item analysis of a trained run: ranking quality on test targets that are rare in training.

``cold_item_report(run_dir)`` rebuilds the run's split, counts every item's interactions in the training
part, and reports the run's own protocol (full ranking, its history masking and inference mode) on (a) all
test samples and (b) the test samples whose target has at most ``max_train`` training interactions. It reads
the per-sample ranks training saved (``test_ranks.npz``, ``valid_ranks.npz``; so a record of
``rearec_repro.py``, which has no checkpoint, works too), or re-scores the best checkpoint for runs trained
before runs saved them. Text-based models (UniSRec, MoRec) are expected to lose less on
(b) than ID-based ones.

Usage: ``python benchmarks/cold_items.py RUN_OR_RECORD_DIR [...] [--max-train 5] [--split test] [--k 20]``;
prints one JSON object per run (redirect it to keep it; run directories and records are left unchanged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from thinkrec.allocator import tune_allocator
from thinkrec.config.schema import RunConfig
from thinkrec.data.split import Split
from thinkrec.eval.evaluator import EvalResult, evaluate
from thinkrec.eval.metrics import metrics_from_ranks
from thinkrec.runs import RANKS_FILES, load_data, load_run


def train_counts(split: Split) -> np.ndarray:
    """Interactions of every item id (index = item id, 0 = padding) in the training part of ``split``."""
    ds = split.dataset
    pos_in_user = np.arange(ds.n_interactions) - np.repeat(ds.offsets[:-1], ds.lengths)
    in_train = pos_in_user < np.repeat(split.train_lengths, ds.lengths)
    return np.bincount(ds.items[in_train], minlength=ds.n_items + 1)


def cold_item_report(
    run_dir: str | Path, max_train: int = 5, which: Literal["valid", "test"] = "test", k: int = 20
) -> dict[str, Any]:
    """NDCG@k / Recall@k on all ``which`` samples and on those whose target has <= ``max_train`` training
    interactions (the run's protocol otherwise)."""
    saved = Path(run_dir) / RANKS_FILES[which]
    if saved.exists():  # the ranks training saved: no checkpoint needed (records of rearec_repro have them)
        cfg = RunConfig.model_validate_json((Path(run_dir) / "config.json").read_text())
        model, ranks = None, EvalResult.load(saved).ranks
    else:
        cfg, model = load_run(run_dir)
    _, split = load_data(cfg)
    samples = split.samples(which)
    counts = train_counts(split)[samples.targets]
    cold = np.flatnonzero(counts <= max_train)
    ks = sorted({*cfg.eval.ks, k})
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": cfg.model.kind,
        "reasoning": cfg.reasoning.kind,
        "split": which,
        "cold_definition": f"target item has <= {max_train} interactions in the training part",
    }
    for name, index in (("all", np.arange(len(samples))), ("cold", cold)):
        if len(index) == 0:
            report[name] = {"n_samples": 0}
            continue
        if model is None:
            metrics = metrics_from_ranks(ranks[index], ks)
        else:
            metrics = evaluate(model, split, samples.subset(index), cfg.eval).metrics(ks)
        report[name] = {
            "n_samples": len(index),
            f"NDCG@{k}": metrics[f"NDCG@{k}"],
            f"HR@{k} (= Recall@{k})": metrics[f"HR@{k}"],
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories or rearec_repro records")
    parser.add_argument("--max-train", type=int, default=5, help="cold = at most this many training interactions")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    for run_dir in args.run_dirs:
        report = cold_item_report(run_dir, args.max_train, args.split, args.k)
        print(json.dumps(report))


if __name__ == "__main__":
    main()
