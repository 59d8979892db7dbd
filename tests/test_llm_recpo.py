"""RecPO's mathematics on toy tensors (no model, no optional dependency)."""

from __future__ import annotations

import math

import pytest
import torch

from thinkrec.llm.recpo import (
    catalogue_target_logprobs,
    completion_span,
    contrastive_loss,
    cosine_scores,
    fused_reward,
    group_advantages,
    history_mask,
    inbatch_target_logprobs,
    item_loss,
    last_token_index,
    ndcg_reward,
    pool_last,
    token_policy_loss,
    topk_mask,
)


# ------------------------------------------------------------------------------------------- pooling/spans
def test_last_token_index_right_left_and_no_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(left).tolist() == [4, 4]


def test_pool_last_ignores_token_ids_equal_to_pad() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert pool_last(hidden, mask).squeeze(1).tolist() == [1.0, 7.0]


def test_completion_span_continued_and_closed() -> None:
    gen, end = [7, 8], [9]
    # system 7 8 ... : the *last* generation prompt counts; continued turn runs to the end
    ids = [1, 7, 8, 5, 9, 2, 7, 8, 3, 4, 6]
    assert completion_span(ids, gen, end) == (8, 11)
    closed = [1, 7, 8, 3, 4, 9, 0]
    assert completion_span(closed, gen, end) == (3, 5)
    with pytest.raises(ValueError):
        completion_span([1, 2, 3], gen, end)


# ------------------------------------------------------------------------------------------------ rewards
def test_ndcg_reward_values_and_cutoff() -> None:
    ranks = torch.tensor([0, 1, 2, 5, 1000])
    got = ndcg_reward(ranks, cutoff=1000)
    want = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(7), 0.0]
    assert got.tolist() == pytest.approx(want)
    assert ndcg_reward(torch.tensor([3]), cutoff=3).item() == 0.0


def test_history_mask_masks_pad_column() -> None:
    m = history_mask([[2, 3], []], 5)
    assert m.tolist() == [[True, False, True, True, False], [True, False, False, False, False]]
    assert not history_mask([[]], 3, mask_pad=False).any()


def test_fused_reward_masks_history_before_ranking_and_softmax() -> None:
    # columns = item ids 0..4; item 3 is the target; item 1 scores higher but is in the history
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0, 2.0]])
    masked = history_mask([[1]], 5)
    r = fused_reward(scores, torch.tensor([3]), masked, beta=0.05, cutoff=1000)
    assert r.ranks.tolist() == [0]
    assert r.ndcg.item() == pytest.approx(1.0)
    p = math.exp(3) / (math.exp(1) + math.exp(3) + math.exp(2))
    assert r.softmax.item() == pytest.approx(p, rel=1e-5)
    assert r.reward.item() == pytest.approx(0.95 * 1.0 + 0.05 * p, rel=1e-5)
    unmasked = fused_reward(scores, torch.tensor([3]), history_mask([[]], 5), 0.05, 1000)
    assert unmasked.ranks.tolist() == [1]
    assert unmasked.ndcg.item() == pytest.approx(1 / math.log2(3))


def test_fused_reward_pessimistic_ties_and_beta_extremes() -> None:
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    m = history_mask([[]], 4)
    r = fused_reward(scores, torch.tensor([1]), m, beta=0.0, cutoff=10)
    assert r.ranks.tolist() == [2]  # the two equal items rank before the target
    assert r.reward.item() == pytest.approx(0.5)
    r1 = fused_reward(scores, torch.tensor([1]), m, beta=1.0, cutoff=10)
    assert r1.reward.item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------- advantages
def test_group_advantages_gaussian_zscore_per_group() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, 4)
    first = torch.tensor([1.0, 2.0, 3.0, 4.0])
    want = (first - first.mean()) / first.std(unbiased=True)
    assert adv[:4].tolist() == pytest.approx(want.tolist(), rel=1e-5)
    assert adv[4:].tolist() == [0.0] * 4  # identical rewards: no signal, no NaN
    assert adv[:4].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_group_advantages_leave_one_out_variants() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    loo = group_advantages(r, 4, "leave_one_out")
    for i in range(4):
        others = torch.cat([r[:i], r[i + 1 :]]).mean()
        assert loo[i].item() == pytest.approx((r[i] - others).item())
    code = group_advantages(r, 4, "leave_one_out_code")
    assert code.tolist() == pytest.approx((r * 1.25 - r.mean()).tolist())
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 4)


def test_topk_mask_per_group_with_stable_ties() -> None:
    adv = torch.tensor([0.1, 0.9, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert topk_mask(adv, 4, 2).tolist() == [False, True, False, True, True, True, False, False]
    assert topk_mask(adv, 4, 9).all()


# ------------------------------------------------------------------------------------------------- losses
def _toy_logprobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 5, 7, generator=g, requires_grad=True)
    tokens = torch.randint(0, 7, (4, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    return logits, tokens, mask


def _logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)


def test_token_loss_per_rollout_gradient_is_advantage_weighted_token_mean() -> None:
    logits, tokens, mask = _toy_logprobs()
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    loss = token_policy_loss(_logp(logits, tokens), mask, adv, pairing="per_rollout")
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / mask.sum().item())
    (grad,) = torch.autograd.grad(loss, logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    ref = -(adv[:, None] * _logp(logits2, tokens) * mask).sum() / mask.sum()
    (want,) = torch.autograd.grad(ref, logits2)
    assert torch.allclose(grad, want, atol=1e-6)


def test_token_loss_faithful_to_code_has_no_gradient_for_one_zscored_group() -> None:
    logits, tokens, mask = _toy_logprobs(1)
    adv = group_advantages(torch.tensor([0.1, 0.7, 0.3, 0.2]), 4)
    loss = token_policy_loss(_logp(logits, tokens), mask, adv, pairing="faithful_to_code")
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max().item() < 1e-6
    per = token_policy_loss(_logp(logits, tokens), mask, adv, pairing="per_rollout")
    (grad_per,) = torch.autograd.grad(per, logits)
    assert grad_per.abs().max().item() > 1e-3


def test_token_loss_faithful_equals_mean_advantage_times_sum() -> None:
    logits, tokens, mask = _toy_logprobs(2)
    adv = torch.tensor([1.0, 2.0, 0.0, 1.0])
    loss = token_policy_loss(_logp(logits, tokens), mask, adv, pairing="faithful_to_code")
    (grad,) = torch.autograd.grad(loss, logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    ref = -adv.mean() * (_logp(logits2, tokens) * mask).sum() / mask.sum()
    (want,) = torch.autograd.grad(ref, logits2)
    assert torch.allclose(grad, want, atol=1e-6)


def test_token_loss_clip_activates_with_old_logprobs() -> None:
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.25]]))  # ratio 2 > 1.28
    loss = token_policy_loss(logp, torch.ones(1, 1), torch.tensor([1.0]), pairing="per_rollout", old_logprobs=old)
    assert loss.item() == pytest.approx(-1.28)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == 0.0  # clipped: no gradient
    loss_neg = token_policy_loss(logp, torch.ones(1, 1), torch.tensor([-1.0]), old_logprobs=old)
    assert loss_neg.item() == pytest.approx(2.0)  # min picks the unclipped, more pessimistic term


def test_item_loss_variants() -> None:
    g = torch.Generator().manual_seed(3)
    users = torch.randn(4, 6, generator=g, requires_grad=True)
    items = torch.randn(2, 6, generator=g, requires_grad=True)
    cols = torch.tensor([0, 0, 1, 1])
    adv = torch.tensor([1.5, -1.5, 0.5, -0.5])
    sel = torch.tensor([True, False, True, False])
    lp = inbatch_target_logprobs(users, items, cols, tau=0.1)
    loss = item_loss(lp, adv, sel, pairing="per_rollout")
    (gu,) = torch.autograd.grad(loss, users, retain_graph=True)
    ref = -(adv * sel * lp).mean()
    (want,) = torch.autograd.grad(ref, users, retain_graph=True)
    assert torch.allclose(gu, want, atol=1e-6)
    assert gu[1].abs().max().item() == 0.0  # not selected: no gradient
    faithful = item_loss(lp, adv, sel, pairing="faithful_to_code")
    (gf,) = torch.autograd.grad(faithful, users, retain_graph=True)
    ref_f = -(adv * sel).mean() * lp.mean()
    (want_f,) = torch.autograd.grad(ref_f, users)
    assert torch.allclose(gf, want_f, atol=1e-6)
    assert gf[1].abs().max().item() > 0.0  # every rollout gets the InfoNCE gradient


def test_inbatch_logprobs_are_infonce_over_targets() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    lp = inbatch_target_logprobs(users, items, torch.tensor([0, 1]), tau=1.0)
    want = math.log(math.e / (math.e + 1.0))
    assert lp.tolist() == pytest.approx([want, want])
    assert contrastive_loss(lp).item() == pytest.approx(-want)
    assert cosine_scores(users, items, 0.5).tolist() == [[2.0, 0.0], [0.0, 2.0]]


def test_catalogue_logprobs_use_fresh_targets_cached_others_and_mask_history() -> None:
    # columns = item ids 0..3; column 0 is the pad item. Unit vectors make cos = dot, tau = 1.
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    fresh = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0]], requires_grad=True)  # ids 1, 1 (repeat), 2
    ids = torch.tensor([1, 1, 2])
    targets = torch.tensor([1, 2])
    masked = torch.tensor([[True, False, False, True], [True, False, True, False]])  # row 1: target in history
    lp = catalogue_target_logprobs(users, table, fresh, ids, targets, masked, tau=1.0)
    # row 0 (u = e1): item 1 fresh (0,1) -> 0, item 2 fresh (0,-1) -> 0, item 3 masked: log(e^0 / 2)
    # row 1 (u = e2): item 1 fresh -> 1, item 2 (its target, in its history but kept) -> -1, item 3 cached -> 0
    want0 = math.log(0.5)
    want1 = -1.0 - math.log(math.e + math.exp(-1.0) + 1.0)
    assert lp.tolist() == pytest.approx([want0, want1], abs=1e-6)
    lp.sum().backward()
    assert fresh.grad is not None and users.grad is not None
    assert fresh.grad[1].abs().max().item() == 0.0  # a repeated id keeps its first vector only
    assert fresh.grad[0].abs().max().item() > 0.0 and fresh.grad[2].abs().max().item() > 0.0


def test_an_item_prior_adds_to_every_logit_in_both_negative_sets() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    prior = torch.tensor([math.log(3.0), 0.0])  # per column
    lp = inbatch_target_logprobs(users, items, torch.tensor([0, 1]), tau=1.0, prior=prior)
    # row 0: logits (1 + log 3, 0); row 1: (0 + log 3, 1)
    want0 = math.log(3 * math.e / (3 * math.e + 1.0))
    want1 = math.log(math.e / (3.0 + math.e))
    assert lp.tolist() == pytest.approx([want0, want1], abs=1e-6)
    # the catalogue form: columns = item ids 0..2 (0 = pad, masked); the prior of the target's column counts too
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    fresh = torch.tensor([[1.0, 0.0]])  # the step's one target, item 1, fresh
    masked = torch.tensor([[True, False, False]])
    cat_prior = torch.tensor([0.0, 0.5, 2.0])
    one = torch.tensor([1])
    lp = catalogue_target_logprobs(users[:1], table, fresh, one, one, masked, 1.0, cat_prior)
    # u = e1: item 1 -> 1 + 0.5, item 2 -> 0 + 2
    assert lp.item() == pytest.approx(1.5 - math.log(math.exp(1.5) + math.exp(2.0)), abs=1e-6)
    plain = catalogue_target_logprobs(users[:1], table, fresh, one, one, masked, 1.0)
    assert plain.item() == pytest.approx(1.0 - math.log(math.e + 1.0), abs=1e-6)


def test_catalogue_logprobs_pass_a_gradient_into_table_rows_that_carry_one() -> None:
    # an item head maps the whole table each step: its rows are current and their gradient trains the head
    table = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]], requires_grad=True)
    users = torch.tensor([[1.0, 0.0]])
    fresh = torch.tensor([[0.0, 1.0]])  # the target, item 2
    masked = torch.tensor([[True, False, False, False]])
    two = torch.tensor([2])
    catalogue_target_logprobs(users, table, fresh, two, two, masked, 1.0).sum().backward()
    assert table.grad is not None
    assert table.grad[1].abs().sum() > 0 and table.grad[3].abs().sum() > 0  # the negatives' rows
    assert table.grad[2].abs().sum() == 0 and table.grad[0].abs().sum() == 0  # the fresh target's, the pad's


def test_group_advantages_float32_noise_sums_to_zero_and_floor() -> None:
    r = torch.tensor([0.29153406620025635, 0.29153403639793396, 0.29153406620025635, 0.29153406620025635])
    adv = group_advantages(r, 4)
    assert abs(adv.sum().item()) < 1e-5  # float64: z-scores of pure rounding noise sum to 0
    assert adv.abs().max().item() > 0.5  # noise blown up to a large advantage (eps=1e-8 is comparable)
    floored = group_advantages(r, 4, std_floor=1e-6)
    assert floored.abs().max().item() < 0.05
