"""A GPU check: train one epoch on CUDA, then evaluate the checkpoint on CUDA and on the CPU and compare.

    python -m benchmarks.scale.gpu_check                          # ml100k-sasrec, one epoch, one GPU
    python -m benchmarks.scale.gpu_check --processes 2            # the same through torchrun (NCCL), 2 GPUs
    python -m benchmarks.scale.gpu_check --preset ml1m-sasrec --atol 0.002
    python -m benchmarks.scale.gpu_check --train-device cpu       # the comparison's code path, without a GPU

Without a CUDA GPU (and without ``--train-device cpu``) it prints a "skipped" record and exits 0. With one,
the test metrics of the two devices must agree within ``--atol`` (float32 sums differ between the GPU's and
the CPU's kernels, so an item scoring equal to the target may swap places; most samples' ranks are identical,
the share is recorded); otherwise the exit status is 1. One record goes to the JSONL file of
:mod:`benchmarks.harness`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness


def train_run(args: argparse.Namespace, run_dir: Path) -> float:
    """Train the preset for one epoch on ``--train-device`` into ``run_dir``; the wall seconds."""
    overrides = [f"device={args.train_device}", "train.epochs=1", "progress=never", "train.resume=false"]
    overrides += args.overrides
    t0 = time.perf_counter()
    if args.processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}"]
        cmd = [*launcher, "-m", "thinkrec.cli.main", "train", args.preset, "--run-dir", str(run_dir), *overrides]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
        if done.returncode != 0:
            raise SystemExit(f"torchrun training failed:\n{done.stderr[-3000:]}")
    else:
        from thinkrec.config.loader import load_config
        from thinkrec.runs import train

        train(load_config(args.preset, overrides), run_dir)
    return time.perf_counter() - t0


def evaluate_on(run_dir: Path, device: str) -> tuple[dict[str, float], np.ndarray, float]:
    """The best checkpoint's test metrics and ranks, evaluated on ``device``; the seconds it took."""
    from thinkrec.eval.evaluator import evaluate
    from thinkrec.runs import load_data, load_run

    cfg, model = load_run(run_dir, "best", device=device)
    _, split = load_data(cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = evaluate(model, split, split.test, cfg.eval)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return result.metrics(cfg.eval.ks), np.asarray(result.ranks), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ml100k-sasrec")
    p.add_argument("--train-device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script only")
    p.add_argument("--processes", type=int, default=1, help="train through torchrun with this many processes")
    p.add_argument("--atol", type=float, default=1e-3, help="largest allowed metric difference")
    p.add_argument("--run-dir", type=Path, default=harness.out_dir("scale", "gpu_check", "run"))
    harness.add_records_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted overrides of the training run")
    args = p.parse_args(argv)
    records = harness.Records("scale", "gpu_check", args.records)
    if args.train_device == "cuda" and not torch.cuda.is_available():
        records.write({"check": "gpu", "skipped": "torch sees no CUDA GPU", "preset": args.preset})
        return 0
    train_seconds = train_run(args, args.run_dir)
    eval_device = "cuda" if args.train_device == "cuda" else "cpu"
    gpu_metrics, gpu_ranks, gpu_seconds = evaluate_on(args.run_dir, eval_device)
    cpu_metrics, cpu_ranks, cpu_seconds = evaluate_on(args.run_dir, "cpu")
    diff = {k: abs(gpu_metrics[k] - cpu_metrics[k]) for k in gpu_metrics}
    ok = max(diff.values()) <= args.atol
    record: dict[str, Any] = {
        "check": "gpu",
        "preset": args.preset,
        "train_device": args.train_device,
        "processes": args.processes,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "train_seconds": train_seconds,
        f"metrics_{eval_device}": gpu_metrics,
        "metrics_cpu": cpu_metrics,
        "largest_difference": max(diff.values()),
        "same_rank_share": float(np.mean(gpu_ranks == cpu_ranks)),
        f"eval_seconds_{eval_device}": gpu_seconds,
        "eval_seconds_cpu": cpu_seconds,
        "atol": args.atol,
        "ok": ok,
        "run_dir": str(args.run_dir),
    }
    records.write(record)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
