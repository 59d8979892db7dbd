"""Full-catalogue softmax cross-entropy computed in row chunks, never materialising the ``[M, N]`` logits.

The plain way (``F.cross_entropy(users @ items.T, targets)``) writes and re-reads an ``M x N`` logits
matrix and its gradient: for 2,000 targets and 12,000 items that is ~100 MB per pass, which on a CPU costs
more than the matrix products themselves. Here the forward pass keeps only the per-row log-sum-exp, and
the backward pass recomputes each chunk's logits (one extra ``[c, d] x [d, N]`` product) to form the
softmax gradient in cache-sized pieces. Memory is ``O(chunk x N)`` instead of ``O(M x N)``.
"""

from __future__ import annotations

from typing import Any

import torch

from thinkrec.blocking import rows_per_block


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, scale: float, chunk: int
    ) -> torch.Tensor:
        m = users.shape[0]
        acc = torch.promote_types(users.dtype, torch.float32)  # accumulate in >= fp32
        lse = torch.empty(m, dtype=acc)
        for start in range(0, m, chunk):
            logits = (users[start : start + chunk] @ items.T).to(acc) * scale
            lse[start : start + chunk] = torch.logsumexp(logits, dim=1)
        target_logits = (users.to(acc) * items[targets].to(acc)).sum(dim=1) * scale
        ctx.save_for_backward(users, items, targets, lse)
        ctx.scale = scale
        ctx.chunk = chunk
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        users, items, targets, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        m = users.shape[0]
        coef = float(grad_out) * scale / m
        grad_users = torch.empty_like(users)
        grad_items = torch.zeros_like(items)
        rows = torch.arange(chunk)
        for start in range(0, m, chunk):
            u = users[start : start + chunk]
            c = u.shape[0]
            probs = torch.exp((u @ items.T).to(lse.dtype) * scale - lse[start : start + c, None])
            probs[rows[:c], targets[start : start + c]] -= 1.0
            probs = (probs * coef).to(users.dtype)
            grad_users[start : start + c] = probs @ items
            grad_items.addmm_(probs.T, u)
        return grad_users, grad_items, None, None, None


def softmax_cross_entropy(
    users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(users @ items.T / temperature)`` against ``targets`` (0-based columns).

    Equal (to float rounding) to ``F.cross_entropy(users @ items.T / temperature, targets)``, with
    gradients for ``users`` and ``items``; memory stays bounded by ``chunk`` rows of logits.
    """
    if users.shape[0] == 0:
        return users.sum() * 0.0
    out: torch.Tensor = _ChunkedSoftmaxCE.apply(  # type: ignore[no-untyped-call]
        users, items, targets, 1.0 / temperature, chunk or rows_per_block(items.shape[0])
    )
    return out
