"""Inference linear layers at SASRec evaluation shapes: oneDNN's fused kernel vs MKL's product.

Times the two float32 paths of ``thinkrec.models.fused.linear`` on the products of one evaluation pass of
a 64-wide SASRec (``--tokens`` history positions: the query/key/value, output and two feed-forward
projections, the first with its exact GELU): oneDNN's ``_linear_pointwise`` (bias and GELU in the
epilogue) and MKL's ``F.linear`` followed by an in-place GELU. Interleaved rounds, fastest of
``--repeats``; one record per shape and a summary record with the pass's total for each kernel and which
one ``thinkrec`` uses on this CPU (stdout and ``benchmarks/out/speed/``)::

    python -m benchmarks.speed.linear_speed --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch.nn import functional as F

from benchmarks import harness
from thinkrec.models import fused

# (inner, outer, gelu) of one SASRec block at hidden 64, FFN 256
SHAPES = [(64, 192, None), (64, 64, None), (64, 256, "none"), (256, 64, None)]


def mkl_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: str | None) -> torch.Tensor:
    y = F.linear(x, weight, bias)
    return y if gelu is None else torch.ops.aten.gelu_.default(y, approximate=gelu)


def fastest(fn: Callable[[], object], repeats: int, inner: int = 20) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=6400, help="rows of each product (an evaluation pass)")
    parser.add_argument("--repeats", type=int, default=15)
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("speed", "linear_speed", args.records)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pointwise = fused._POINTWISE
    if pointwise is None:
        raise SystemExit("this torch build has no oneDNN linear; nothing to compare")
    totals = {"onednn_ms": 0.0, "mkl_ms": 0.0}
    with torch.no_grad():
        for inner, outer, gelu in SHAPES:
            x, weight, bias = torch.randn(args.tokens, inner), torch.randn(outer, inner) * 0.1, torch.randn(outer)

            onednn = partial(pointwise, x, weight, bias, "none" if gelu is None else "gelu", [], gelu or "")
            mkl = partial(mkl_linear, x, weight, bias, gelu)

            times = {"onednn_ms": float("inf"), "mkl_ms": float("inf")}
            for _ in range(2):  # interleave the two kernels twice, keep each one's best
                for name, fn in (("onednn_ms", onednn), ("mkl_ms", mkl)):
                    times[name] = min(times[name], fastest(fn, args.repeats) * 1e3)
            flops = 2 * args.tokens * inner * outer
            for name, t in times.items():
                totals[name] += t
            records.write(
                {
                    "shape": [args.tokens, inner, outer],
                    "gelu": gelu,
                    "threads": args.threads,
                    **times,
                    "onednn_gflops": flops / times["onednn_ms"] / 1e6,
                    "mkl_gflops": flops / times["mkl_ms"] / 1e6,
                }
            )
    records.write(
        {
            "kind": "summary",
            "summary": "one block's products",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **totals,
            "mkl_over_onednn": totals["mkl_ms"] / totals["onednn_ms"],
            "thinkrec_uses": "onednn" if fused.ONEDNN else "mkl",
        }
    )


if __name__ == "__main__":
    main()
