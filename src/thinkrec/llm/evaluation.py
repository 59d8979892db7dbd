"""Honest comparisons for the LLM recommender: a most-popular row on the same samples, and paired tests
between two runs' per-sample results.

- :func:`popularity_ranks` ranks the full catalogue by *training* interaction counts (the split's training
  prefixes only, nothing from validation or test), with the same candidates and history masking as the
  model's evaluation, so the two rows differ only in the scorer.
- :func:`compare_reports` pairs two evaluation reports sample by sample (they must hold the same samples,
  checked by their ``(user, position)`` list) and tests NDCG@K with a paired bootstrap and HR@K with
  McNemar's test (:mod:`thinkrec.eval.significance`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from thinkrec.data.split import Split
from thinkrec.eval.metrics import metrics_from_ranks, per_sample, target_ranks
from thinkrec.eval.significance import mcnemar, paired_bootstrap
from thinkrec.llm.data import Example
from thinkrec.llm.recpo import history_mask, mask_scores


def training_counts(split: Split) -> np.ndarray:
    """Interactions per item id in the split's training prefixes (``[n_items + 1]``, index 0 = pad = 0)."""
    return np.concatenate([[0], split.item_counts()]).astype(np.float64)


def popularity_ranks(counts: np.ndarray, examples: list[Example], mask_history: bool) -> np.ndarray:
    """0-based pessimistic ranks of each example's target when the catalogue is sorted by ``counts``
    (pad item and, with ``mask_history``, the user's whole history removed -- as the model's evaluation)."""
    if not examples:
        return np.zeros(0, dtype=np.int64)
    scores = torch.as_tensor(counts, dtype=torch.float64).expand(len(examples), -1)
    seen = [ex.seen if mask_history else [] for ex in examples]
    scores = mask_scores(scores, history_mask(seen, len(counts)))
    return target_ranks(scores, torch.as_tensor([ex.target for ex in examples])).numpy()


def popularity_report(split: Split, examples: list[Example], ks: list[int], mask_history: bool) -> dict[str, Any]:
    """The most-popular row for ``examples``: metrics and per-sample ranks."""
    ranks = popularity_ranks(training_counts(split), examples, mask_history)
    metrics = {k: v for k, v in metrics_from_ranks(ranks, ks).items() if "MRR" not in k}
    return {"metrics": metrics, "ranks": ranks.tolist(), "scorer": "training interaction counts"}


def compare_reports(
    a: dict[str, Any], b: dict[str, Any], k: int = 20, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Paired tests of report ``b`` against report ``a`` (``b - a``): bootstrap on NDCG@k, McNemar on HR@k.

    Each report needs ``ranks``; when both carry ``samples`` (their ``(user, position)`` lists) they must be
    the same samples in the same order, else a ``ValueError`` -- unpaired results cannot be tested this way.
    """
    ra, rb = np.asarray(a["ranks"]), np.asarray(b["ranks"])
    if len(ra) != len(rb):
        raise ValueError(f"the reports hold {len(ra)} and {len(rb)} samples: not paired")
    if "samples" in a and "samples" in b and [list(s) for s in a["samples"]] != [list(s) for s in b["samples"]]:
        raise ValueError("the reports hold different samples (user, position): not paired")
    ndcg_a, ndcg_b = per_sample(ra, f"NDCG@{k}"), per_sample(rb, f"NDCG@{k}")
    hit_a, hit_b = per_sample(ra, f"HR@{k}"), per_sample(rb, f"HR@{k}")
    boot = paired_bootstrap(ndcg_a, ndcg_b, resamples=resamples, seed=seed)
    mc = mcnemar(hit_a, hit_b)
    return {
        "n": len(ra),
        f"NDCG@{k}": {"a": float(ndcg_a.mean()), "b": float(ndcg_b.mean()), "test": "paired bootstrap", **vars(boot)},
        f"HR@{k}": {"a": float(hit_a.mean()), "b": float(hit_b.mean()), "test": "McNemar", **vars(mc)},
    }
