"""The loss terms of ReaRec's objectives as pure functions of tensors (tested against hand computations).

Shapes: ``M`` trained prefixes, ``S = K+1`` steps (r_0..r_K), ``N`` items, ``d`` hidden size.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.nn import functional as F

from thinkrec.losses.softmax import softmax_cross_entropy, wants_gradient


class _ChunkedPairwiseKL(torch.autograd.Function):
    """:func:`pairwise_kl` computed a few rows at a time: no ``[M, S, N]`` tensor is ever kept. As in
    :func:`~thinkrec.losses.softmax.softmax_cross_entropy`, each chunk's distributions are formed once and,
    when a gradient will be needed, turned into the gradient right away (the loss is a scalar: the backward
    pass only scales the stored gradients)."""

    @staticmethod
    def forward(
        ctx: Any, users: torch.Tensor, items: torch.Tensor, scale: float, chunk: int, with_grad: bool
    ) -> torch.Tensor:
        m, s, d = users.shape
        n = items.shape[0]
        scaled_items = items * scale
        total = torch.zeros((), dtype=torch.float64, device=users.device)
        grad_users = users.new_empty(users.shape) if with_grad else None
        grad_items = torch.zeros_like(items) if with_grad else None
        for start in range(0, m, chunk):
            u = users[start : start + chunk]
            c = u.shape[0]
            logp = u @ scaled_items.T  # [c, S, N] logits, made log-probabilities in place (one exp per logit)
            logp.sub_(logp.amax(dim=-1, keepdim=True))
            p = logp.exp()
            mass = p.sum(dim=-1, keepdim=True)
            p.div_(mass)
            logp.sub_(mass.log_())
            cross = p @ logp.transpose(1, 2)  # [c, S, S]: sum_i p_j(i) log p_k(i)
            kl = cross.diagonal(dim1=1, dim2=2)[:, :, None] - cross  # KL(p_j || p_k), exactly 0 on the diagonal
            total += kl.sum().double()
            if grad_users is not None and grad_items is not None:
                # d/dl_j sum_{k != j} KL(p_j || sg p_k) = p_j * (S log p_j - sum_k log p_k - sum_{k != j} KL_jk)
                reference = logp.sum(1, keepdim=True)
                grad = logp.mul_(s).sub_(reference).sub_(kl.sum(-1, keepdim=True)).mul_(p).view(c * s, n)
                grad_users[start : start + c] = (grad @ scaled_items).view(c, s, d)
                grad_items.addmm_(grad.T.to(items.dtype), u.reshape(c * s, d))  # bf16 under autocast
        norm = m * s * (s - 1)
        if grad_users is not None and grad_items is not None:
            grad_users /= norm
            grad_items *= scale / norm
            ctx.save_for_backward(grad_users, grad_items)
        return (total / norm).to(users.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_users, grad_items = ctx.saved_tensors
        return grad_users * grad_out, grad_items * grad_out, None, None, None


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
    users, items = users.float(), items.float()
    out: torch.Tensor = _ChunkedPairwiseKL.apply(  # type: ignore[no-untyped-call]
        users, items, 1.0 / temperature, rows, wants_gradient(users, items)
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
