"""Cold-item analysis of a trained run: ranking quality on test targets that are rare in training.

``cold_item_report(run_dir)`` rebuilds the run's split, counts every item's interactions in the training
part, and reports the run's own protocol (full ranking, its history masking and inference mode) on (a) all
test samples, (b) the test samples whose target has 1..``max_train`` training interactions, (c) the test
window's samples whose target never occurs in training (time splits: the headline metrics drop them, as an
ID embedding cannot rank such an item) and (d) (b) and (c) together. It reads the per-sample ranks training
saved (``test_ranks.npz``, ``test_unseen_ranks.npz``; so a record of ``rearec_repro``, which has no
checkpoint, works too), or scores the best checkpoint for runs trained before runs saved them.

Usage: ``python -m benchmarks.quality.cold_items RUN_OR_RECORD_DIR [...] [--max-train 5] [--split test]
[--k 20] [--table FILE.md]``; writes one record per run (stdout and ``benchmarks/out/quality/``; run
directories and records are left unchanged).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.config.schema import RunConfig
from thinkrec.data.split import Split, Window
from thinkrec.eval.metrics import metrics_from_ranks
from thinkrec.models.text_items import UniSRecConfig
from thinkrec.runs import load_data, saved_config, saved_ranks
from thinkrec.storage import atomic_write_text


def train_counts(split: Split) -> np.ndarray:
    """Interactions of every item id (index = item id, 0 = padding) in the training part of ``split``."""
    ds = split.dataset
    pos_in_user = np.arange(ds.n_interactions) - np.repeat(ds.offsets[:-1], ds.lengths)
    in_train = pos_in_user < np.repeat(split.train_lengths, ds.lengths)
    return np.bincount(ds.items[in_train], minlength=ds.n_items + 1)


def model_label(cfg: RunConfig) -> str:
    """The model kind and what its item vectors are made of (runs of one label are pooled in the table)."""
    kind = cfg.model.kind
    model = cfg.model
    if isinstance(model, UniSRecConfig):
        if not model.id_embedding:
            return "unisrec (text only)"
        unseen = ", unseen items text only" if model.unseen_items == "text_only" else ""
        dropout = f", ID dropout {model.id_dropout:g}" if model.id_dropout > 0 else ""
        return f"unisrec (text + ID{unseen}{dropout})"
    return f"{kind} (text only)" if kind == "morec" else f"{kind} (IDs)"


def cold_item_report(run_dir: str | Path, max_train: int = 5, which: Window = "test", k: int = 20) -> dict[str, Any]:
    """NDCG@k / Recall@k on the run's ``which`` samples, on those whose target has 1..``max_train`` training
    interactions, on the window's targets never seen in training (time splits; kept out of the headline
    metrics), and on both cold groups together (<= ``max_train``, 0 included)."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    _, split = load_data(cfg)
    samples = split.samples(which)
    ranks = saved_ranks(run_dir, which, samples, cfg, split).ranks
    unseen = split.unseen_targets.get(which)
    unseen_ranks = (
        saved_ranks(run_dir, f"{which}_unseen", unseen, cfg, split).ranks
        if unseen is not None and len(unseen)
        else np.zeros(0, dtype=np.int64)
    )
    cold = ranks[train_counts(split)[samples.targets] <= max_train]
    ks = sorted({*cfg.eval.ks, k})
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": model_label(cfg),
        "reasoning": cfg.reasoning.kind,
        "split": which,
        "cold_definition": f"target item has 1..{max_train} interactions in the training part",
        "unseen_definition": "target item never occurs in the training part (not in the headline metrics)",
    }
    groups = {
        "all": ranks,
        "cold": cold,
        "unseen": unseen_ranks,
        f"cold_and_unseen (<= {max_train}, 0 included)": np.concatenate([cold, unseen_ranks]),
    }
    for name, group in groups.items():
        if len(group) == 0:
            report[name] = {"n_samples": 0}
            continue
        metrics = metrics_from_ranks(group, ks)
        report[name] = {
            "n_samples": len(group),
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
    parser.add_argument(
        "--table", type=Path, help="also write a Markdown table (mean +- std over the runs of each model) here"
    )
    harness.add_records_argument(parser)
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    records = harness.Records("quality", f"cold_items_{args.split}", args.records)
    reports = []
    for run_dir in args.run_dirs:
        reports.append(cold_item_report(run_dir, args.max_train, args.split, args.k))
        records.write(reports[-1])
    if args.table:
        atomic_write_text(args.table, summary_table(reports, args.k) + "\n")


def summary_table(reports: list[dict[str, Any]], k: int) -> str:
    """NDCG@k and HR@k of every sample group, mean +- std over the runs of each model (:func:`model_label`),
    in the order the models first appear."""
    groups = [name for name, value in reports[0].items() if isinstance(value, dict)]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        by_model.setdefault(report["model"], []).append(report)
    header = "| model (runs) | " + " | ".join(f"{g} ({reports[0][g]['n_samples']:,})" for g in groups) + " |"
    lines = [header, "|---" * (len(groups) + 1) + "|"]
    for model, runs in by_model.items():
        cells = []
        for g in groups:
            ndcg = [r[g].get(f"NDCG@{k}", float("nan")) for r in runs]
            hr = [r[g].get(f"HR@{k} (= Recall@{k})", float("nan")) for r in runs]
            std = float(np.std(ndcg, ddof=1)) if len(ndcg) > 1 else 0.0
            cells.append(f"{np.mean(ndcg):.4f} ± {std:.4f} (HR {np.mean(hr):.4f})")
        lines.append(f"| {model} ({len(runs)}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"NDCG@{k} mean ± sample std over runs, HR@{k} mean in brackets; {reports[0]['split']} split.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
