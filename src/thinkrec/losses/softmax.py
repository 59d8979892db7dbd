"""Full-catalogue softmax cross-entropy computed in row chunks, never materialising the ``[M, N]`` logits.

The plain way (``F.cross_entropy(users @ items.T, targets)``) writes and re-reads an ``M x N`` logits
matrix and its gradient: for 2,000 targets and 12,000 items that is ~100 MB per pass, which on a CPU costs
more than the matrix products themselves. Here each cache-sized chunk of logits is formed once: its
log-sum-exp gives the loss and, when a gradient will be needed, the same chunk becomes the softmax
gradient (``softmax - one_hot``) at once, multiplied into the gradients of the users and items while it
is still in cache. The loss is a scalar, so its gradient is these tensors times the incoming scalar; the
backward pass only scales them (no logits are recomputed). Memory is ``O(chunk x N)`` plus the
gradients' own size (``users`` and ``items``).
"""

from __future__ import annotations

from typing import Any

import torch

from thinkrec.blocking import rows_per_block


def wants_gradient(*tensors: torch.Tensor) -> bool:
    """Whether autograd will ask for a gradient of any of ``tensors`` (a loss computed under
    ``torch.no_grad`` or of constants skips the gradient work done in the forward pass)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        users: torch.Tensor,
        items: torch.Tensor,
        targets: torch.Tensor,
        scale: float,
        chunk: int,
        with_grad: bool,
    ) -> torch.Tensor:
        m = users.shape[0]
        acc = torch.promote_types(users.dtype, torch.float32)  # accumulate in >= fp32
        scaled_items = items * scale  # logits = users . (scale * items)
        lse = torch.empty(m, dtype=acc, device=users.device)
        grad_users = users.new_empty(users.shape) if with_grad else None
        grad_items = torch.zeros_like(items) if with_grad else None
        rows = torch.arange(chunk, device=users.device)
        for start in range(0, m, chunk):
            u = users[start : start + chunk]
            c = u.shape[0]
            logits = (u @ scaled_items.T).to(acc)
            if grad_users is None or grad_items is None:
                lse[start : start + c] = torch.logsumexp(logits, dim=1)
                continue
            # the log-sum-exp from exps that are kept for the gradient (torch.logsumexp's are thrown away)
            peak = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(peak).exp_()
            total = probs.sum(dim=1, keepdim=True)
            lse[start : start + c] = (peak + total.log())[:, 0]
            # d loss_i / d logits_i = softmax_i - one_hot(target_i), formed in place
            probs.div_(total)
            probs[rows[:c], targets[start : start + c]] -= 1.0
            probs = probs.to(users.dtype)
            grad_users[start : start + c] = probs @ scaled_items
            grad_items.addmm_(probs.T.to(items.dtype), u.to(items.dtype))  # no-ops unless mixed dtypes
        target_logits = (users.to(acc) * scaled_items[targets].to(acc)).sum(dim=1)
        if grad_users is not None and grad_items is not None:
            grad_users /= m
            grad_items *= scale / m
            ctx.save_for_backward(grad_users, grad_items)
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_users, grad_items = ctx.saved_tensors
        return grad_users * grad_out, grad_items * grad_out, None, None, None, None


def softmax_cross_entropy(
    users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(users @ items.T / temperature)`` against ``targets`` (0-based columns).

    Equal (to float rounding) to ``F.cross_entropy(users @ items.T / temperature, targets)``, with
    gradients for ``users`` and ``items``; memory stays bounded by ``chunk`` rows of logits. The gradient
    is computed in the forward pass (see the module docstring), so the result supports one backward pass
    (no double backward).
    """
    if users.shape[0] == 0:
        return users.sum() * 0.0
    out: torch.Tensor = _ChunkedSoftmaxCE.apply(  # type: ignore[no-untyped-call]
        users,
        items,
        targets,
        1.0 / temperature,
        chunk or rows_per_block(items.shape[0]),
        wants_gradient(users, items),
    )
    return out
