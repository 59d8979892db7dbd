"""Adam that updates only the item-table rows a step touched (``train.item_updates = "touched"``): against
torch's Adam/AdamW where every row is touched, against the lazy-Adam formula worked by hand where some are
not, sparse and dense gradients alike; the model's sparse lookups against its dense ones; and a training
run with it that resumes exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from thinkrec.config.loader import load_config
from thinkrec.data.batches import TrainSampler
from thinkrec.data.split import leave_one_out
from thinkrec.errors import ConfigError
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives.sampled import SampledSoftmax
from thinkrec.seed import Seeds
from thinkrec.train.optim import RowSparseAdam, build_optimizer, clip_gradients
from thinkrec.train.trainer import TrainConfig, Trainer

from helpers import random_dataset

MODEL = SASRecConfig(hidden=8, layers=1, heads=2, max_len=6, dropout=0.0, attn_dropout=0.0)


@pytest.mark.parametrize(("decoupled", "weight_decay"), [(False, 0.0), (False, 0.1), (True, 0.1)])
def test_every_row_touched_equals_torch_adam(decoupled: bool, weight_decay: float) -> None:
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    bias_ours, bias_theirs = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = RowSparseAdam(
        [{"params": [bias_ours]}, {"params": [ours], "rows": True}],
        lr=0.01,
        betas=(0.8, 0.95),
        weight_decay=weight_decay,
        decoupled=decoupled,
    )
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = cls([bias_theirs, theirs], lr=0.01, betas=(0.8, 0.95), weight_decay=weight_decay)
    for step in range(4):
        grad = torch.randn(5, 3) + 0.1  # no zero row
        for p, b, o in ((ours, bias_ours, opt), (theirs, bias_theirs, ref)):
            p.grad, b.grad = grad.clone(), torch.full((3,), 0.5 * step)
            o.step()
        assert torch.allclose(ours, theirs, atol=1e-6)
        assert torch.allclose(bias_ours, bias_theirs, atol=1e-6)
    state, ref_state = opt.state[ours], ref.state[theirs]
    assert torch.allclose(state["exp_avg_sq"], ref_state["exp_avg_sq"], atol=1e-7)


def _lazy_by_hand(value: float, grads: list[float | None], lr: float, b1: float, b2: float, eps: float) -> float:
    """One scalar of a row under lazy Adam: moments and value move only on steps with a gradient; the bias
    correction counts every step of the optimiser."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if g is None:
            continue
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        value -= lr / (1 - b1**t) * m / (math.sqrt(v) / math.sqrt(1 - b2**t) + eps)
    return value


@pytest.mark.parametrize("sparse", [False, True])
def test_untouched_rows_keep_value_and_moments(sparse: bool) -> None:
    table = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    opt = RowSparseAdam([{"params": [table], "rows": True}], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    # step 1 touches rows 0 and 2 (row 2 twice: its gradients add up); step 2 reads rows 0 and 2, but row 2's
    # gradient is zero (as a masked negative's): it is left alone like an unread row
    steps = [([0, 2, 2], [[0.5, -1.0], [1.0, 1.0], [2.0, -3.0]]), ([0, 2], [[-0.25, 0.5], [0.0, 0.0]])]
    for rows, values in steps:
        idx, val = torch.tensor(rows), torch.tensor(values)
        if sparse:
            out = F.embedding(idx, table, sparse=True)
            (out * val).sum().backward()
            assert table.grad is not None and table.grad.is_sparse
        else:
            table.grad = torch.zeros(3, 2).index_add_(0, idx, val)
        opt.step()
        table.grad = None
    expected = [
        [
            _lazy_by_hand(1.0, [0.5, -0.25], 0.1, 0.9, 0.999, 1e-8),
            _lazy_by_hand(2.0, [-1.0, 0.5], 0.1, 0.9, 0.999, 1e-8),
        ],
        [3.0, 4.0],
        [
            _lazy_by_hand(5.0, [3.0, None], 0.1, 0.9, 0.999, 1e-8),
            _lazy_by_hand(6.0, [-2.0, None], 0.1, 0.9, 0.999, 1e-8),
        ],
    ]
    assert torch.allclose(table.detach(), torch.tensor(expected), atol=1e-6)
    state = opt.state[table]
    assert state["exp_avg"][1].abs().sum() == 0 and state["exp_avg_sq"][1].abs().sum() == 0
    assert float(state["exp_avg"][2, 0]) == pytest.approx(0.1 * 3.0)  # set at step 1, not decayed at step 2
    assert float(state["step"]) == 2


def test_sparse_clipping_equals_torch_on_the_dense_gradient() -> None:
    torch.manual_seed(1)
    table, bias = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))
    idx = torch.tensor([1, 4, 4])
    (F.embedding(idx, table, sparse=True).sum(0) * bias).sum().backward()
    assert table.grad is not None and bias.grad is not None
    dense = [table.grad.to_dense().clone(), bias.grad.clone()]
    clip_gradients([table, bias], 0.5)
    copies = [torch.nn.Parameter(torch.zeros(6, 4)), torch.nn.Parameter(torch.zeros(4))]
    for copy, grad in zip(copies, dense, strict=True):
        copy.grad = grad
    torch.nn.utils.clip_grad_norm_(copies, 0.5)
    assert torch.allclose(table.grad.to_dense(), copies[0].grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(bias.grad, copies[1].grad, atol=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize(("tie", "n_items"), [(True, 300), (False, 300), (True, 40)])
def test_sparse_lookups_give_the_same_loss_and_gradient(tie: bool, n_items: int) -> None:
    """300 items: the negatives' lookup is sparse; 40: it reads more rows than the table holds and is
    dense (the inputs' stays sparse); either way the loss and gradient are the dense ones."""
    ds = random_dataset(n_users=30, n_items=n_items, seed=3)
    split = leave_one_out(ds)
    batch = next(TrainSampler(split, MODEL.max_len, "all").batches(4, np.random.default_rng(0)))
    config = MODEL.model_copy(update={"tie_embeddings": tie})
    grads = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        model = build_model(config, ds.n_items)
        tables = model.sparse_item_gradients(sparse)
        assert len(tables) == (1 if tie else 2) or not sparse
        objective = SampledSoftmax(7, torch.Generator().manual_seed(5), per="target")
        out = objective(model, batch)
        out.total.backward()
        weight = model.backbone.item_embedding.weight
        assert weight.grad is not None and weight.grad.is_sparse == (sparse and n_items == 300)
        grads[sparse] = (float(out.total.detach()), weight.grad.to_dense())
        if sparse:  # one step moves exactly the rows with a gradient
            before = weight.detach().clone()
            build_optimizer(model, "adam", 1e-2, 0.0, (0.9, 0.999), "touched").step()
            moved = (weight.detach() != before).any(dim=1)
            assert torch.equal(moved, grads[True][1].ne(0).any(dim=1))
            assert 0 < int(moved.sum()) < ds.n_items or n_items == 40
    assert grads[True][0] == pytest.approx(grads[False][0], abs=1e-6)
    assert torch.allclose(grads[True][1], grads[False][1], atol=1e-6)


@pytest.mark.parametrize("updates", ["dense", "touched"])
def test_sampled_training_resumes_exactly_and_touched_moves_only_touched_rows(tmp_path: Path, updates: str) -> None:
    ds = random_dataset(n_users=40, n_items=200, seed=4)
    split = leave_one_out(ds)

    def trainer(run_dir: Path, epochs: int) -> Trainer:
        torch.manual_seed(1)
        model = build_model(MODEL, ds.n_items)
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=16,
            lr=5e-3,
            seed=1,
            patience=50,
            loss="sampled",
            n_negatives=3,
            item_updates=updates,
            grad_clip=1.0,
        )
        objective = SampledSoftmax(3, seeds=Seeds(2))  # as from_context builds it: a generator reseeded per epoch
        sampler = TrainSampler(split, MODEL.max_len, cfg.sample_mode)
        return Trainer(model, objective, split, sampler, cfg, EvalConfig(ks=[10]), run_dir)

    first = trainer(tmp_path / "a", 1)
    assert isinstance(first.optimizer, RowSparseAdam) == (updates == "touched")
    before = first.model.backbone.item_embedding.weight.detach().clone()
    first.fit()
    after = first.model.backbone.item_embedding.weight.detach()
    moved = (after != before).any(dim=1)
    if updates == "touched":  # with 3 negatives a batch, some items are never touched: they stay
        assert 0 < int(moved.sum()) < ds.n_items and not moved[0]
    straight = trainer(tmp_path / "b", 3).fit()
    trainer(tmp_path / "c", 2).fit()
    resumed = trainer(tmp_path / "c", 3).fit()
    assert resumed.history[-1]["valid"] == straight.history[-1]["valid"]
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-6)


def test_touched_updates_are_checked_when_the_config_loads() -> None:
    for wrong in (["train.loss=ce"], ["train.loss=sampled", "model.kind=bert4rec", "model.train_objective=cloze"]):
        with pytest.raises(ConfigError, match="needs the sampled-softmax objective"):
            load_config(None, ["data.name=ml-100k", "train.item_updates=touched", *wrong])
    cfg = load_config(None, ["data.name=ml-100k", "train.loss=sampled", "train.item_updates=touched"])
    assert cfg.train.item_updates == "touched"


def test_a_model_without_an_id_table_is_refused() -> None:
    model = build_model(MODEL, 10)
    model.backbone.item_embedding.weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable item-id table"):
        build_optimizer(model, "adam", 1e-3, 0.0, (0.9, 0.999), "touched")
