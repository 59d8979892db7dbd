"""The two batched products of one reasoning step, with the folded cache in the CPU's cache and out of it.

A reasoning step (``Block.extend_slot``) reads each layer's folded cache ``[rows, S, d]`` twice: the scores
(``[rows, heads, d] x [rows, d, S]``) and the mix (``[rows, heads, S] x [rows, S, d]``). This times both on
the shapes of an ML-100K evaluation chunk (1,024 rows, 50 items + 2 reasoning columns, d = 64, 2 heads),
once on one cache tensor reused ("hot": it stays in the last-level cache) and once cycling through enough
tensors to leave it ("cold", as when each step meets a new chunk), next to a plain read of the same tensor
(``sum``). If the products were memory-bound, hot and cold would both be close to the read.

    python benchmarks/reasoning_products.py --threads 2

Prints one JSON line per operation (median milliseconds of ``--rounds`` rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--columns", type=int, default=52)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--tensors", type=int, default=12, help="cache tensors cycled through for 'cold'")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, columns, hidden, heads = args.rows, args.columns, args.hidden, args.heads
    caches = [torch.randn(rows, columns, hidden) for _ in range(args.tensors)]
    query = torch.randn(rows, heads, hidden)
    bias = torch.zeros(rows, 1, columns)
    probs = torch.softmax(torch.randn(rows, heads, columns), dim=-1)
    ops: dict[str, Callable[[torch.Tensor], object]] = {
        "scores (baddbmm)": lambda cache: torch.baddbmm(bias, query, cache.transpose(1, 2)),
        "mix (bmm)": lambda cache: torch.bmm(probs, cache),
        "read (sum)": lambda cache: cache.sum(),
    }

    def median_ms(op: Callable[[torch.Tensor], object], hot: bool) -> float:
        for cache in caches:
            op(cache)
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for cache in caches:
                op(caches[0] if hot else cache)
            seconds.append((time.perf_counter() - start) / len(caches))
        return statistics.median(seconds) * 1e3

    for name, op in ops.items():
        hot, cold = median_ms(op, True), median_ms(op, False)
        print(
            json.dumps(
                {
                    "op": name,
                    "rows": rows,
                    "columns": columns,
                    "hidden": hidden,
                    "heads": heads,
                    "threads": args.threads,
                    "cache_mb": rows * columns * hidden * 4 / 2**20,
                    "hot_ms": hot,
                    "cold_ms": cold,
                }
            )
        )


if __name__ == "__main__":
    main()
