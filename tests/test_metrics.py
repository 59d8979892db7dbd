import math

import numpy as np
import pytest
import torch

from thinkrec.eval.metrics import metrics_from_ranks, per_sample, target_ranks


def test_target_ranks_are_pessimistic_on_ties() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 1.0, 0.0]])
    ranks = target_ranks(scores, torch.tensor([1, 0, 0]))
    assert ranks.tolist() == [1, 3, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_target_ranks_count_ties_and_masked_items_like_a_loop(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(-3, 4, size=(64, 40)).astype(np.float64) / 4  # many exact ties
    scores[rng.random(scores.shape) < 0.1] = -np.inf  # masked history items
    targets = rng.integers(0, 40, 64)
    scores[np.arange(64), targets] = rng.integers(-3, 4, 64) / 4  # targets themselves are not masked
    expected = [int(np.sum(row >= row[t])) - 1 for row, t in zip(scores, targets, strict=True)]
    got = target_ranks(torch.from_numpy(scores).to(dtype), torch.from_numpy(targets))
    assert got.tolist() == expected
    # a masked target ranks last among everything (every item scores >= -inf), and NaN does not spread
    scores[0, targets[0]] = -np.inf
    scores[1, 5] = np.nan
    got = target_ranks(torch.from_numpy(scores).to(dtype), torch.from_numpy(targets))
    assert got[0] == 39
    assert got[1] == int(np.sum(scores[1] >= scores[1, targets[1]])) - 1
    assert got[2:].tolist() == expected[2:]


def test_metrics_match_an_independent_topk_computation() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 57))
    targets = rng.integers(0, 57, 200)
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    got = metrics_from_ranks(ranks, [1, 5, 10, 20])
    for k in (1, 5, 10, 20):
        ndcg, hr, mrr = [], [], []
        for row, target in zip(scores, targets, strict=True):
            top = list(np.argsort(-row, kind="stable")[:k])
            if target in top:
                pos = top.index(target)
                ndcg.append(1 / math.log2(pos + 2))
                hr.append(1.0)
                mrr.append(1 / (pos + 1))
            else:
                ndcg.append(0.0)
                hr.append(0.0)
                mrr.append(0.0)
        assert got[f"NDCG@{k}"] == pytest.approx(np.mean(ndcg))
        assert got[f"HR@{k}"] == pytest.approx(np.mean(hr))
        assert got[f"MRR@{k}"] == pytest.approx(np.mean(mrr))


def test_hand_computed_values() -> None:
    m = metrics_from_ranks([0, 1, 9, 10], [10])
    assert m["HR@10"] == pytest.approx(0.75)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 0.5 + 0.1) / 4)
    assert per_sample([0, 3], "HR@3").tolist() == [1.0, 0.0]
