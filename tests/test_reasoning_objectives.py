"""ERL and PRL objectives: all-prefix losses equal per-prefix ('last' mode) losses, warm-up, noise, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.data.batches import IGNORE, TrainBatch, TrainSampler
from thinkrec.data.split import leave_one_out
from thinkrec.errors import ThinkrecError
from thinkrec.eval.protocol import EvalConfig
from thinkrec.losses import pairwise_kl
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives import erl as erl_module
from thinkrec.objectives import reasoning as objectives_module
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.objectives.erl import EnsembleReasoningLoss
from thinkrec.objectives.prl import ProgressiveReasoningLoss
from thinkrec.objectives.reasoning import ReasoningObjective, split_rows
from thinkrec.reasoning.config import ERLConfig, reasoning_config
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.seed import Seeds
from thinkrec.train.checkpoint import load_checkpoint
from thinkrec.train.trainer import NonFiniteLossError, TrainConfig, Trainer

from helpers import build_reasoning_objective, cyclic_dataset

MODEL = SASRecConfig(hidden=16, layers=1, heads=2, max_len=10, dropout=0.1, attn_dropout=0.1)
INPUTS = torch.tensor([[0, 0, 3, 9, 4, 7], [5, 1, 7, 2, 8, 6], [0, 0, 0, 0, 11, 2], [0, 12, 12, 4, 2, 1]])
# next-item targets; IGNORE on padding and on columns before a window's loss start (row 1 trains on 3..5)
TARGETS = torch.tensor(
    [[IGNORE, IGNORE, 9, 4, 7, 1], [IGNORE, IGNORE, IGNORE, 8, 6, 3], [IGNORE] * 4 + [2, 5], [IGNORE, 12, 4, 2, 1, 9]]
)
POSITIONS = torch.arange(4, 10)


def _model(steps: int = 2) -> SeqRecModel:
    torch.manual_seed(0)
    model = build_model(MODEL, n_items=15)
    model.reasoner = LatentReasoner(MODEL.hidden, steps)
    with torch.no_grad():
        model.reasoner.rpe.normal_(0.0, 1.0)
    return model


def _objective(kind: str, warmup: int = 0, **kw: float) -> ReasoningObjective:
    cfg = reasoning_config(kind=kind, warmup_epochs=warmup, **kw)
    objective = build_reasoning_objective(cfg, 0.5, seed=3)
    objective.start_epoch(warmup)
    return objective


def _per_prefix_loss(objective: ReasoningObjective, model: SeqRecModel) -> float:
    """The same prefixes one per row ('last' mode), column by column, averaged with the prefix counts."""
    total, count = 0.0, 0
    for t in range(INPUTS.shape[1]):
        rows = TARGETS[:, t] != IGNORE
        if rows.any():
            batch = TrainBatch(INPUTS[rows, : t + 1], POSITIONS[: t + 1], TARGETS[rows, t], "last")
            total += float(objective(model, batch).total.detach()) * int(rows.sum())
            count += int(rows.sum())
    return total / count


@pytest.mark.parametrize(
    ("kind", "options"),
    [("erl", {"erl_lambda": 0.3}), ("prl", {"rcl_weight": 0.0}), ("prl", {"rcl_weight": 0.0, "prl_alpha": 2.0})],
)
@pytest.mark.parametrize("warmup", [0, 1])
def test_all_prefix_loss_equals_the_per_prefix_loss(kind: str, options: dict[str, float], warmup: int) -> None:
    # with PRL's contrastive term on, in train mode and for both noisy views: test_reasoning_released.py
    model = _model().eval()  # no dropout, so both paths are deterministic
    objective = _objective(kind, warmup=warmup, **options)
    objective.start_epoch(0)  # warmup=1: still warming up at epoch 0
    with torch.no_grad():
        fast = objective(model, TrainBatch(INPUTS, POSITIONS, TARGETS, "all"))
        slow = _per_prefix_loss(objective, model)
    assert float(fast.total) == pytest.approx(slow, rel=1e-5)
    assert ("ce_r0" in fast.parts) == bool(warmup)


def test_rows_reason_in_two_groups_when_that_saves_slots_and_the_loss_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = (TARGETS != IGNORE).sum(1)  # 4, 3, 2, 5 prefixes: 2 x 3 + 2 x 5 = 16 slots instead of 4 x 5
    groups = split_rows(counts)
    assert groups is not None and [g.tolist() for g in groups] == [[2, 1], [0, 3]]
    assert split_rows(torch.tensor([5, 5, 4, 5])) is None and split_rows(torch.tensor([3])) is None
    model = _model().eval()
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    with torch.no_grad():
        grouped = _objective("prl", noise_std=0.0)(model, batch)
        monkeypatch.setattr(objectives_module, "split_rows", lambda counts: None)
        whole = _objective("prl", noise_std=0.0)(model, batch)
    assert float(grouped.total) == pytest.approx(float(whole.total), rel=1e-5)


def test_warmup_is_the_plain_cross_entropy_and_leaves_the_reasoner_untouched() -> None:
    model = _model()
    model.scorer.temperature = 0.5  # the objective's tau, so the warm-up is exactly the engine's CE
    for mode, batch in [
        ("all", TrainBatch(INPUTS, POSITIONS, TARGETS, "all")),
        ("last", TrainBatch(INPUTS, POSITIONS, TARGETS[:, -1], "last")),
    ]:
        objective = _objective("prl", warmup=2)
        objective.start_epoch(1)
        torch.manual_seed(0)
        out = objective(model, batch)
        torch.manual_seed(0)
        reference = CrossEntropy()(model, batch)
        assert float(out.total.detach()) == pytest.approx(float(reference.total.detach()), rel=1e-6), mode
        out.total.backward()
        assert isinstance(model.reasoner, LatentReasoner) and model.reasoner.rpe.grad is None
        objective.start_epoch(2)
        assert objective(model, batch).parts.keys() == {"ce_last", "ce_steps", "rcl"}


@pytest.mark.parametrize("mode", ["all", "last"])
@pytest.mark.parametrize("kind", ["erl", "prl"])
def test_reasoning_losses_train_every_parameter(kind: str, mode: str) -> None:
    model = _model()
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS if mode == "all" else TARGETS[:, -1], mode)
    out = _objective(kind)(model, batch)
    assert torch.isfinite(out.total)
    out.total.backward()
    for name, p in model.named_parameters():
        if name != "backbone.position_embedding.weight":  # only the last 6 positions are used
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_erl_total_is_ce_of_the_mean_minus_lambda_kl() -> None:
    model = _model().eval()
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS[:, -1], "last")
    with torch.no_grad():
        out = _objective("erl", erl_lambda=0.25)(model, batch)
        states = model.encode(INPUTS, POSITIONS)
        kl = pairwise_kl(states, model.item_vectors(), 0.5)
        assert states.shape == (4, 3, MODEL.hidden)
        ce = torch.nn.functional.cross_entropy(model.score(states.mean(1), 0.5), TARGETS[:, -1] - 1)
    assert out.parts["kl"] == pytest.approx(float(kl), rel=1e-5) and float(kl) > 0
    assert out.parts["ce_mean"] == pytest.approx(float(ce), rel=1e-5)
    assert float(out.total) == pytest.approx(float(ce) - 0.25 * float(kl), rel=1e-5)
    assert float(out.total) < out.parts["ce_mean"]  # the diversity term lowers the loss


def test_prl_noise_is_seeded_per_epoch_and_rcl_adds_up() -> None:
    model = _model().eval()
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    objective = _objective("prl", rcl_weight=0.5, noise_std=0.3)
    assert isinstance(objective, ProgressiveReasoningLoss)
    with torch.no_grad():
        objective.start_epoch(4)
        a = objective(model, batch)
        objective.start_epoch(4)
        b = objective(model, batch)
        objective.start_epoch(5)
        c = objective(model, batch)
    assert a.parts == b.parts and a.parts["rcl"] != c.parts["rcl"]
    assert float(a.total) == pytest.approx(a.parts["ce_last"] + a.parts["ce_steps"] + 0.5 * a.parts["rcl"], rel=1e-6)
    # negatives are grouped per (prefix slot, step), across the rows of the batch
    x = torch.arange(2 * 3 * 4 * 5).view(2, 3, 4, 5)
    grouped = ProgressiveReasoningLoss.by_step_slot(x)
    assert torch.equal(grouped[1 * 4 + 2, 1], x[1, 1, 2])


def _trainer(tmp: Path, objective: object, sample_mode: str, epochs: int) -> Trainer:
    ds = cyclic_dataset(n_users=60, n_items=20, length=15)
    split = leave_one_out(ds)
    torch.manual_seed(0)
    model = build_model(MODEL, ds.n_items)
    model.reasoner = LatentReasoner(MODEL.hidden, 2)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=5e-3, seed=1, sample_mode=sample_mode)
    sampler = TrainSampler(split, MODEL.max_len, cfg.sample_mode)
    eval_cfg = EvalConfig(ks=[10], inference="mean")
    return Trainer(model, objective, split, sampler, cfg, eval_cfg, tmp)


@pytest.mark.parametrize("kind", ["prl", "erl"])
def test_reasoning_models_learn_a_predictable_sequence(tmp_path: Path, kind: str) -> None:
    """End to end through the Trainer ('last' mode is covered by the equivalence tests above)."""
    objective = build_reasoning_objective(reasoning_config(kind=kind, warmup_epochs=1), 0.2, seed=1)
    result = _trainer(tmp_path, objective, "all", epochs=3).fit()
    assert result.best_valid["HR@10"] > 0.9
    assert {"ce_r0"} <= result.history[0].keys() and "ce_last" not in result.history[0]
    assert np.isfinite(result.history[-1]["loss"])


def test_nan_after_warmup_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erl_module, "pairwise_kl", lambda users, items, tau: users.sum() * float("nan"))
    objective = EnsembleReasoningLoss(ERLConfig(warmup_epochs=1), 0.2, Seeds(1))
    trainer = _trainer(tmp_path, objective, "all", epochs=3)
    with pytest.raises(NonFiniteLossError, match="epoch 1: the loss became nan"):
        trainer.fit()
    model = build_model(MODEL, cyclic_dataset(n_users=60, n_items=20, length=15).n_items)
    model.reasoner = LatentReasoner(MODEL.hidden, 2)
    info = load_checkpoint(tmp_path / "checkpoints", "last", model)
    assert info["trainer_state"]["epoch"] == 1  # epoch 0 (warm-up) finished and was kept
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the warm-up trained the plain backbone only: it is never the reasoning run's best checkpoint
    assert not (tmp_path / "checkpoints" / "best.json").exists()


def test_all_prefix_training_needs_a_causal_backbone() -> None:
    model = _model()
    model.backbone.causal = False
    with pytest.raises(ThinkrecError, match="causal backbone"):
        _objective("prl")(model, TrainBatch(INPUTS, POSITIONS, TARGETS, "all"))


@pytest.mark.parametrize(
    ("kind", "options"), [("erl", {"erl_lambda": 0.3}), ("prl", {"rcl_weight": 0.5, "noise_std": 0.2})]
)
def test_a_drawn_depth_trains_exactly_the_fixed_objective_of_that_depth(kind: str, options: dict[str, float]) -> None:
    model = _model(steps=3).eval()  # no dropout: both objectives see the same states
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    sampled = _objective(kind, steps=3, train_depth="uniform", **options)
    drawn: list[int] = []
    with torch.no_grad():
        for depth in (1, 2, 3):
            fixed = _objective(kind, steps=depth, **options)
            sampled.draw_depth = lambda depth=depth: depth  # type: ignore[method-assign]
            sampled.start_epoch(0)  # PRL: the same noise generator state in both
            out, reference = sampled(model, batch), fixed(model, batch)
            drawn.append(sampled.depth)
            assert out.parts == pytest.approx(reference.parts, rel=1e-6), depth
            assert float(out.total) == pytest.approx(float(reference.total), rel=1e-6), depth
    assert drawn == [1, 2, 3]
    # the depths change the loss: a test that could not fail otherwise
    with torch.no_grad():
        totals = {round(float(_objective(kind, steps=d, **options)(model, batch).total), 6) for d in (1, 2, 3)}
    assert len(totals) == 3


def test_depths_are_uniform_on_1_to_steps_seeded_per_epoch_and_fixed_by_default() -> None:
    sampled = _objective("erl", steps=3, train_depth="uniform")
    sampled.start_epoch(2)
    first = [sampled.draw_depth() for _ in range(3000)]
    sampled.start_epoch(2)
    assert [sampled.draw_depth() for _ in range(3000)] == first  # a resumed epoch draws the same depths
    sampled.start_epoch(3)
    assert [sampled.draw_depth() for _ in range(50)] != first[:50]
    counts = np.bincount(first, minlength=4)
    assert counts[0] == 0 and all(abs(c / 3000 - 1 / 3) < 0.03 for c in counts[1:])
    fixed = _objective("erl", steps=3)
    assert {fixed.draw_depth() for _ in range(100)} == {3}
