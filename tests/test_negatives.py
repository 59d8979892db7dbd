"""Sampled softmax with uniform, popularity and in-batch negatives, with and without the log-Q correction:
each checked against numbers worked out by hand and against a plain transcription of the reference formula
(Bengio & Senécal 2008; Yi et al. 2019 eq. 3: logits ``s(x, y) - log Q(y)``, softmax over the target and
the negatives, accidental hits removed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from thinkrec.config.loader import load_config
from thinkrec.data.batches import TrainBatch
from thinkrec.data.split import leave_one_out
from thinkrec.errors import ConfigError
from thinkrec.models.base import Scorer
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives import ObjectiveContext, build_objective
from thinkrec.objectives.sampled import SampledSoftmax, corrected_sampled_loss
from thinkrec.reasoning.config import NoReasoningConfig

from helpers import random_dataset


class _Table:
    """What the loss reads from a model: item vectors (all, or some rows) and the scorer."""

    def __init__(self, items: torch.Tensor, temperature: float = 1.0) -> None:
        self.items = items
        self.scorer = Scorer("dot", temperature)

    def item_vectors(self) -> torch.Tensor:
        return self.items

    def item_rows(self, columns: torch.Tensor) -> torch.Tensor:
        return self.items[columns]


def _model(items: torch.Tensor, temperature: float = 1.0) -> SeqRecModel:
    return cast(SeqRecModel, _Table(items, temperature))


def reference(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: list[int],
    negatives: list[int],
    q: list[float] | None,
    temperature: float = 1.0,
) -> float:
    """The formula, row by row in plain Python: -log( e^{o_y} / (e^{o_y} + sum_{j != y} e^{o_j}) ) with
    o_i = u . e_i / temperature - log Q(i), averaged over the rows."""
    total = 0.0
    for row, y in enumerate(targets):

        def o(i: int, row: int = row) -> float:
            score = float(users[row] @ items[i]) / temperature
            return score - (math.log(q[i]) if q is not None else 0.0)

        denominator = math.exp(o(y)) + sum(math.exp(o(j)) for j in negatives if j != y)
        total += -(o(y) - math.log(denominator))
    return total / len(targets)


def test_against_a_hand_computed_value() -> None:
    # two items, unit vectors; one user (1, 0) whose target is item 0, one negative: item 1
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    users = torch.tensor([[1.0, 0.0]])
    model = _model(items)
    plain = corrected_sampled_loss(users, torch.tensor([0]), model, torch.tensor([1]))
    # logits (1, 0): -log(e / (e + 1)) = log(1 + e^-1)
    assert float(plain) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Q = (0.8, 0.2): logits (1 - log 0.8, 0 - log 0.2) = (1.2231, 1.6094): log(1 + e^(1.6094 - 1.2231))
    log_q = torch.log(torch.tensor([0.8, 0.2]))
    corrected = corrected_sampled_loss(users, torch.tensor([0]), model, torch.tensor([1]), log_q)
    assert float(corrected) == pytest.approx(math.log(1 + math.exp(math.log(0.8 / 0.2) - 1)), abs=1e-6)
    assert float(corrected) == pytest.approx(0.9048, abs=1e-4)  # log(1 + e^0.3863)
    # the negative is the target itself (an accidental hit): only the target is left, loss 0
    hit = corrected_sampled_loss(users, torch.tensor([0]), model, torch.tensor([0, 0]), log_q)
    assert float(hit) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("with_q", [False, True])
def test_against_the_reference_formula(temperature: float, with_q: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(12, 4, generator=gen)
    users = torch.randn(5, 4, generator=gen)
    targets = [3, 0, 7, 3, 11]
    negatives = [1, 3, 5, 5, 9, 11]  # repeats, and hits of rows 0, 3 and 4
    counts = torch.arange(1, 13, dtype=torch.float64)
    q = (counts / counts.sum()).tolist() if with_q else None
    log_q = torch.log(torch.tensor(q)) if q is not None else None
    got = corrected_sampled_loss(
        users, torch.tensor(targets), _model(items, temperature), torch.tensor(negatives), log_q
    )
    assert float(got) == pytest.approx(reference(users, items, targets, negatives, q, temperature), rel=1e-5)


def _objective(negatives: str, logq: bool, counts: np.ndarray, n_negatives: int = 4) -> SampledSoftmax:
    return SampledSoftmax(n_negatives, torch.Generator().manual_seed(3), negatives, logq, counts)  # type: ignore[arg-type]


def test_popularity_negatives_follow_the_training_counts() -> None:
    counts = np.array([0, 1, 2, 7])
    objective = _objective("popularity", True, counts, n_negatives=20000)
    drawn = objective.draw(torch.tensor([0]), 4)
    share = np.bincount(drawn.numpy(), minlength=4) / len(drawn)
    assert share[0] == 0 and share == pytest.approx(counts / counts.sum(), abs=0.01)
    log_q = objective.log_q(4, torch.device("cpu"))
    assert log_q is not None and torch.isfinite(log_q).all()
    assert log_q[1:].tolist() == pytest.approx(np.log(counts[1:] / counts.sum()).tolist(), rel=1e-6)
    assert _objective("uniform", True, counts).log_q(4, torch.device("cpu")) is None  # a constant shift


def test_in_batch_negatives_are_the_batch_targets() -> None:
    counts = np.array([5, 1, 1, 1, 2])
    targets = torch.tensor([4, 0, 0, 2])
    objective = _objective("in_batch", True, counts, n_negatives=8)
    assert objective.draw(targets, 5).tolist() == targets.tolist()
    capped = _objective("in_batch", False, counts, n_negatives=3).draw(targets, 5)
    assert len(capped) == 3 and set(capped.tolist()) <= set(targets.tolist())


def test_in_batch_with_log_q_is_yi_et_al() -> None:
    """Yi et al.: row i's candidates are the batch's items, o_ij = s_ij - log p_j, target on the diagonal
    (duplicates of row i's target, other than itself, removed as accidental hits)."""
    gen = torch.Generator().manual_seed(1)
    items = torch.randn(6, 3, generator=gen)
    users = torch.randn(4, 3, generator=gen)
    targets = torch.tensor([4, 0, 0, 2])
    counts = np.array([5, 1, 1, 1, 2, 0])
    p = counts / counts.sum()
    objective = _objective("in_batch", True, counts, n_negatives=8)
    log_q = objective.log_q(6, torch.device("cpu"))
    got = corrected_sampled_loss(users, targets, _model(items), objective.draw(targets, 6), log_q)
    expected = 0.0
    for i in range(4):
        logits = [float(users[i] @ items[j]) - math.log(p[j]) for j in targets.tolist()]
        keep = [k for k, j in enumerate(targets.tolist()) if k == i or j != int(targets[i])]
        expected += -(logits[i] - math.log(sum(math.exp(logits[k]) for k in keep)))
    assert float(got) == pytest.approx(expected / 4, rel=1e-5)


def test_the_objective_on_a_model_batch() -> None:
    """Through a real model: every mode gives a finite loss with a gradient, the uniform mode the old one."""
    from thinkrec.models.registry import build_model
    from thinkrec.models.sasrec import SASRecConfig

    ds = random_dataset(n_users=30, n_items=20, seed=2)
    split = leave_one_out(ds)
    counts = split.item_counts()
    assert counts.shape == (20,) and counts.sum() == split.n_train_interactions
    position = np.arange(len(ds.items)) - np.repeat(ds.offsets[:-1], ds.lengths)
    in_train = position < np.repeat(split.train_lengths, ds.lengths)
    assert counts.tolist() == np.bincount(ds.items[in_train] - 1, minlength=20).tolist()
    cfg = SASRecConfig(hidden=8, layers=1, heads=1, max_len=6)
    torch.manual_seed(0)
    model = build_model(cfg, ds.n_items)
    inputs = torch.tensor([[1, 2, 3], [0, 4, 5]])
    batch = TrainBatch(inputs, torch.arange(3, 6), torch.tensor([[2, 3, 4], [-100, 5, 6]]), "all")
    for mode in ("uniform", "popularity", "in_batch"):
        for logq in (False, True):
            ctx = ObjectiveContext(
                cfg, NoReasoningConfig(), 7, 5, {"negatives": mode, "logq": logq, "item_counts": counts}
            )
            out = build_objective("sampled", ctx)(model, batch)
            assert torch.isfinite(out.total)
            model.zero_grad()
            out.total.backward()
            assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_config_keys_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.loss=sampled", "train.negatives=in_batch", "train.logq=true"])
    assert cfg.train.negatives == "in_batch" and cfg.train.logq
    with pytest.raises(ConfigError, match="negatives"):
        load_config(None, ["train.negatives=popularity"])  # the loss is ce
    with pytest.raises(ConfigError):
        load_config(None, ["train.loss=sampled", "train.negatives=zipf"])


def test_popularity_needs_counts() -> None:
    with pytest.raises(ConfigError, match="counts"):
        SampledSoftmax(4, None, "popularity", False, None)
    kwargs: dict[str, Any] = {"negatives": "popularity", "logq": True}
    ctx = ObjectiveContext(None, NoReasoningConfig(), 1, 4, kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_objective("sampled", ctx)


@pytest.mark.parametrize("with_q", [False, True])
def test_per_target_negatives_against_the_reference_formula_row_by_row(with_q: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    items = torch.randn(9, 3, generator=gen)
    users = torch.randn(3, 3, generator=gen)
    targets = [2, 5, 2]
    per_row = [[0, 2, 7], [5, 5, 1], [3, 4, 8]]  # row 0 and row 1 hit their own target
    counts = torch.arange(1, 10, dtype=torch.float64)
    q = (counts / counts.sum()).tolist() if with_q else None
    log_q = torch.log(torch.tensor(q)) if q is not None else None
    got = corrected_sampled_loss(users, torch.tensor(targets), _model(items, 0.5), torch.tensor(per_row), log_q)
    expected = (
        sum(reference(users[i : i + 1], items, [targets[i]], per_row[i], q, temperature=0.5) for i in range(3)) / 3
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # one shared set is the special case of identical rows
    shared = corrected_sampled_loss(users, torch.tensor(targets), _model(items, 0.5), torch.tensor(per_row[2]), log_q)
    same_rows = torch.tensor([per_row[2]] * 3)
    assert float(shared) == pytest.approx(
        float(corrected_sampled_loss(users, torch.tensor(targets), _model(items, 0.5), same_rows, log_q)), rel=1e-6
    )


def test_per_target_draws_one_set_per_target_and_is_checked_when_the_config_loads() -> None:
    counts = np.array([0, 1, 2, 7])
    targets = torch.tensor([1, 3, 3, 2, 0])
    for mode in ("uniform", "popularity"):
        objective = SampledSoftmax(6, torch.Generator().manual_seed(3), mode, False, counts, per="target")  # type: ignore[arg-type]
        drawn = objective.draw(targets, 4)
        assert drawn.shape == (5, 6) and not all(torch.equal(drawn[0], row) for row in drawn[1:])
    big = SampledSoftmax(4000, torch.Generator().manual_seed(3), "popularity", False, counts, per="target")
    share = np.bincount(big.draw(targets, 4).flatten().numpy(), minlength=4) / (5 * 4000)
    assert share == pytest.approx(counts / counts.sum(), abs=0.01)
    with pytest.raises(ConfigError, match="in-batch"):
        SampledSoftmax(4, None, "in_batch", False, counts, per="target")
    with pytest.raises(ConfigError, match="negatives_per"):
        load_config(None, ["train.loss=sampled", "train.negatives=in_batch", "train.negatives_per=target"])
    with pytest.raises(ConfigError, match="negatives_per"):
        load_config(None, ["train.negatives_per=target"])  # the loss is ce
    cfg = load_config("s3rec-beauty-sasrec-ss", [])
    assert (cfg.train.loss, cfg.train.negatives, cfg.train.negatives_per) == ("sampled", "uniform", "target")
