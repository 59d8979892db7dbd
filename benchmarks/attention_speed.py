"""Inference attention at SASRec evaluation shapes: torch's fused kernel vs weights formed explicitly.

Times ``F.scaled_dot_product_attention`` against two batched products and a softmax
(``thinkrec.models.transformer.formed_attention``, what ``attend`` uses at inference, except for one float32
query per row) on the shapes
of an evaluation pass (128 histories x 2 heads x 50 positions x 32 dims, and the final block's last-column
query), laid out as the block's projection produces them, float32 and bf16, one JSON line per case::

    python benchmarks/attention_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from thinkrec.models.transformer import formed_attention


def best_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Fastest of ``repeats`` rounds of 20 calls, in ms per call (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        best = min(best, (time.perf_counter() - t0) / 20 * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, h, t, hd = args.rows, 2, args.width, 32
    pad = torch.rand(b, 1, 1, t) < 0.2
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    mask = (causal & ~pad) | torch.eye(t, dtype=torch.bool)[None, None]
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            for queries in (t, 1):
                # the layout the block produces: views of one [B, T, 3, h, hd] projection
                q, k, v = torch.randn(b, t, 3, h, hd, dtype=dtype).permute(2, 0, 3, 1, 4)
                q = q[:, :, -queries:]
                m = mask[..., -queries:, :]
                kernel = best_ms(
                    lambda q=q, k=k, v=v, m=m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), args.repeats
                )
                explicit = best_ms(lambda q=q, k=k, v=v, m=m: formed_attention(q, k, v, m), args.repeats)
                row = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "shape": [b, h, queries, t, hd],
                    "threads": args.threads,
                    "fused_kernel_ms": kernel,
                    "formed_ms": explicit,
                    "formed_over_kernel": explicit / kernel,
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
