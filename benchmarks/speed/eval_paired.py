"""Paired rounds of one full-catalogue test evaluation: thinkrec against RecBole 1.2.1, taking turns.

``speed_engine`` times all of thinkrec's evaluations, then starts RecBole and times all of its own, so
a change in the host's speed between the two blocks lands on one side only. Here both sides are set up once and then
evaluate the same test users in turns, one at a time: RecBole in its own process (the peer venv of
``benchmarks/peers/peer_setup.sh``, ``peer_recbole.py --eval-on-request``), thinkrec in this one. Each round times one
evaluation per side, and the side that goes first alternates between rounds. A round's ratio is thinkrec's
time over RecBole's in that round, so a drift slower than a round cancels.

Same model and settings as ``speed_engine`` (hidden 64, 2 layers, 2 heads, max length 50, leave-one-out
test users, full ranking, history not masked). Each side is timed inside its own process around one whole
evaluation; one untimed evaluation per side comes first.

    python -m benchmarks.speed.eval_paired --threads 2 --rounds 120
    python -m benchmarks.speed.eval_paired --threads 2 --rounds 60 --autocast bf16   # thinkrec in bf16
    python -m benchmarks.speed.eval_paired --threads 2 --rounds 60 --workers 1       # without row workers

Writes one record per round and a summary record (``"kind": "summary"``; to stdout and
``benchmarks/out/speed/``): both sides' fastest and median times, the median of the per-round ratios with a
distribution-free 95% interval, and how many rounds were under ``--goal``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import IO, Any

import torch

from benchmarks import harness
from benchmarks.speed.speed_engine import DATASETS, SAME, TUNED_MALLOC_ENV, peer_command, train_epoch
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.eval.evaluator import evaluate
from thinkrec.runs import load_data

REPO = harness.REPO


class Peer:
    """RecBole, evaluating on request in the peer venv's python."""

    def __init__(self, dataset: str, threads: int, venv: Path, tuned_malloc: bool) -> None:
        cmd = peer_command(dataset, threads, 1, venv, "--eval-on-request")
        if cmd is None:
            sys.exit(f"eval_paired: no peer venv at {venv}; make it with: bash benchmarks/peers/peer_setup.sh")
        env = {**os.environ, **(TUNED_MALLOC_ENV if tuned_malloc else {})}
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,  # its log: our stderr
        )
        ready = self.read()
        if not ready.get("ready"):
            sys.exit(f"eval_paired: RecBole did not start: {ready}")

    def read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            code = self.proc.wait()
            sys.exit(f"eval_paired: the RecBole process ended (exit code {code}); its log is above, on stderr")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def evaluate(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("eval\n")
        self.proc.stdin.flush()
        answer = self.read()
        if "eval_seconds" not in answer:
            sys.exit(f"eval_paired: unexpected answer from RecBole: {answer}")
        return float(answer["eval_seconds"])

    def close(self) -> None:
        """Ask RecBole to stop; kill it if it has not within a minute (or is gone already)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% interval of the median: order statistics at n/2 -+ z sqrt(n)/2 (1-based)."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    lo = max(1, math.floor(n / 2 - half))
    hi = min(n, math.ceil(n / 2 + 1 + half))
    return ordered[lo - 1], ordered[hi - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["ml100k", "beauty"], default="ml100k")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--rounds", type=int, default=60, help="paired rounds (one evaluation per side each)")
    parser.add_argument("--goal", type=float, default=0.2, help="the ratio the summary counts rounds under")
    parser.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default="none",
        help="thinkrec's evaluation precision (eval.autocast); RecBole always evaluates in float32",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="thinkrec's eval.workers (0 = one per torch thread, the default; 1 = every operation split over threads)",
    )
    parser.add_argument(
        "--peer-venv", type=Path, default=Path(os.environ.get("THINKREC_PEER_VENV", REPO / ".peer-venv"))
    )
    parser.add_argument(
        "--peer-tuned-allocator",
        action="store_true",
        help="give RecBole thinkrec's allocator settings (MALLOC_* environment) instead of glibc's defaults",
    )
    harness.add_records_argument(parser)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    records = harness.Records("speed", f"eval_paired_{args.dataset}", args.records)

    tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    eval_overrides = [f"eval.autocast={args.autocast}", f"eval.workers={args.workers}"]
    cfg = load_config(DATASETS[args.dataset][0], [*SAME, "progress=never", *eval_overrides])
    peer = Peer(args.dataset, args.threads, args.peer_venv, args.peer_tuned_allocator)  # first: fails fast
    _dataset, split = load_data(cfg)
    model, _sampler, _batches, _seconds = train_epoch(cfg, split, "all")  # weights as speed_engine's

    def ours() -> float:
        start = time.perf_counter()
        evaluate(model, split, split.test, cfg.eval)
        return time.perf_counter() - start

    ours(), peer.evaluate()  # untimed: kernel setup on both sides
    mine: list[float] = []
    theirs: list[float] = []
    try:
        for r in range(args.rounds):
            if r % 2 == 0:
                a, b = ours(), peer.evaluate()
            else:
                b, a = peer.evaluate(), ours()
            mine.append(a)
            theirs.append(b)
            row = {"kind": "round", "round": r, "thinkrec_first": r % 2 == 0, "thinkrec": a, "recbole": b}
            records.write({**row, "ratio": a / b})
    finally:
        peer.close()
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    lo, hi = median_interval(ratios)
    summary = {
        "kind": "summary",
        "dataset": args.dataset,
        "threads": args.threads,
        "rounds": args.rounds,
        "overrides": SAME,
        "autocast": args.autocast,
        "workers": args.workers,
        "n_test": len(split.test),
        "allocator_tuned": tuned,
        "recbole_allocator_tuned": args.peer_tuned_allocator,
        "thinkrec_fastest": min(mine),
        "thinkrec_median": median(mine),
        "recbole_fastest": min(theirs),
        "recbole_median": median(theirs),
        "fastest_ratio": min(mine) / min(theirs),
        "median_ratio_of_rounds": median(ratios),
        "median_ratio_95": [lo, hi],
        "goal": args.goal,
        "rounds_under_goal": sum(x <= args.goal for x in ratios),
    }
    records.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
