"""RecPO's mathematics on plain tensors: rewards, advantages, the top-k mask and both losses.

Everything here is model-free and deterministic, so every piece is unit-tested on toy tensors
(``tests/test_llm_recpo.py``). Shapes follow the trainer's layout: ``R = B * G`` rollouts, user-major
(rows ``g*G .. g*G+G-1`` belong to user ``g``).

Two pairings of advantages with rows are available (:data:`LossPairing`):

- ``"per_rollout"`` (default, the paper's RecPO): rollout ``i``'s advantage weights rollout ``i``'s own
  token ratios and its own item ratio. The token term is averaged over the mini-batch's completion tokens
  (DAPO-style); the released code's extra division by the mini-batch size is not kept.
- ``"faithful_to_code"``: the released code's double ``unsqueeze`` (r2ec.md §4.6): every advantage meets every
  row, so the token gradient is ``-mean(A) / N_tok * sum(grad log pi)`` -- about zero when a mini-batch is one
  z-scored group -- and the item gradient is ``-mean(A') * mean(grad log p)`` over all rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from thinkrec.eval.metrics import target_ranks

LossPairing = Literal["per_rollout", "faithful_to_code"]
AdvantageKind = Literal["gaussian", "leave_one_out", "leave_one_out_code"]


# ------------------------------------------------------------------------------------------- pooling/spans
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of every row (``[B, L]`` 0/1 mask -> ``[B]``).

    Works for right padding, left padding and no padding, and never looks at token ids, so a pad id that
    also occurs inside prompts (SmolLM2's ``<|im_end|>``, r2ec.md §8.3) cannot move the pooling position.
    A row with no real token gives 0.
    """
    mask = attention_mask.to(torch.long)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=1)


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of the last real token of every row (``[B, L, d]`` -> ``[B, d]``)."""
    index = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def find_subsequence_from_right(ids: list[int], pattern: list[int]) -> int:
    """Start of the last occurrence of ``pattern`` in ``ids``, or -1."""
    n = len(pattern)
    if n == 0:
        return -1
    for start in range(len(ids) - n, -1, -1):
        if ids[start : start + n] == pattern:
            return start
    return -1


def completion_span(ids: list[int], generation_prompt: list[int], end_of_turn: list[int]) -> tuple[int, int]:
    """``[start, end)`` of the assistant completion in a rendered sequence (r2ec.md §3.6).

    The completion starts right after the last occurrence of the generation-prompt tokens (e.g. ChatML's
    ``<|im_start|>assistant\\n``) and ends before the first end-of-turn pattern after it, or at the end of
    the sequence when the turn was continued (no end-of-turn). Raises ``ValueError`` without a prompt.
    """
    start = find_subsequence_from_right(ids, generation_prompt)
    if start < 0:
        raise ValueError("the generation prompt does not occur in the sequence")
    begin = start + len(generation_prompt)
    end = len(ids)
    if end_of_turn:
        for pos in range(begin, len(ids) - len(end_of_turn) + 1):
            if ids[pos : pos + len(end_of_turn)] == end_of_turn:
                end = pos
                break
    return begin, end


# ------------------------------------------------------------------------------------------------- scoring
def cosine_scores(users: torch.Tensor, items: torch.Tensor, tau: float) -> torch.Tensor:
    """``cos(users[i], items[j]) / tau`` (``[R, d]`` x ``[N, d]`` -> ``[R, N]``)."""
    return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / tau


def mask_scores(scores: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """``scores`` with the ``True`` entries of ``masked`` (same shape) set to ``-inf``."""
    return scores.masked_fill(masked, float("-inf"))


def history_mask(
    histories: list[list[int]], n_columns: int, mask_pad: bool = True, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean ``[len(histories), n_columns]``; column = item id. Column 0 (the pad item) is masked too
    when ``mask_pad`` (our decision for r2ec.md §9.10: the pad item is never a candidate)."""
    out = torch.zeros(len(histories), n_columns, dtype=torch.bool)
    for row, items in enumerate(histories):
        if items:
            out[row, torch.as_tensor(items, dtype=torch.long)] = True
    if mask_pad:
        out[:, 0] = True
    return out.to(device)


@dataclass(frozen=True)
class Rewards:
    """Per-rollout reward parts: ``reward = (1 - beta) * ndcg + beta * softmax`` (+ a format bonus)."""

    reward: torch.Tensor  # float [R]
    ndcg: torch.Tensor  # float [R]: 1 / log2(rank + 2) if rank < cutoff else 0
    softmax: torch.Tensor  # float [R]: softmax probability of the target over the masked catalogue
    ranks: torch.Tensor  # int64 [R], 0-based pessimistic ranks


def ndcg_reward(ranks: torch.Tensor, cutoff: int) -> torch.Tensor:
    """NDCG with one relevant item from 0-based ranks: ``1/log2(rank+2)`` if ``rank < cutoff`` else 0."""
    r = ranks.to(torch.float64)
    return torch.where(ranks < cutoff, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).to(torch.float32)


def fused_reward(
    scores: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    beta: float,
    cutoff: int,
    bonus: torch.Tensor | None = None,
) -> Rewards:
    """The fused reward of r2ec.md §4.3 step 2 over the full catalogue with ``masked`` entries removed.

    Args:
        scores: ``[R, N]`` similarity logits (cosine / tau), column = item id.
        targets: ``[R]`` target item ids (column indices).
        masked: ``[R, N]`` bool, ``True`` for the user's history (and the pad column).
        beta: weight of the softmax term (the code's ``reward_softmax_weight``, 0.05).
        cutoff: NDCG cut-off (1000 in the code; ``min(1000, N)`` on small catalogues).
        bonus: ``[R]`` added to the reward as it is (the format reward; not part of ``ndcg``/``softmax``).
    """
    with torch.no_grad():
        s = mask_scores(scores.detach().float(), masked)
        ranks = target_ranks(s, targets)
        ndcg = ndcg_reward(ranks, cutoff)
        prob = torch.softmax(s, dim=1).gather(1, targets[:, None]).squeeze(1)
        reward = (1.0 - beta) * ndcg + beta * prob
        if bonus is not None:
            reward = reward + bonus.to(reward.device, reward.dtype)
    return Rewards(reward=reward, ndcg=ndcg, softmax=prob, ranks=ranks)


# ------------------------------------------------------------------------------------------- advantages
def format_bonus(hit_marker: list[bool], weight: float) -> torch.Tensor:
    """The format reward: ``weight`` for each rollout that wrote the end marker itself (within the token
    budget -- a rollout cut at the budget had the marker appended and gets 0), else 0."""
    return torch.tensor([weight if hit else 0.0 for hit in hit_marker], dtype=torch.float32)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    kind: AdvantageKind = "gaussian",
    eps: float = 1e-8,
    std_floor: float = 0.0,
) -> torch.Tensor:
    """Advantages normalised within each user's group of ``group_size`` consecutive rollouts.

    Computed in float64, so a group's z-scores sum to zero even when its rewards differ only by float32
    rounding (in float32 the mean itself rounds and one rollout can get an advantage of -1.1 out of noise).

    - ``gaussian`` (the code's default): ``(r - mean) / (max(std, std_floor) + eps)`` with the unbiased std;
      ``std_floor = 0`` is the code's formula, a small floor keeps reward noise from being blown up to
      unit-size advantages;
    - ``leave_one_out``: the standard RLOO baseline ``r - mean(others) = G/(G-1) * (r - mean)``;
    - ``leave_one_out_code``: the released code's ``r * (1 + 1/G) - mean`` (r2ec.md §9.12), for comparison.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries")
    r = rewards.detach().to(torch.float64).view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if kind == "gaussian":
        std = r.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
        adv = (r - mean) / (std.clamp(min=std_floor) + eps)
    elif kind == "leave_one_out":
        adv = (r - mean) * (group_size / max(1, group_size - 1))
    elif kind == "leave_one_out_code":
        adv = r * (1.0 + 1.0 / group_size) - mean
    else:
        raise ValueError(f"unknown advantage kind {kind!r}")
    return adv.reshape(-1).to(torch.float32)


def topk_mask(advantages: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """``True`` for the ``k`` rollouts with the highest advantage in every group (the code's
    ``relabel_mask``); ties go to the earlier rollout."""
    adv = advantages.detach().view(-1, group_size)
    k = min(k, group_size)
    # a stable descending sort: equal advantages keep rollout order
    order = torch.sort(adv, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(adv, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.reshape(-1)


# ------------------------------------------------------------------------------------------------ losses
def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """PPO's ``min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)`` (broadcasting as given)."""
    return torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


def token_policy_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    pairing: LossPairing = "per_rollout",
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped token-level policy loss on completion tokens of one mini-batch.

    Args:
        logprobs: ``[R, T]`` log-probabilities of the sampled completion tokens (with gradient).
        mask: ``[R, T]`` 1 for real completion tokens, 0 for padding.
        advantages: ``[R]`` (no gradient).
        old_logprobs: the behaviour policy's log-probs; ``None`` = the current policy detached (the code's
            choice, so the ratio is 1 in value and the clip never activates, r2ec.md §9.4).
        pairing: see the module docstring.
    """
    mask = mask.to(logprobs.dtype)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logprobs - old)
    adv = advantages.detach().to(logprobs.dtype)
    n_tok = mask.sum().clamp(min=1.0)
    if pairing == "per_rollout":
        obj = clipped_objective(ratio, adv[:, None], eps_low, eps_high)  # [R, T]
        return -(obj * mask).sum() / n_tok
    if pairing == "faithful_to_code":
        # adv.unsqueeze(1).unsqueeze(1) against [R, T] broadcasts to [R, R, T] (r2ec.md §4.6)
        obj = clipped_objective(ratio[None, :, :], adv[:, None, None], eps_low, eps_high)
        return -(obj * mask[None]).sum() / (n_tok * logprobs.shape[0])
    raise ValueError(f"unknown pairing {pairing!r}")


def inbatch_target_logprobs(
    users: torch.Tensor, items: torch.Tensor, columns: torch.Tensor, tau: float, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """``log softmax_j(cos(u_r, v_j) / tau + prior_j)`` at column ``columns[r]``: each rollout's own target
    among the batch's target items (``[R, d]``, ``[B, d]``, ``[R]`` -> ``[R]``; ``prior [B]``, none = 0)."""
    logits = cosine_scores(users, items, tau)
    if prior is not None:
        logits = logits + prior
    return torch.log_softmax(logits, dim=1).gather(1, columns[:, None]).squeeze(1)


def catalogue_target_logprobs(
    users: torch.Tensor,
    table: torch.Tensor,
    items: torch.Tensor,
    item_ids: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    tau: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log softmax`` over the whole catalogue at each row's target (``[R]``), of ``cos / tau`` plus
    ``prior [N]`` (one value per column; none = 0).

    Every column scores against the cached item ``table`` (``[N, d]``, column = item id; its rows carry a
    gradient only where the caller made them, as through an item head) except
    the step's targets ``item_ids [B]``, which score against their fresh vectors ``items [B, d]`` (with
    gradients; a repeated id keeps its first vector). ``masked [R, N]`` columns (history, pad) are removed;
    the row's own ``targets [R]`` column never is.
    """
    device = users.device
    logits = cosine_scores(users, table, tau)
    ids, inverse = torch.unique(item_ids, return_inverse=True)
    first = torch.full((len(ids),), len(item_ids), dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(item_ids), device=device), reduce="amin")
    logits = logits.index_copy(1, ids, cosine_scores(users, items[first], tau))
    if prior is not None:
        logits = logits + prior
    keep = torch.zeros_like(masked)
    keep[torch.arange(len(targets), device=device), targets] = True
    logits = mask_scores(logits, masked & ~keep)
    return torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)


def item_loss(
    target_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    selected: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    pairing: LossPairing = "per_rollout",
) -> torch.Tensor:
    """Advantage-weighted clipped contrastive loss on the recommendation head (r2ec.md §4.4).

    ``ratio_r = p_r / sg(p_r)``; ``A'_r = A_r * selected_r`` (the top-k rollouts of each group).
    ``per_rollout``: ``-mean_r min(ratio_r A'_r, clip(ratio_r) A'_r)``; ``faithful_to_code``: the
    ``[R, R, 1]`` broadcast of the released code (gradient ``-mean(A') * mean_r grad log p_r``).
    """
    ratio = torch.exp(target_logprobs - target_logprobs.detach())
    adv = (advantages.detach() * selected.to(advantages.dtype)).to(target_logprobs.dtype)
    if pairing == "per_rollout":
        return -clipped_objective(ratio, adv, eps_low, eps_high).mean()
    if pairing == "faithful_to_code":
        return -clipped_objective(ratio[:, None], adv[:, None, None], eps_low, eps_high).mean()
    raise ValueError(f"unknown pairing {pairing!r}")


def contrastive_loss(target_logprobs: torch.Tensor) -> torch.Tensor:
    """Plain in-batch InfoNCE (the no-reasoning baseline): ``-mean_r log p_r``."""
    return -target_logprobs.mean()


def selective_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[tokens]`` per position (``[..., V]``, ``[...]`` -> ``[...]``)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
