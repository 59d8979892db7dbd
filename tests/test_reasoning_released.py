"""The options that reproduce the ReaRec research code's choices, each against a hand transcription of its
formula: PRL's noisy view (``rcl_view``), the early-step cross-entropy (``step_ce``), the contrastive
similarity, the dropout placements (``model.input_dropout``, ``model.ffn_dropout``,
``reasoning.feedback_dropout``); and the all-prefix = per-prefix equivalence with the contrastive term on, in
train mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytest
import torch
from torch.nn import functional as F

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives import reasoning as objectives_module
from thinkrec.objectives.prl import ProgressiveReasoningLoss
from thinkrec.reasoning.config import PRLConfig, reasoning_config
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.seed import Seeds

from helpers import build_reasoning_objective

# 'from_start' positions: a prefix's position ids do not depend on its left padding, so a prefix reasons the
# same in an all-prefix window and alone in a 'last'-mode batch of another width
MODEL = SASRecConfig(hidden=16, layers=2, heads=2, max_len=10, dropout=0.0, attn_dropout=0.0, positions="from_start")
INPUTS = torch.tensor([[0, 0, 3, 9, 4, 7], [5, 1, 7, 2, 8, 6], [0, 0, 0, 0, 11, 2], [0, 12, 12, 4, 2, 1]])
TARGETS = torch.tensor(
    [[IGNORE, IGNORE, 9, 4, 7, 1], [IGNORE, IGNORE, IGNORE, 8, 6, 3], [IGNORE] * 4 + [2, 5], [IGNORE, 12, 4, 2, 1, 9]]
)
POSITIONS = torch.arange(4, 10)
TAU, SEED, EPOCH = 0.5, 3, 2


def _model(cfg: SASRecConfig = MODEL, steps: int = 2, **reasoner: Any) -> SeqRecModel:
    torch.manual_seed(0)
    model = build_model(cfg, n_items=15)
    model.reasoner = LatentReasoner(cfg.hidden, steps, **reasoner)
    with torch.no_grad():
        model.reasoner.rpe.normal_(0.0, 1.0)
    return model


def _prl(**options: Any) -> ProgressiveReasoningLoss:
    objective = build_reasoning_objective(PRLConfig(warmup_epochs=0, **options), TAU, seed=SEED)
    assert isinstance(objective, ProgressiveReasoningLoss)
    objective.start_epoch(EPOCH)
    return objective


# ------------------------------------------------------------------------ transcription of the research code
def released_prl(
    model: SeqRecModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    alpha: float,
    noise: list[torch.Tensor],
    rcl_weight: float,
    view: Literal["reencode", "shared"] = "reencode",
    step_ce: Literal["mean", "sum"] = "mean",
    similarity: Literal["dot", "cosine"] = "dot",
) -> torch.Tensor:
    """PRL's loss of one prefix per row, written out as ``PRL.py`` computes it (the defaults are its choices):

    - the steps recompute the extended sequence: each reasoning token goes through the backbone's plain
      ``extend`` (every cached column, causal over the reasoning tokens), not the objective's chain path;
    - ``loss = CE(r_K . E / tau)``; ``pl = CE`` of ``r_0..r_(K-1)`` flattened to ``[B*K, N]`` at
      temperatures ``tau * alpha^(K-k)`` (a mean over the early steps; ``sum``: times K);
    - the noisy copy encodes the sequence again; its step-``k`` input is ``clean r_(k-1) + RPE[k] + noise``
      (``shared``: the clean item pass and its own noisy chain);
    - ``cl = CE(einsum('btd,ktd->btk', noisy, clean).permute(0, 2, 1) / tau, arange(B))`` over steps 1..K;
    - ``total = loss + pl + rcl_weight * cl``.
    """
    backbone, reasoner = model.cached_backbone, model.reasoner
    assert isinstance(reasoner, LatentReasoner)
    positions = torch.arange(inputs.shape[1])

    def reason(perturbed: bool, encoded: Any, feed: torch.Tensor | None) -> torch.Tensor:
        states, grown = [encoded.hidden[:, -1]], encoded
        for k in range(1, steps + 1):
            previous = states[-1] if feed is None else feed[:, k - 1]
            z = previous + reasoner.rpe[k - 1] + (noise[k - 1] if perturbed else 0.0)
            grown = backbone.extend(backbone.input_tokens(z[:, None]), grown)
            states.append(grown.hidden[:, -1])
        return torch.stack(states, dim=1)  # [B, K+1, d]

    clean_pass = backbone(inputs, positions, use_cache=True)
    clean = reason(False, clean_pass, None)
    if view == "reencode":
        noisy = reason(True, backbone(inputs, positions, use_cache=True), clean)
    else:
        noisy = reason(True, clean_pass, None)
    items = model.item_vectors()
    n, b = items.shape[0], inputs.shape[0]
    loss = F.cross_entropy(clean[:, steps] @ items.T / TAU, targets)
    thinking = clean[:, :steps]
    temperatures = TAU * alpha ** torch.arange(steps, 0, -1, dtype=torch.float32)
    scaled = torch.einsum("btd,nd->btn", thinking, items) / temperatures.view(1, steps, 1)
    pl = F.cross_entropy(scaled.reshape(-1, n), targets.repeat_interleave(steps))
    if step_ce == "sum":
        pl = pl * steps
    view1, view2 = clean[:, 1:], noisy[:, 1:]
    if similarity == "cosine":
        view1, view2 = F.normalize(view1, dim=-1), F.normalize(view2, dim=-1)
    sim = torch.einsum("btd,ktd->btk", view2, view1) / TAU
    cl = F.cross_entropy(sim.permute(0, 2, 1), torch.arange(b)[:, None].expand(-1, steps))
    return loss + pl + rcl_weight * cl


def _noise_like_the_objective(b: int, d: int, steps: int, std: float) -> list[torch.Tensor]:
    """The noise the objective draws at epoch EPOCH: one ``[B, 1, d]`` draw per step, from its seeded generator."""
    generator = torch.Generator().manual_seed(Seeds(SEED).torch_seed(f"reasoning-noise/{EPOCH}"))
    return [std * torch.randn((b, 1, d), generator=generator)[:, 0] for _ in range(steps)]


@pytest.mark.parametrize("view", ["reencode", "shared"])
@pytest.mark.parametrize("step_ce", ["mean", "sum"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_prl_total_and_gradients_equal_the_transcribed_formula(view: str, step_ce: str, similarity: str) -> None:
    """Every combination of the three PRL options; (reencode, mean, dot) is the research code."""
    inputs, targets = INPUTS, TARGETS[:, -1] - 1
    std, alpha, weight = 0.3, 2.0, 0.7  # noise large enough to matter
    options = {"rcl_view": view, "step_ce": step_ce, "rcl_similarity": similarity}
    objective = _prl(noise_std=std, prl_alpha=alpha, rcl_weight=weight, **options)
    model = _model().train()  # the training code paths; no dropout (p = 0), so both sides are deterministic
    out = objective(model, TrainBatch(inputs, POSITIONS, TARGETS[:, -1], "last"))
    out.total.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    noise = _noise_like_the_objective(inputs.shape[0], MODEL.hidden, 2, std)
    reference = released_prl(
        model,
        inputs,
        targets,
        steps=2,
        alpha=alpha,
        noise=noise,
        rcl_weight=weight,
        view=view,  # type: ignore[arg-type]
        step_ce=step_ce,  # type: ignore[arg-type]
        similarity=similarity,  # type: ignore[arg-type]
    )
    reference.backward()
    assert float(out.total.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert out.parts["rcl"] > 0
    for name, p in model.named_parameters():
        if p.grad is None:
            assert name not in ours, name
            continue
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_step_ce_mean_is_the_sum_over_k() -> None:
    model = _model().eval()
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    with torch.no_grad():
        summed = _prl(rcl_weight=0.0)(model, batch)
        mean = _prl(rcl_weight=0.0, step_ce="mean")(model, batch)
        # and by hand: the mean over prefixes of each early step's CE at tau * alpha^(K-k), k = 0, 1
        states = model.encode(INPUTS[:, :], torch.arange(6))  # each row's last prefix, all valid
        items = model.item_vectors()
        by_step = [F.cross_entropy(states[:, k] @ items.T / (TAU * 5.0 ** (2 - k)), TARGETS[:, -1] - 1) for k in (0, 1)]
        last = _prl(rcl_weight=0.0, step_ce="mean")(model, TrainBatch(INPUTS, POSITIONS, TARGETS[:, -1], "last"))
    assert mean.parts["ce_steps"] == pytest.approx(summed.parts["ce_steps"] / 2, rel=1e-6)
    assert mean.parts["ce_last"] == pytest.approx(summed.parts["ce_last"], rel=1e-6)
    assert last.parts["ce_steps"] == pytest.approx(float(sum(by_step)) / 2, rel=1e-5)


def test_the_reencoded_view_is_a_second_item_pass_with_its_own_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MODEL.model_copy(update={"dropout": 0.3, "attn_dropout": 0.3})
    calls: list[int] = []
    encode = objectives_module.prefix_batch

    def counting(model: SeqRecModel, batch: TrainBatch) -> Any:
        calls.append(1)
        return encode(model, batch)

    monkeypatch.setattr(objectives_module, "prefix_batch", counting)
    monkeypatch.setattr("thinkrec.objectives.prl.prefix_batch", counting)
    batch = TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    for view, passes in [("shared", 1), ("reencode", 2)]:
        calls.clear()
        model = _model(cfg).train()
        objective = _prl(rcl_view=view, noise_std=0.0)
        seen: list[torch.Tensor] = []
        states = objective.states

        def spy(
            *args: Any, _states: Callable[..., torch.Tensor] = states, _seen: list[torch.Tensor] = seen, **kw: Any
        ) -> torch.Tensor:
            out = _states(*args, **kw)
            _seen.append(out.detach())
            return out

        monkeypatch.setattr(objective, "states", spy)
        objective(model, batch)
        assert len(calls) == passes, view
        clean, noisy = seen
        # without noise the shared view is the clean one up to the reasoning tokens' own dropout; a second
        # item pass has its own dropout masks, so even r_0 differs
        assert torch.equal(clean[:, :, 0], noisy[:, :, 0]) == (view == "shared"), view


# ------------------------------------------------------------------------------------------ dropout options
def test_released_dropout_placement() -> None:
    """Research code: 0.2 on the input tokens (items and fed-back reasoning tokens), 0.5 on hidden states and
    attention, nothing between the feed-forward layers."""
    cfg = MODEL.model_copy(update={"dropout": 0.5, "attn_dropout": 0.5, "input_dropout": 0.2, "ffn_dropout": False})
    backbone: Any = build_model(cfg, n_items=15).backbone
    assert backbone.input_dropout.p == 0.2
    for block in backbone.blocks:
        assert (block.dropout.p, block.attn_dropout, block.ffn[2].p) == (0.5, 0.5, 0.0)
    default: Any = build_model(MODEL.model_copy(update={"dropout": 0.3}), n_items=15).backbone
    assert default.input_dropout.p == 0.3 and all(block.ffn[2].p == 0.3 for block in default.blocks)
    # the same parameters either way: a checkpoint of one loads into the other
    assert backbone.state_dict().keys() == default.state_dict().keys()


def test_ffn_dropout_off_makes_the_feed_forward_deterministic_in_training() -> None:
    x = torch.randn(3, 5, MODEL.hidden)
    for ffn_dropout in (True, False):
        cfg = MODEL.model_copy(update={"dropout": 0.5, "ffn_dropout": ffn_dropout})
        block: Any = build_model(cfg, n_items=15).backbone.blocks[0]
        block.train()
        train = block._ffn(x)
        block.eval()
        # the hand formula: W2 GELU(W1 x + b1) + b2
        by_hand = F.linear(F.gelu(F.linear(x, block.ffn[0].weight, block.ffn[0].bias)), block.ffn[3].weight)
        by_hand = by_hand + block.ffn[3].bias
        torch.testing.assert_close(block._ffn(x), by_hand, rtol=1e-5, atol=1e-6)
        assert torch.allclose(train, by_hand, rtol=1e-5, atol=1e-6) == (not ffn_dropout)


@pytest.mark.parametrize(("feedback", "expect_zeros"), [(None, True), (0.0, False), (0.5, True)])
def test_feedback_dropout_is_separate_from_the_item_input_dropout(feedback: float | None, expect_zeros: bool) -> None:
    cfg = MODEL.model_copy(update={"input_dropout": 0.5})
    model = _model(cfg, feedback_dropout=feedback).train()
    reasoner, backbone = model.reasoner, model.cached_backbone
    assert isinstance(reasoner, LatentReasoner)
    r = torch.randn(64, 1, cfg.hidden)
    token = reasoner._token(backbone, r, 1, None)
    normalised = backbone.input_norm(r + reasoner.rpe[0])  # type: ignore[attr-defined]
    if expect_zeros:
        kept = token != 0
        assert 0.3 < 1 - float(kept.float().mean()) < 0.7  # about half dropped, the rest scaled by 2
        torch.testing.assert_close(token[kept], 2 * normalised[kept], rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(token, normalised)
    # the items' input dropout is unchanged by feedback_dropout
    items = backbone.input_tokens(torch.randn(64, 1, cfg.hidden))
    assert 0.3 < float((items == 0).float().mean()) < 0.7


# ----------------------------------------------------------------- all prefixes = per prefix, RCL on, train mode
def _per_slot_loss(objective: ProgressiveReasoningLoss, model: SeqRecModel) -> float:
    """The all-prefix window's prefixes as 'last'-mode batches, one per prefix slot (slot i = each row's i-th
    trained prefix, the rows that have one): the contrastive negatives of an all-prefix batch are the other
    rows' prefixes of the same slot. Averaged with the prefix counts."""
    use = TARGETS != IGNORE
    total, count = 0.0, 0
    for slot in range(int(use.sum(1).max())):
        rows, prefixes, targets = [], [], []
        for b in range(INPUTS.shape[0]):
            columns = use[b].nonzero().flatten()
            if slot < len(columns):
                c = int(columns[slot])
                rows.append(b)
                prefixes.append(INPUTS[b, : c + 1])
                targets.append(int(TARGETS[b, c]))
        width = max(len(p) for p in prefixes)
        padded = torch.stack([F.pad(p, (width - len(p), 0)) for p in prefixes])
        batch = TrainBatch(padded, torch.arange(width), torch.tensor(targets), "last")
        total += float(objective(model, batch).total.detach()) * len(rows)
        count += len(rows)
    return total / count


@pytest.mark.parametrize("view", ["shared", "reencode"])
@pytest.mark.parametrize("grouped", [True, False])
def test_all_prefix_prl_with_the_contrastive_term_equals_the_per_prefix_loss_in_train_mode(
    view: str, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train mode (dropout p = 0, so both layouts are deterministic); the noise is replaced by a fixed
    function of the input, which is the same for a prefix in either layout (drawn noise depends on the
    batch's shape). ``grouped``: the rows reason in two groups (:func:`split_rows`), as this batch's uneven
    prefix counts make them, or in one."""
    if not grouped:
        monkeypatch.setattr(objectives_module, "split_rows", lambda counts: None)
    model = _model().train()
    objective = _prl(rcl_view=view, rcl_weight=0.7, rcl_similarity="dot", step_ce="mean")
    monkeypatch.setattr(objective, "noise", lambda z: z + 0.2 * torch.sin(7.0 * z))
    fast = objective(model, TrainBatch(INPUTS, POSITIONS, TARGETS, "all"))
    slow = _per_slot_loss(objective, model)
    assert fast.parts["rcl"] > 0
    assert float(fast.total.detach()) == pytest.approx(slow, rel=1e-5)


# ------------------------------------------------------------------------------------------------------- ERL
def released_erl(model: SeqRecModel, inputs: torch.Tensor, targets: torch.Tensor, steps: int, kl_weight: float) -> Any:
    """ERL's loss as ``ERL.py`` computes it: ``CE(mean(r_0..r_K) . E / tau)`` minus ``kl_weight`` times the
    mean over rows and ordered step pairs ``j != k`` of ``F.kl_div(log p_j.detach(), p_k)`` (the reference
    distribution's log detached); the steps recompute the extended sequence through the plain ``extend``."""
    backbone, reasoner = model.cached_backbone, model.reasoner
    assert isinstance(reasoner, LatentReasoner)
    grown = backbone(inputs, torch.arange(inputs.shape[1]), use_cache=True)
    states = [grown.hidden[:, -1]]
    for k in range(1, steps + 1):
        grown = backbone.extend(backbone.input_tokens((states[-1] + reasoner.rpe[k - 1])[:, None]), grown)
        states.append(grown.hidden[:, -1])
    thinking = torch.stack(states, dim=1)  # [B, T, d], T = K + 1
    items = model.item_vectors()
    loss = F.cross_entropy(thinking.mean(dim=1) @ items.T / TAU, targets)
    logits = thinking @ items.T / TAU
    probs, log_probs = F.softmax(logits, dim=-1), F.log_softmax(logits.detach(), dim=-1)
    kl = F.kl_div(log_probs.unsqueeze(2), probs.unsqueeze(1), reduction="none").sum(-1)  # [B, T, T]
    t = thinking.shape[1]
    return loss - kl_weight * kl[:, ~torch.eye(t, dtype=torch.bool)].mean()


def test_erl_total_and_gradients_equal_the_transcribed_formula() -> None:
    inputs, targets = INPUTS, TARGETS[:, -1] - 1
    objective = build_reasoning_objective(reasoning_config(kind="erl", warmup_epochs=0, erl_lambda=0.3), TAU, SEED)
    model = _model().train()
    out = objective(model, TrainBatch(inputs, POSITIONS, TARGETS[:, -1], "last"))
    out.total.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = released_erl(model, inputs, targets, steps=2, kl_weight=0.3)
    reference.backward()
    assert float(out.total.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------- warm-up
def test_a_reasoning_warm_up_trains_the_objective_without_the_noisy_view() -> None:
    """``warmup_trains = "reasoning"`` (the research code): PRL's warm-up epochs are its cross-entropies alone
    (the transcription with the contrastive weight 0); after the warm-up the contrastive term joins."""
    inputs, targets = INPUTS, TARGETS[:, -1] - 1
    batch = TrainBatch(inputs, POSITIONS, TARGETS[:, -1], "last")
    options: dict[str, Any] = {"rcl_view": "reencode", "step_ce": "mean", "rcl_similarity": "dot"}
    objective = build_reasoning_objective(
        PRLConfig(warmup_epochs=2, warmup_trains="reasoning", rcl_weight=0.7, noise_std=0.3, **options), TAU, SEED
    )
    objective.start_epoch(1)
    model = _model().train()
    warm = objective(model, batch)
    assert warm.parts.keys() == {"ce_last", "ce_steps"}
    empty: list[torch.Tensor] = [torch.zeros(4, MODEL.hidden)] * 2
    reference = released_prl(model, inputs, targets, steps=2, alpha=5.0, noise=empty, rcl_weight=0.0, view="reencode")
    assert float(warm.total.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    objective.start_epoch(2)
    assert objective(model, batch).parts.keys() == {"ce_last", "ce_steps", "rcl"}
    assert objective.first_selectable_epoch == 2  # its warm-up epochs are still never the reported checkpoint
    # ERL has no noisy view: its reasoning warm-up is its full loss
    erl = build_reasoning_objective(reasoning_config(kind="erl", warmup_epochs=2, warmup_trains="reasoning"), TAU, SEED)
    with torch.no_grad():
        erl.start_epoch(0)
        during = erl(model.eval(), batch)
        erl.start_epoch(2)
        after = erl(model, batch)
    assert during.parts == after.parts and "kl" in during.parts


def test_the_reencoded_view_trains_every_parameter_with_dropout_in_all_mode() -> None:
    cfg = MODEL.model_copy(update={"dropout": 0.3, "attn_dropout": 0.3, "input_dropout": 0.2, "ffn_dropout": False})
    model = _model(cfg, feedback_dropout=0.1).train()
    out = _prl(rcl_view="reencode", step_ce="mean", rcl_similarity="dot")(
        model, TrainBatch(INPUTS, POSITIONS, TARGETS, "all")
    )
    assert torch.isfinite(out.total) and out.parts["rcl"] > 0
    out.total.backward()
    for name, p in model.named_parameters():
        if name != "backbone.position_embedding.weight":  # 'from_start': only the first 6 positions are used
            assert p.grad is not None and p.grad.abs().sum() > 0, name
