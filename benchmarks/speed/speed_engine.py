"""Engine speed: one training epoch and one full-catalogue test evaluation, thinkrec vs RecBole 1.2.1.

Both sides train SASRec with the same size (hidden 64, 2 layers, 2 heads, FFN 4 x hidden, max length 50,
batch 256, full-softmax cross-entropy, Adam) over the same training targets: every next-item target of
every training sequence under leave-one-out. thinkrec trains each target once in the all-positions mode
(length-bucketed windows); RecBole trains every prefix as its own instance. RecBole's epoch is estimated
from a fixed number of timed batches (its full epoch takes minutes). The processes run one at a time with
the same thread count. Also reported: achieved GFLOP/s of thinkrec's epoch against this machine's measured
fp32 matmul peak, and epoch time on MovieLens-1M (growth from MovieLens-100K).

    python -m benchmarks.speed.speed_engine --threads 2 --peer-batches 20

Writes one record per measurement and a summary record (``"kind": "summary"``) to stdout and to
``benchmarks/out/speed/`` (:mod:`benchmarks.harness`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from benchmarks import harness
from thinkrec import allocator
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import TrainSampler
from thinkrec.data.split import Split
from thinkrec.eval.evaluator import evaluate
from thinkrec.models.model import SeqRecModel
from thinkrec.runs import build, build_objective, load_data

REPO = harness.REPO
DATASETS = {
    # name: (preset, peer --inter-source, peer --dataset-name)
    "ml100k": ("ml100k-sasrec", "ml100k", None),
    "beauty": ("beauty-sasrec", "seqrecbench", "amazon2014-beauty"),
    "ml1m": ("ml1m-sasrec", None, None),
}
SAME = [
    "model.hidden=64",
    "model.layers=2",
    "model.heads=2",
    "model.max_len=50",
    "train.batch_size=256",
    "train.stride=25",
]


def matmul_peak(threads: int) -> float:
    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def epoch_flops(sampler: TrainSampler, batch_size: int, hidden: int, layers: int, ffn: int, n_items: int) -> float:
    """Analytic forward+backward FLOPs (3x forward) of one epoch: Transformer tokens and the output layer."""
    rng = np.random.default_rng(0)
    tokens = 0
    attn = 0
    for batch in sampler.batches(batch_size, rng):
        b, w = batch.inputs.shape
        tokens += b * w
        attn += b * w * w
    per_token = layers * (2 * hidden * 3 * hidden + 2 * hidden * hidden + 2 * 2 * hidden * ffn)
    forward = tokens * per_token + layers * 2 * 2 * attn * hidden + sampler.n_targets * 2 * hidden * n_items
    return 3.0 * forward


def train_epoch(
    cfg: RunConfig, split: Split, sample_mode: Literal["all", "last"]
) -> tuple[SeqRecModel, TrainSampler, int, float]:
    """A fresh model trained for one epoch in ``sample_mode``: the model, sampler, batches and seconds."""
    model = build(cfg, split.dataset.n_items)
    objective = build_objective(cfg)
    sampler = TrainSampler(split, cfg.model.max_len, sample_mode, cfg.train.stride)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model.train()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n_batches = 0
    for batch in sampler.batches(cfg.train.batch_size, rng):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.autocast == "bf16"):
            out = objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(out.total)
        optimizer.step()
        n_batches += 1
    return model, sampler, n_batches, time.perf_counter() - t0


def timed_eval(model: SeqRecModel, split: Split, cfg: RunConfig, repeats: int, bf16: bool) -> float:
    """Fastest of ``repeats`` full-catalogue test evaluations, after one warm-up on the validation samples."""
    eval_cfg = cfg.eval.model_copy(update={"autocast": "bf16"}) if bf16 else cfg.eval
    evaluate(model, split, split.valid, eval_cfg)  # one-time kernel setup; RecBole is warm from training too
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        evaluate(model, split, split.test, eval_cfg)
        times.append(time.perf_counter() - t0)
    return min(times)


def ours(name: str, threads: int, extra: list[str], last_mode: bool, eval_repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    preset = DATASETS[name][0]
    cfg = load_config(preset, [*SAME, "progress=never", *extra])
    ds, split = load_data(cfg)
    last: dict[str, Any] = {}
    if last_mode:  # one target per prefix (RecBole's instances): same targets, more, smaller batches
        _, last_sampler, last_batches, last_seconds = train_epoch(cfg, split, "last")
        last = {
            "epoch_last_mode_seconds": last_seconds,
            "last_mode_batches": last_batches,
            "last_mode_targets": last_sampler.n_targets,
        }
    model, sampler, n_batches, epoch_seconds = train_epoch(cfg, split, "all")
    eval_seconds = timed_eval(model, split, cfg, eval_repeats, bf16=False)
    eval_bf16_seconds = timed_eval(model, split, cfg, eval_repeats, bf16=True)
    ffn = cfg.model.ffn or 4 * cfg.model.hidden
    flops = epoch_flops(sampler, cfg.train.batch_size, cfg.model.hidden, cfg.model.layers, ffn, ds.n_items)
    return {
        "kind": "thinkrec",
        "dataset": name,
        "threads": threads,
        "overrides": [*SAME, *extra],
        "train_targets": sampler.n_targets,
        "batches": n_batches,
        "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds,
        "eval_bf16_seconds": eval_bf16_seconds,
        "n_test": len(split.test),
        "n_items": ds.n_items,
        "epoch_gflop": flops / 1e9,
        "achieved_gflops": flops / 1e9 / epoch_seconds,
        **last,
    }


# glibc settings equal to thinkrec.allocator.tune_allocator, for the peer run that gets them too
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(allocator.TOP_PAD),
}


def peer_command(name: str, threads: int, batches: int, venv: Path, *extra: str) -> list[str] | None:
    """The ``peer_recbole.py`` command for dataset ``name`` with our model settings and ``extra`` options;
    None if RecBole has no setup for that dataset or the peer venv is missing."""
    _, source, dataset_name = DATASETS[name]
    python = venv / "bin" / "python"
    if source is None or not python.exists():
        return None
    cmd = [
        str(python),
        str(REPO / "benchmarks" / "peers" / "peer_recbole.py"),
        "--inter-source",
        source,
        "--train-batches",
        str(batches),
        "--threads",
        str(threads),
        "--dropout",
        "0.2",
        *extra,
    ]
    if dataset_name:
        cmd += ["--dataset-name", dataset_name]
    return cmd


def peer(
    name: str, threads: int, batches: int, venv: Path, eval_repeats: int, tuned_malloc: bool = False
) -> dict[str, Any] | None:
    cmd = peer_command(name, threads, batches, venv, "--eval", "--eval-repeats", str(eval_repeats))
    if cmd is None:
        return None
    env = {**os.environ, **(TUNED_MALLOC_ENV if tuned_malloc else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["kind"] = "recbole"
    row["allocator_tuned"] = tuned_malloc
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-batches", type=int, default=20, help="RecBole batches to time per dataset")
    parser.add_argument("--datasets", default="ml100k,beauty,ml1m")
    parser.add_argument(
        "--peer-venv", type=Path, default=Path(os.environ.get("THINKREC_PEER_VENV", REPO / ".peer-venv"))
    )
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none")
    parser.add_argument(
        "--last-mode",
        default="",
        help="datasets (comma-separated) to also time one last-position-prefix epoch on, e.g. ml100k,beauty",
    )
    parser.add_argument(
        "--allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="thinkrec's glibc allocator settings (what the CLI uses) or glibc's defaults",
    )
    parser.add_argument(
        "--eval-repeats",
        type=int,
        default=3,
        help="evaluations timed per side and model; the fastest counts (both libraries)",
    )
    parser.add_argument(
        "--peer-tuned-allocator",
        action="store_true",
        help="also run RecBole with thinkrec's allocator settings (MALLOC_* environment)",
    )
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("speed", "speed_engine", args.records)
    tuned = args.allocator == "tuned" and tune_allocator()
    extra = [f"train.autocast={args.autocast}"]
    peak = matmul_peak(args.threads)
    records.write(
        {"kind": "machine", "threads": args.threads, "matmul_peak_gflops_fp32": peak, "allocator_tuned": tuned}
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in args.datasets.split(","):
        mine = ours(name, args.threads, extra, name in args.last_mode.split(","), args.eval_repeats)
        mine["fraction_of_peak"] = mine["achieved_gflops"] / peak
        records.write(mine)
        rows[name] = mine
        other = peer(name, args.threads, args.peer_batches, args.peer_venv, args.eval_repeats)
        if other is not None:
            records.write(other)
            mine["recbole_epoch_seconds"] = other["est_epoch_seconds"]
            mine["recbole_eval_seconds"] = other["eval_seconds"]
        if other is not None and args.peer_tuned_allocator:
            tuned_peer = peer(name, args.threads, args.peer_batches, args.peer_venv, args.eval_repeats, True)
            assert tuned_peer is not None
            records.write(tuned_peer)
            mine["recbole_tuned_epoch_seconds"] = tuned_peer["est_epoch_seconds"]
            mine["recbole_tuned_eval_seconds"] = tuned_peer["eval_seconds"]
    summary: dict[str, Any] = {"kind": "summary", "threads": args.threads}
    for name, row in rows.items():
        if "recbole_epoch_seconds" in row:
            summary[f"{name}_epoch_ratio"] = row["epoch_seconds"] / row["recbole_epoch_seconds"]
            summary[f"{name}_eval_ratio"] = row["eval_seconds"] / row["recbole_eval_seconds"]
            summary[f"{name}_eval_bf16_ratio"] = row["eval_bf16_seconds"] / row["recbole_eval_seconds"]
            if "epoch_last_mode_seconds" in row:
                summary[f"{name}_epoch_last_mode_ratio"] = row["epoch_last_mode_seconds"] / row["recbole_epoch_seconds"]
        if "recbole_tuned_epoch_seconds" in row:  # against RecBole given the same allocator settings
            summary[f"{name}_vs_tuned_recbole_epoch_ratio"] = row["epoch_seconds"] / row["recbole_tuned_epoch_seconds"]
            summary[f"{name}_vs_tuned_recbole_eval_ratio"] = row["eval_seconds"] / row["recbole_tuned_eval_seconds"]
            if "epoch_last_mode_seconds" in row:
                summary[f"{name}_vs_tuned_recbole_epoch_last_mode_ratio"] = (
                    row["epoch_last_mode_seconds"] / row["recbole_tuned_epoch_seconds"]
                )
    if "ml100k" in rows and "ml1m" in rows:
        summary["ml1m_over_ml100k_epoch"] = rows["ml1m"]["epoch_seconds"] / rows["ml100k"]["epoch_seconds"]
        summary["ml1m_over_ml100k_targets"] = rows["ml1m"]["train_targets"] / rows["ml100k"]["train_targets"]
    records.write(summary)


if __name__ == "__main__":
    sys.exit(main())
