"""Dropout forward + backward: thinkrec's cheap-draw dropout vs ``torch.nn.functional.dropout``.

Shapes of a SASRec training step (batch 256, width 40, hidden 64, FFN 256, 2 heads); fp32 and bf16.

    python -m benchmarks.speed.dropout_speed --threads 2

Writes one record per shape and dtype with both times and their ratio (stdout and ``benchmarks/out/speed/``).
``THINKREC_DROPOUT=torch`` switches thinkrec to torch's dropout; this says what that costs on a machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.models.dropout import dropout

SHAPES = {"hidden": (256, 40, 64), "ffn": (256, 40, 256), "attention": (256, 2, 40, 40)}


def seconds(drop: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Mean seconds of one forward + backward of ``drop`` on ``x``."""
    grad = torch.randn_like(x)
    torch.autograd.grad(drop(x), x, grad)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(drop(x), x, grad)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--p", type=float, default=0.2)
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("speed", "dropout_speed", args.records)
    tune_allocator()  # as the CLI does
    torch.set_num_threads(args.threads)
    for name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(*shape, dtype=dtype, requires_grad=True)
            ref = seconds(lambda t: F.dropout(t, args.p, True), x, args.repeats)
            ours = seconds(lambda t: dropout(t, args.p), x, args.repeats)
            records.write(
                {
                    "shape": name,
                    "dims": list(shape),
                    "dtype": str(dtype).removeprefix("torch."),
                    "p": args.p,
                    "threads": args.threads,
                    "torch_ms": ref * 1e3,
                    "thinkrec_ms": ours * 1e3,
                    "ratio": ours / ref,
                }
            )


if __name__ == "__main__":
    main()
