"""Ranking metrics from the 0-based rank of the single target item, kept in one registry.

With one target per sample: ``HR@K = Recall@K = [rank < K]``, ``NDCG@K = [rank < K] / log2(rank + 2)``,
``MRR@K = [rank < K] / (rank + 1)``. Ranks are *pessimistic*: items scoring exactly as high as the target
are counted as ranked before it, so a model that scores everything equal earns nothing.

A metric is a function from ranks and K to per-sample values; :func:`register_metric` adds one, and the
evaluator's results, per-sample values for significance tests, ``train.valid_metric`` and the printed
tables all read the registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

Values = npt.NDArray[np.float64]
MetricFn = Callable[[Values, int], Values]  # (0-based ranks as float64, K) -> per-sample values


def ndcg(ranks: Values, k: int) -> Values:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def hit_rate(ranks: Values, k: int) -> Values:
    return (ranks < k).astype(np.float64)


def mrr(ranks: Values, k: int) -> Values:
    return np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)


_BUILTIN: dict[str, MetricFn] = {"NDCG": ndcg, "HR": hit_rate, "MRR": mrr}
_registry: dict[str, MetricFn] = dict(_BUILTIN)
ALIASES = {"Recall": "HR"}  # one target per sample: Recall@K = HR@K


def register_metric(name: str, fn: MetricFn, *, replace: bool = False) -> None:
    """Add a metric ``name`` (computed as ``name@K`` for every K of ``eval.ks``)."""
    if "@" in name or not name:
        raise ValueError(f"metric name {name!r}: a plain name such as 'NDCG' (the K is added as @K)")
    if (name in _registry or name in ALIASES) and not replace:
        raise ValueError(f"a metric named {name!r} is registered already (pass replace=True to replace it)")
    _registry[name] = fn


def unregister_metric(name: str) -> None:
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in metric")
    _registry.pop(name, None)


def metric_names() -> list[str]:
    """The registered metrics, built-in ones first."""
    return list(_registry)


def parse_metric(text: str) -> tuple[str, int]:
    """``"NDCG@10"`` -> ``("NDCG", 10)``; a ValueError that names the valid metrics otherwise."""
    name, at, k_text = text.partition("@")
    name = ALIASES.get(name, name)
    if name not in _registry:
        close = difflib.get_close_matches(name, metric_names(), n=1)
        hint = f"; did you mean {close[0]}@{k_text or 10}?" if close else ""
        raise ValueError(f"unknown metric {text!r}{hint} (metrics: {', '.join(metric_names())}, written NAME@K)")
    if not at or not k_text.isdigit() or int(k_text) < 1:
        raise ValueError(f"metric {text!r}: expected NAME@K with a cut-off K >= 1, e.g. {name}@10")
    return name, int(k_text)


EXACT_FLOAT_COUNT = 2**24  # float32 represents every integer count up to here exactly


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """0-based pessimistic rank of column ``targets[i]`` in row ``scores[i]`` (``[B, N]``, ``[B]``): the
    number of other items scoring at least as high as the target. With ``overwrite`` the count is made in
    ``scores`` itself (the caller's scratch block), saving one pass over it.

    Counted in the scores' float type, not by reducing a boolean matrix (which torch widens to int64
    element by element, several times slower on the CPU): an in-place ``s >= t`` on a float tensor writes 1.0 or 0.0,
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
    """Mean of every registered metric at every K, keyed like ``"NDCG@10"``."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        for name, fn in _registry.items():
            out[f"{name}@{k}"] = float(np.mean(fn(r, k))) if len(r) else 0.0
    return out


def per_sample(ranks: npt.ArrayLike, metric: str) -> Values:
    """Per-sample values of one metric such as ``"NDCG@10"`` (for paired significance tests)."""
    name, k = parse_metric(metric)
    return _registry[name](np.asarray(ranks, dtype=np.float64), k)
