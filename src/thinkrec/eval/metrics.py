"""Ranking metrics from the 0-based rank of the single target item.

With one target per sample: ``HR@K = Recall@K = [rank < K]``, ``NDCG@K = [rank < K] / log2(rank + 2)``,
``MRR@K = [rank < K] / (rank + 1)``. Ranks are *pessimistic*: items scoring exactly as high as the target
are counted as ranked before it, so a model that scores everything equal earns nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

METRICS = ("NDCG", "HR", "MRR")


EXACT_FLOAT_COUNT = 2**24  # float32 represents every integer count up to here exactly


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """0-based pessimistic rank of column ``targets[i]`` in row ``scores[i]`` (``[B, N]``, ``[B]``): the
    number of other items scoring at least as high as the target. With ``overwrite`` the count is made in
    ``scores`` itself (the caller's scratch block), saving one pass over it.

    Counted in the scores' float type, not by reducing a boolean matrix (which torch widens to int64
    element by element, 2.5x slower on the CPU): an in-place ``s >= t`` on a float tensor writes 1.0 or 0.0,
    a sum of ones that is exact below 2**24 items. NaN and -inf (masked) scores are not at least as high as a
    finite target, as in the boolean count. Rows whose target scores -inf (a masked target) or is not
    finite, larger catalogues and other dtypes (a bf16 sum is not exact) are counted on the boolean matrix.
    """
    target_scores = scores.gather(1, targets[:, None])
    if (
        scores.dtype in (torch.float32, torch.float64)
        and scores.shape[1] < EXACT_FLOAT_COUNT
        and bool(torch.isfinite(target_scores).all())
    ):
        at_least = scores if overwrite else scores.clone()
        return at_least.ge_(target_scores).sum(dim=1).long() - 1
    return torch.count_nonzero(scores >= target_scores, dim=1) - 1


def metrics_from_ranks(ranks: npt.ArrayLike, ks: tuple[int, ...] | list[int]) -> dict[str, float]:
    """Mean NDCG/HR/MRR at every K, keyed like ``"NDCG@10"``."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"NDCG@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0))) if len(r) else 0.0
        out[f"HR@{k}"] = float(np.mean(hit)) if len(r) else 0.0
        out[f"MRR@{k}"] = float(np.mean(np.where(hit, 1.0 / (r + 1.0), 0.0))) if len(r) else 0.0
    return out


def per_sample(ranks: npt.ArrayLike, metric: str) -> npt.NDArray[np.float64]:
    """Per-sample values of one metric such as ``"NDCG@10"`` (for paired significance tests)."""
    name, k_text = metric.split("@")
    k = int(k_text)
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < k
    if name == "NDCG":
        return np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)
    if name in ("HR", "Recall"):
        return hit.astype(np.float64)
    if name == "MRR":
        return np.where(hit, 1.0 / (r + 1.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS} with @K")
