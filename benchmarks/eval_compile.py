"""What a compiler would give the full-catalogue evaluation: eager vs ``torch.compile`` on the same model.

The evaluation of ``benchmarks/speed_engine.py`` (ML-100K, leave-one-out test users, the same SASRec size,
untrained weights: time does not depend on them) is timed in eager mode, then with the backbone's forward
compiled by TorchInductor, then in eager mode again, in one process. Reports the compile time (the first
compiled evaluation, which compiles one graph per pass shape), the fastest and median of ``--repeats``
timed evaluations per mode, and whether the compiled ranks equal the eager ones. thinkrec does not compile:
this measures what the fused element-wise kernels of a compiler are worth against what they cost.

    python benchmarks/eval_compile.py --threads 2 --repeats 9

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, cast

import numpy as np
import torch

from speed_engine import DATASETS, SAME
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.eval.evaluator import EvalResult, evaluate
from thinkrec.eval.protocol import describe_protocol
from thinkrec.runs import build, load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="timed evaluations per mode")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic shapes (one graph)")
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    cfg = load_config(DATASETS["ml100k"][0], [*SAME, "train.progress=false"])
    dataset, split = load_data(cfg)
    torch.manual_seed(0)
    model = build(cfg, dataset.n_items)
    model.eval()

    def timed() -> tuple[list[float], EvalResult]:
        seconds = []
        result = evaluate(model, split, split.test, cfg.eval)
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate(model, split, split.test, cfg.eval)
            seconds.append(time.perf_counter() - start)
        return seconds, result

    def summary(seconds: list[float]) -> dict[str, float]:
        return {"fastest_s": min(seconds), "median_s": statistics.median(seconds)}

    eager_before, reference = timed()
    backbone = cast(torch.nn.Module, model.backbone)
    eager_forward = backbone.forward
    backbone.forward = torch.compile(eager_forward, dynamic=True if args.dynamic else None)
    start = time.perf_counter()
    evaluate(model, split, split.test, cfg.eval)
    compile_s = time.perf_counter() - start
    compiled, result = timed()
    backbone.forward = eager_forward
    eager_after, _ = timed()
    eager = eager_before + eager_after
    out: dict[str, Any] = {
        "kind": "eval_compile",
        "dataset": "ml100k",
        "protocol": describe_protocol(cfg.eval, split.protocol, 0, dataset.n_items),  # weights: seed 0, untrained
        "threads": args.threads,
        "dynamic": args.dynamic,
        "torch": torch.__version__,
        "first_compiled_eval_s": compile_s,
        "eager": summary(eager),
        "compiled": summary(compiled),
        "compiled_over_eager_fastest": min(compiled) / min(eager),
        "compiled_over_eager_median": statistics.median(compiled) / statistics.median(eager),
        "same_ranks": bool(np.array_equal(reference.ranks, result.ranks)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
