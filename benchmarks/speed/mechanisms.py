"""Does each CPU speed mechanism earn its place? Each one on and off, in paired rounds, on a path a user waits for.

A mechanism is kept only where it saves at least 10% of a training epoch or a full-catalogue evaluation (median
ratio >= 1.10, the low end of its interval above 1)
(the project rule: a speed trick stays only where it pays >= 10% on a path a user waits for). Each round times
the path once with the mechanism on and once off, the arm that goes first alternating between rounds; a
round's ratio is off / on (above 1: the mechanism saves time), so a drift of the host slower than a round
cancels. The summary gives the median ratio of the rounds with a distribution-free 95% interval.

Mechanisms (``--mechanisms``, all by default):

- ``dropout``: thinkrec's dropout (one 64-bit draw per four elements) against torch's
  (``THINKREC_DROPOUT=torch``); path: one training epoch of a fresh model.
- ``allocator``: the glibc settings of :func:`thinkrec.allocator.tune_allocator` against glibc's defaults
  (``THINKREC_ALLOCATOR=default``); process-wide, so each arm is a child process of this script that trains
  two epochs and evaluates three times; path: its second epoch and its fastest evaluation.
- ``workers``: evaluation's row workers (``eval.workers=0``) against every operation split over the torch
  threads (``eval.workers=1``); path: the test evaluation.
- ``fused``: inference linear layers through :func:`thinkrec.models.fused.linear`'s fast path (oneDNN or MKL
  with an in-place GELU, as chosen for this CPU) against the plain ``F.linear`` + ``F.gelu``; path: the test
  evaluation.
- ``onednn``: of the two fast paths of ``fused``, oneDNN's (bias and GELU in the product's epilogue) against
  MKL's product with an in-place GELU; path: the test evaluation.
- ``folded``: the folded inference runner (:mod:`thinkrec.inference.folded`: last column only, key/value
  projections folded into the query) against the plain runner; path: the test evaluation.

    python -m benchmarks.speed.mechanisms --dataset ml100k --rounds 30 --train-rounds 5
    python -m benchmarks.speed.mechanisms --dataset beauty --rounds 15 --train-rounds 3
    python -m benchmarks.speed.mechanisms --preset ml100k-time-sasrec-prl --mechanisms workers,fused,folded

Weights: one training epoch (timings do not depend on them). One record per round and one summary record per
mechanism (stdout and ``benchmarks/out/speed/``). Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from statistics import median
from typing import Any, TypeVar
from unittest import mock

import torch

from benchmarks import harness
from benchmarks.speed.eval_paired import median_interval
from benchmarks.speed.speed_engine import DATASETS, SAME, train_epoch
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig
from thinkrec.data.split import Split
from thinkrec.eval import evaluator
from thinkrec.inference.runner import PlainRunner
from thinkrec.models import fused
from thinkrec.models.model import SeqRecModel
from thinkrec.runs import load_data

T = TypeVar("T")
MECHANISMS = ("dropout", "allocator", "workers", "fused", "onednn", "folded")


@contextlib.contextmanager
def environ(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def plain_linear() -> contextlib.AbstractContextManager[object]:
    return mock.patch.object(fused, "fused_ok", lambda x, weight: False)


def mkl_linear() -> contextlib.AbstractContextManager[object]:
    return mock.patch.object(fused, "ONEDNN", False)


def plain_runner() -> contextlib.AbstractContextManager[object]:
    # the evaluator's own name for it is patched
    return mock.patch.object(evaluator, "runner_for", lambda model, device=None: PlainRunner(model))


def eval_seconds(model: SeqRecModel, split: Split, cfg: RunConfig, workers: int = 0) -> float:
    eval_cfg = cfg.eval.model_copy(update={"workers": workers})
    start = time.perf_counter()
    evaluator.evaluate(model, split, split.test, eval_cfg, per_step=False)
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> int:
    """One allocator arm: two training epochs and three evaluations in this (fresh) process."""
    tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, [*SAME, "progress=never", *args.override])
    _dataset, split = load_data(cfg)
    train_epoch(cfg, split, "all")
    model, _sampler, _batches, epoch = train_epoch(cfg, split, "all")
    evals = [eval_seconds(model, split, cfg) for _ in range(3)]
    print(json.dumps({"allocator_tuned": tuned, "epoch": epoch, "eval": min(evals)}))
    return 0


def run_child(args: argparse.Namespace, allocator: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.speed.mechanisms", "--child", "--preset", args.preset]
    cmd += ["--threads", str(args.threads), *(f"--override={o}" for o in args.override)]
    env = {**os.environ, "THINKREC_ALLOCATOR": allocator}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=harness.REPO)
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def paired(rounds: int, on: Callable[[], T], off: Callable[[], T]) -> list[tuple[T, T]]:
    """``rounds`` pairs (on, off), the arm going first alternating."""
    pairs = []
    for r in range(rounds):
        if r % 2 == 0:
            a, b = on(), off()
        else:
            b, a = off(), on()
        pairs.append((a, b))
    return pairs


def summarise(name: str, path: str, pairs: list[tuple[float, float]], records: harness.Records, **extra: Any) -> None:
    for r, (a, b) in enumerate(pairs):
        records.write({"kind": "round", "mechanism": name, "path": path, "round": r, "on": a, "off": b})
    ratios = [b / a for a, b in pairs]
    lo, hi = median_interval(ratios)
    summary = {
        "kind": "summary",
        "mechanism": name,
        "path": path,
        "rounds": len(pairs),
        "on_median_s": median(a for a, _ in pairs),
        "off_median_s": median(b for _, b in pairs),
        "off_over_on_median": median(ratios),
        "off_over_on_95": [lo, hi],
        # pays >= 10% and is faster beyond doubt
        "keep": median(ratios) >= 1.10 and lo > 1.0,
        **extra,
    }
    records.write(summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml100k", help="picks the SASRec preset")
    parser.add_argument("--preset", help="instead of --dataset's SASRec preset (e.g. a reasoning preset)")
    parser.add_argument("--override", action="append", default=[], help="one more config override (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30, help="paired rounds of each evaluation mechanism")
    parser.add_argument("--train-rounds", type=int, default=5, help="paired rounds of dropout and allocator")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    harness.add_records_argument(parser)
    args = parser.parse_args()
    args.preset = args.preset or DATASETS[args.dataset][0]
    if args.child:
        return child(args)
    chosen = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MECHANISMS))
    if unknown:
        parser.error(f"unknown mechanisms {unknown}; choose from {', '.join(MECHANISMS)}")
    records = harness.Records("speed", f"mechanisms_{args.preset}", args.records)

    tune_allocator()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, [*SAME, "progress=never", *args.override])
    _dataset, split = load_data(cfg)
    model, _sampler, _batches, _seconds = train_epoch(cfg, split, "all")
    common = {
        "preset": args.preset,
        "overrides": [*SAME, *args.override],
        "threads": args.threads,
        "onednn": fused.ONEDNN,
        "n_test": len(split.test),
    }

    if "dropout" in chosen:

        def epoch(kind: str | None) -> Callable[[], float]:
            def run() -> float:
                with environ("THINKREC_DROPOUT", kind):
                    return train_epoch(cfg, split, "all")[3]

            return run

        summarise(
            "dropout", "training epoch", paired(args.train_rounds, epoch(None), epoch("torch")), records, **common
        )
    if "allocator" in chosen:
        answers = paired(args.train_rounds, lambda: run_child(args, "tuned"), lambda: run_child(args, "default"))
        for key, path in (("epoch", "training epoch"), ("eval", "test evaluation")):
            summarise("allocator", path, [(a[key], b[key]) for a, b in answers], records, **common)

    def evaluate_once() -> float:
        return eval_seconds(model, split, cfg)

    evaluate_once()  # one-time kernel setup
    if "workers" in chosen:
        summarise(
            "workers",
            "test evaluation",
            paired(args.rounds, evaluate_once, lambda: eval_seconds(model, split, cfg, workers=1)),
            records,
            **common,
        )
    for name, switch in (("fused", plain_linear), ("onednn", mkl_linear), ("folded", plain_runner)):
        if name in chosen:

            def off(switch: Callable[[], contextlib.AbstractContextManager[object]] = switch) -> float:
                with switch():
                    return eval_seconds(model, split, cfg)

            off()
            summarise(name, "test evaluation", paired(args.rounds, evaluate_once, off), records, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
