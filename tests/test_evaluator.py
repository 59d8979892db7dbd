from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.data.batches import eval_histories
from thinkrec.data.split import leave_one_out
from thinkrec.errors import ThinkrecError
from thinkrec.eval.evaluator import EvalResult, evaluate
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig

from helpers import random_dataset


def _model(n_items: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SASRecConfig(hidden=16, layers=1, heads=2, max_len=12), n_items)


def test_chunking_does_not_change_ranks_and_matches_a_direct_computation() -> None:
    ds = random_dataset(n_users=70, n_items=40, seed=7)
    split = leave_one_out(ds)
    model = _model(ds.n_items)
    whole = evaluate(model, split, split.test, EvalConfig(batch_size=10_000))
    tiny = evaluate(model, split, split.test, EvalConfig(batch_size=3))
    budget = evaluate(model, split, split.test, EvalConfig(memory_budget_mb=1, batch_size=10_000))
    passes = evaluate(model, split, split.test, EvalConfig(batch_size=10_000, encode_tokens=25))  # 2-3 rows
    assert np.array_equal(whole.ranks, tiny.ranks) and np.array_equal(whole.ranks, budget.ranks)
    assert np.array_equal(whole.ranks, passes.ranks)
    # independent: one sample at a time, untrimmed, argsort
    hist = eval_histories(split, split.test, 12)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(hist), 13):
            h = model.backbone(torch.from_numpy(hist[i : i + 1]), torch.arange(12)).hidden[0, -1]
            scores = (model.item_vectors() @ h).numpy()
            target = split.test.targets[i] - 1
            assert whole.ranks[i] == int((scores >= scores[target]).sum()) - 1


def test_history_masking_removes_history_items_from_the_ranking() -> None:
    ds = random_dataset(n_users=50, n_items=30, seed=8)
    split = leave_one_out(ds)
    model = _model(ds.n_items)
    plain = evaluate(model, split, split.test, EvalConfig())
    masked = evaluate(model, split, split.test, EvalConfig(mask_history=True))
    hist = eval_histories(split, split.test, 12)
    for i, target in enumerate(split.test.targets):
        if target in hist[i]:
            assert masked.ranks[i] == ds.n_items - 1 or masked.ranks[i] >= plain.ranks[i]
        else:
            assert masked.ranks[i] <= plain.ranks[i]
    assert (masked.ranks < plain.ranks).any()


def test_saved_ranks_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    result = EvalResult(
        ranks=rng.integers(0, 60_000, 50),
        step_ranks=rng.integers(0, 60_000, (3, 50)),
        mean_ranks=rng.integers(0, 60_000, 50),
        mode="mean",
    )
    result.save(tmp_path / "r.npz")
    back = EvalResult.load(tmp_path / "r.npz")
    assert back.mode == "mean"
    for name in ("ranks", "step_ranks", "mean_ranks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # no temporary file left
    # ranks past uint16 stay exact, and a model without reasoning has no mean-of-steps ranks
    EvalResult(np.array([0, 70_000]), np.array([[0, 70_000]]), None).save(tmp_path / "big.npz")
    big = EvalResult.load(tmp_path / "big.npz")
    np.testing.assert_array_equal(big.ranks, [0, 70_000])
    assert big.mean_ranks is None and big.mode == "last"
    (tmp_path / "bad.npz").write_text("not an archive")
    with pytest.raises(ThinkrecError, match=r"bad\.npz"):
        EvalResult.load(tmp_path / "bad.npz")
