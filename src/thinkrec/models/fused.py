"""Linear layers at inference: the faster of two float32 kernels for this CPU, GELU without an extra copy.

``torch.nn.functional.linear`` on the CPU (MKL's product) first copies the bias into every row of the
output and then accumulates the product into it. oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``,
the kernel torch's own CPU compiler emits) adds the bias and applies an optional GELU in the product's
epilogue. Which is faster depends on the CPU (``python -m benchmarks.speed.linear_speed``; numbers in
docs/benchmarks/speed.md): oneDNN's on AVX-512 CPUs, MKL's product plus a separate in-place GELU on
AVX2-only ones (where oneDNN's exact GELU epilogue costs more). So oneDNN is used where torch reports AVX-512
(``torch.backends.cpu.get_cpu_capability()``), MKL plus an in-place GELU elsewhere -- fixed per machine,
so a machine always computes the same numbers.

oneDNN builds (and caches, 1,024 by default) one primitive per product shape, about a megabyte each. The
number of rows of a product varies with the batch and the history length, so a server answering arbitrary
requests would build new primitives for ever, and the process grew by hundreds of megabytes per 10,000
requests. So the oneDNN path pads the rows up to one of at most 16 sizes per power of two
(:func:`bucket_rows`: a multiple of 8 up to 64 rows, at most 6.25% more rows above; the extra rows are
dropped from the output): a long-running process sees a bounded set of shapes.

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


def bucket_rows(rows: int) -> int:
    """The row count a oneDNN product of ``rows`` rows runs with: a multiple of 8 up to 64, above that a
    multiple of 1/16 of the power of two below ``rows`` (so at most 16 sizes per power of two)."""
    if rows <= 64:
        return -(-rows // 8) * 8
    step = 1 << (rows.bit_length() - 5)
    return -(-rows // step) * step


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None) -> torch.Tensor:
    assert _POINTWISE is not None
    width = x.shape[-1]
    flat = x.reshape(-1, width)
    rows = flat.shape[0]
    padded = bucket_rows(rows)
    if padded != rows:
        flat = torch.cat([flat, flat.new_zeros(padded - rows, width)])
    out: torch.Tensor = _POINTWISE(flat, weight, bias, "none" if gelu is None else "gelu", [], gelu or "")
    return out[:rows].view(*x.shape[:-1], out.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by ``F.gelu(., approximate=gelu)`` when ``gelu`` is given
    (``'none'`` = exact, ``'tanh'``)."""
    if fused_ok(x, weight):
        if ONEDNN and _POINTWISE is not None:
            return _onednn(x, weight, bias, gelu)
        y = F.linear(x, weight, bias)
        # nothing records the product for a backward pass, so GELU may overwrite it
        return y if gelu is None else torch.ops.aten.gelu_.default(y, approximate=gelu)
    y = F.linear(x, weight, bias)
    return y if gelu is None else F.gelu(y, approximate=gelu)
