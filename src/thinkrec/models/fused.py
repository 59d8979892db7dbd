"""Linear layers at inference: the faster of two float32 kernels for this CPU, GELU without an extra copy.

``torch.nn.functional.linear`` on the CPU (MKL's product) first copies the bias into every row of the
output and then accumulates the product into it. oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``,
the kernel torch's own CPU compiler emits) adds the bias and applies an optional GELU in the product's
epilogue. Which is faster depends on the CPU (``python -m benchmarks.speed.linear_speed``; numbers in
docs/benchmarks/speed.md): oneDNN's on AVX-512 CPUs, MKL's product plus a separate in-place GELU on
AVX2-only ones (where oneDNN's exact GELU epilogue costs more). So oneDNN is used where torch reports AVX-512
(``torch.backends.cpu.get_cpu_capability()``), MKL plus an in-place GELU elsewhere -- fixed per machine,
so a machine always computes the same numbers.

Either fast path is used only when nothing needs gradients and the inputs are float32 outside autocast;
everything else (training, bf16 autocast) takes the plain ops, so results are the same up to
floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F


def _pointwise() -> Callable[..., Any] | None:
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return None
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    return op if callable(op) else None


_POINTWISE = _pointwise()


def prefers_onednn() -> bool:
    """Whether this CPU runs the 64-wide products of SASRec faster in oneDNN than in MKL (AVX-512 CPUs)."""
    return _POINTWISE is not None and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


ONEDNN = prefers_onednn()  # tests switch it to cover both paths


def fused_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes an inference path (oneDNN, or MKL with an in-place GELU)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by ``F.gelu(., approximate=gelu)`` when ``gelu`` is given
    (``'none'`` = exact, ``'tanh'``)."""
    if fused_ok(x, weight):
        if ONEDNN and _POINTWISE is not None:
            out: torch.Tensor = _POINTWISE(x, weight, bias, "none" if gelu is None else "gelu", [], gelu or "")
            return out
        y = F.linear(x, weight, bias)
        # nothing records the product for a backward pass, so GELU may overwrite it
        return y if gelu is None else torch.ops.aten.gelu_.default(y, approximate=gelu)
    y = F.linear(x, weight, bias)
    return y if gelu is None else F.gelu(y, approximate=gelu)
