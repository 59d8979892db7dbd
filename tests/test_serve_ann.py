"""Approximate top-K through FAISS: recall against exact scoring, exclusions, and use by the Recommender."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_serve_common import make_run, reasoning_recommender
from thinkrec.serve.recommender import Recommender

pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")

from thinkrec.serve.ann import AnnIndex, recall_at_k


def test_hnsw_recall_against_exact_inner_product() -> None:
    g = torch.Generator().manual_seed(0)
    items = torch.randn(3000, 16, generator=g)
    users = torch.randn(64, 16, generator=g)
    index = AnnIndex(items, temperature=0.5)
    ids, scores = index.search(users, 10)
    exact = torch.topk(users @ items.T, 10, dim=1)
    assert recall_at_k(ids, exact.indices + 1) > 0.95
    hit = ids == exact.indices[:, :1] + 1  # the best item is found, with the exact score / temperature
    assert hit.any(dim=1).float().mean() > 0.95
    torch.testing.assert_close(scores[:, 0], exact.values[:, 0] / 0.5, rtol=1e-4, atol=1e-4)


def test_excluded_items_are_never_returned() -> None:
    g = torch.Generator().manual_seed(1)
    items = torch.randn(500, 8, generator=g)
    users = torch.randn(5, 8, generator=g)
    exact = torch.topk(users @ items.T, 5, dim=1).indices + 1
    exclude = [row.tolist() for row in exact]
    ids, _ = AnnIndex(items).search(users, 5, exclude)
    for row, banned in zip(ids, exclude, strict=True):
        assert not set(row.tolist()) & set(banned)
        assert (row > 0).all()


def test_recall_at_k_by_hand() -> None:
    assert recall_at_k(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[3, 2, 9], [7, 8, 9]])) == pytest.approx(
        (2 / 3 + 0) / 2
    )


def test_recommender_with_an_index_agrees_with_exact_scoring(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    exact = Recommender.from_run(run)
    approx = Recommender.from_run(run, ann=True)
    histories = [[1, 2, 3], [5], [7, 8, 9, 10]]
    a = approx.recommend(histories, k=5, exclude_seen=True)
    e = exact.recommend(histories, k=5, exclude_seen=True)
    assert recall_at_k(a.ids, e.ids) > 0.9
    assert approx.describe()["top_k"].startswith("approximate")


def test_reasoning_recommender_per_step_lists_with_an_index() -> None:
    rec = reasoning_recommender("prl")
    rec.ann = AnnIndex.for_model(rec.model)
    top = rec.recommend([[1, 2, 3]], k=4)
    assert top.step_ids is not None and top.step_ids.shape == (1, rec.reasoning_steps + 1, 4)
