"""The loss terms of ReaRec's objectives as pure functions of tensors (tested against hand computations).

Shapes: ``M`` trained prefixes, ``S = K+1`` steps (r_0..r_K), ``N`` items, ``d`` hidden size.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.nn import functional as F

from thinkrec.train.losses import softmax_cross_entropy


def _kl_chunk(users: torch.Tensor, items: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    """For rows ``users [c, S, d]``: log-probabilities and probabilities ``[c, S, N]`` of every step, and
    ``KL(p_j || p_k)`` ``[c, S, S]`` (zero diagonal)."""
    logp = torch.log_softmax((users @ items.T) * scale, dim=-1)
    p = logp.exp()
    kl = (p * logp).sum(-1)[:, :, None] - p @ logp.transpose(1, 2)
    kl = kl * ~torch.eye(kl.shape[1], dtype=torch.bool, device=kl.device)
    return logp, p, kl


class _ChunkedPairwiseKL(torch.autograd.Function):
    """:func:`pairwise_kl` computed a few rows at a time: no ``[M, S, N]`` tensor is ever kept (the backward
    pass recomputes each chunk's distributions)."""

    @staticmethod
    def forward(ctx: Any, users: torch.Tensor, items: torch.Tensor, scale: float, chunk: int) -> torch.Tensor:
        m, s, _ = users.shape
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, m, chunk):
            total += _kl_chunk(users[start : start + chunk], items, scale)[2].sum().double()
        ctx.save_for_backward(users, items)
        ctx.scale, ctx.chunk = scale, chunk
        return (total / (m * s * (s - 1))).to(users.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        users, items = ctx.saved_tensors
        m, s, d = users.shape
        coef = float(grad_out) * ctx.scale / (m * s * (s - 1))
        grad_users = torch.empty_like(users)
        grad_items = torch.zeros_like(items)
        for start in range(0, m, ctx.chunk):
            u = users[start : start + ctx.chunk]
            logp, p, kl = _kl_chunk(u, items, ctx.scale)
            # d/dl_j sum_{k != j} KL(p_j || sg p_k) = p_j * (S log p_j - sum_k log p_k - sum_{k != j} KL_jk)
            grad = p * (s * logp - logp.sum(1, keepdim=True) - kl.sum(-1, keepdim=True)) * coef
            grad_users[start : start + ctx.chunk] = grad @ items
            grad_items += grad.reshape(-1, grad.shape[-1]).T @ u.reshape(-1, d)
        return grad_users, grad_items, None, None


def pairwise_kl(
    users: torch.Tensor, items: torch.Tensor, temperature: float = 1.0, chunk: int | None = None
) -> torch.Tensor:
    """ERL's diversity: mean over prefixes and ordered step pairs ``j != k`` of ``KL(p_j || p_k)``.

    ``p_k = softmax(users[:, k] . items^T / temperature)`` over all items; ``users [M, S, d]`` and
    ``items [N, d]`` as the scorer compares them. Averaging both orders makes the term symmetric in the
    steps (no step is privileged).

    Gradient: only through the first argument ``p_j``; the reference ``log p_k`` is treated as a constant
    (stop-gradient). Every step is thus pushed away from where the other steps currently are, and for a
    fixed reference the term is bounded (``KL(p || q) <= -log min q``). Letting gradient reach ``log p_k``
    too would reward driving ``p_k`` to zero on the items ``p_j`` likes, which is unbounded
    (``log p_k -> -inf``): a direct path to the NaN collapse the paper warns about. The research code makes
    the same choice. Computed ``chunk`` rows at a time (default: ~3 MB of logits), so memory is
    ``O(chunk x S x N)`` instead of ``O(M x S x N)``. Returns 0 for fewer than 2 steps.
    """
    m, s, _ = users.shape
    if s < 2 or m == 0:
        return users.new_zeros((), dtype=torch.float32) + 0.0 * users.sum()
    rows = chunk or max(1, 3 * 2**20 // (4 * s * max(1, items.shape[0])))
    out: torch.Tensor = _ChunkedPairwiseKL.apply(  # type: ignore[no-untyped-call]
        users.float(), items.float(), 1.0 / temperature, rows
    )
    return out


def progressive_temperatures(steps: int, tau: float, alpha: float) -> torch.Tensor:
    """PRL's temperatures ``[K+1]``: step ``k`` is trained at ``tau * alpha^(K-k)`` (the last at ``tau``)."""
    exponents = torch.arange(steps, -1, -1, dtype=torch.float64)
    return (tau * alpha**exponents).float()


def per_step_cross_entropy(
    states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of every step ``[S]``: ``CE(softmax(states[:, k] . items^T / temperatures[k]), target)``
    averaged over prefixes (full softmax over the catalogue, computed in chunks: no ``[M, S, N]`` logits).

    ``states [M, S, d]`` and ``items [N, d]`` are already prepared by the scorer (e.g. normalised for
    cosine), ``targets [M]`` are 0-based item columns.
    """
    return torch.stack(
        [softmax_cross_entropy(states[:, k], items, targets, float(temperatures[k])) for k in range(states.shape[1])]
    )


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    valid: torch.Tensor,
    tau: float,
    similarity: Literal["cosine", "dot"] = "cosine",
) -> torch.Tensor:
    """InfoNCE with in-group negatives: anchor ``i`` of group ``g`` must pick candidate ``i`` of that group.

    ``anchors``/``candidates [G, n, d]``, ``valid [G, n]`` (False = no sample there). The logits are
    ``sim(a_gi, c_gj) / tau`` over the group's valid candidates; the loss is the mean of
    ``-log softmax(.)[i]`` over valid anchors. Gradient flows into both anchors and candidates.
    """
    if not bool(valid.any()):
        return anchors.new_zeros((), dtype=torch.float32)
    a, c = anchors.float(), candidates.float()
    if similarity == "cosine":
        a, c = F.normalize(a, dim=-1), F.normalize(c, dim=-1)
    logits = torch.einsum("gid,gjd->gij", a, c) / tau
    n = logits.shape[1]
    # Every row keeps its own diagonal, so no row is fully masked (no NaN even for invalid anchors).
    allowed = valid[:, None, :] | torch.eye(n, dtype=torch.bool, device=logits.device)[None]
    logp = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return -logp.diagonal(dim1=1, dim2=2)[valid].mean()
