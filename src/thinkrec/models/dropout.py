"""Dropout that draws its random numbers cheaply on the CPU.

``torch.nn.Dropout`` on the CPU draws one Bernoulli number per element, a large share of a SASRec-sized
training step. Here every 64-bit draw of the default
generator feeds four elements: each element keeps its value when its 16-bit lane is at or above a threshold.
The drop probability is therefore ``p`` rounded to a multiple of 1/65536 (0.2 becomes 0.199997), and kept
values are scaled by ``1 / (1 - p_rounded)`` so the expectation is unchanged. The default generator is used,
so ``torch.manual_seed`` makes the masks reproducible. Its cost against ``torch.nn.functional.dropout``
is measured by ``python -m benchmarks.speed.dropout_speed``. Tensors off the CPU take torch's dropout;
``THINKREC_DROPOUT=torch`` in the environment switches to it on the CPU too (for A/B comparisons of
training quality).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LANES = 65536  # values of a 16-bit lane


def kept(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask of the elements to keep (drop probability ``p`` rounded to 1/65536), drawn from the
    default generator: four elements per 64-bit draw."""
    n = math.prod(shape)
    dropped = round(p * LANES)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over -32768..32767
    return lanes >= dropped - LANES // 2


def drop_scale(p: float) -> float:
    """The factor ``1 / (1 - p)`` of kept elements, for ``p`` rounded to 1/65536 as :func:`kept` does."""
    dropped = round(p * LANES)
    return LANES / (LANES - dropped)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1 / (1 - p)`` where an element is kept, 0 where it is dropped (drop probability ``p`` in 1/65536)."""
    return kept(shape, p, device).to(dtype) * drop_scale(p)


class _Dropout(torch.autograd.Function):
    # The mask is kept as booleans and applied as ``x * scale * keep``: two passes over ``x`` instead of
    # three (cast, scale, multiply), a quarter of the memory saved for backward, and the same numbers.
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = kept(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = drop_scale(p)
        return x.mul(ctx.scale).mul_(keep)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(ctx.scale).mul_(keep), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element with probability ``p`` (in steps of 1/65536) and rescale the rest; identity when not
    ``training`` or ``p == 0``."""
    if not training or p == 0.0:
        return x
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    # torch's own dropout: off the CPU (where its fused kernel is the cheap one), or for A/B comparisons
    if x.device.type != "cpu" or os.environ.get("THINKREC_DROPOUT") == "torch":
        return F.dropout(x, p, True)
    out: torch.Tensor = _Dropout.apply(x, p)  # type: ignore[no-untyped-call]
    return out


class Dropout(nn.Module):
    """Drop-in for :class:`torch.nn.Dropout` using :func:`dropout` (same ``p`` attribute, no parameters)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
