"""Approximate top-K over the item table with a FAISS HNSW index (optional extra: ``thinkrec[ann]``).

For catalogues too large to score exactly per request. The index holds the items' *scoring* vectors (for a
cosine scorer the normalised ones), searched by inner product, so the approximate ranking approximates the
exact one; scores are divided by the scorer's temperature to match :meth:`SeqRecModel.score`. Quality is
measured as recall@K against exact scoring (:func:`recall_at_k`, ``python -m benchmarks.speed.ann_recall``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from thinkrec.errors import ThinkrecError
from thinkrec.models.model import SeqRecModel


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ThinkrecError("approximate top-K needs FAISS: pip install 'thinkrec[ann]'") from None
    return faiss


class AnnIndex:
    """HNSW (inner product) over ``item_vectors [N, d]``; ids returned are internal item ids ``1..N``."""

    def __init__(
        self,
        item_vectors: torch.Tensor,
        temperature: float = 1.0,
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> None:
        faiss = _faiss()
        vectors = np.ascontiguousarray(item_vectors.detach().float().cpu().numpy())
        self.dim = vectors.shape[1]
        self.n_items = vectors.shape[0]
        self.temperature = temperature
        self.index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(vectors)
        self.index.hnsw.efSearch = ef_search

    @classmethod
    def for_model(cls, model: SeqRecModel, ef_search: int = 128) -> AnnIndex:
        """An index over the model's scoring item vectors."""
        with torch.no_grad():
            _, items = model.scorer.prepare(model.item_vectors()[:1], model.item_vectors())
        return cls(items, model.scorer.temperature, ef_search=ef_search)

    def search(
        self, users: torch.Tensor, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-``k`` ``(ids [B, k], scores [B, k])`` for scoring vectors ``users [B, d]``.

        ``exclude``: per row, internal ids never to return (e.g. the history); the search fetches enough
        extra candidates to fill ``k`` after removing them. Rows with too few results are padded with id 0
        and score -inf.
        """
        queries = np.ascontiguousarray(users.detach().float().cpu().numpy())
        extra = max((len(set(e)) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(self.n_items, k + extra)
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, fetch)
        scores, index = self.index.search(queries, fetch)
        ids = index.astype(np.int64) + 1  # FAISS returns -1 (-> 0) for missing results
        out_ids = np.zeros((len(queries), k), dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row in range(len(queries)):
            keep = ids[row] > 0
            if exclude is not None:
                keep &= ~np.isin(ids[row], np.asarray(list(exclude[row]), dtype=np.int64))
            chosen = np.flatnonzero(keep)[:k]
            out_ids[row, : len(chosen)] = ids[row, chosen]
            out_scores[row, : len(chosen)] = scores[row, chosen] / self.temperature
        return torch.from_numpy(out_ids), torch.from_numpy(out_scores)


def recall_at_k(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each row's exact top-K ids that the approximate top-K contains."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) if hits else 0.0
