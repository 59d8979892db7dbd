"""Serving benchmark: HTTP latency of ``thinkrec serve`` and batch-mode throughput for a run directory.

    python -m benchmarks.speed.serve_latency runs/ml1m-sasrec-s2020 --requests 500 --concurrency 1,8

1. Starts ``thinkrec serve RUN_DIR`` as a child process on 127.0.0.1 (a free port) and waits for /health.
2. For each concurrency level, sends exactly ``--requests`` POST /recommend requests (random histories of
   1..max_len known items, fixed seed) from that many threads, each with a ``--timeout`` per request, and
   records p50/p90/p99/max latency, throughput and the number of errors/timeouts. Then stops the server.
3. Batch mode: the whole sequence of every user of the run's dataset (``--batch-source dataset``, needs
   ``$THINKREC_DATA_DIR``) or ``--batch-users`` random histories (``--batch-source random``), written to a
   temporary Parquet file and scored with :func:`thinkrec.serve.batch.recommend_file`; reports users/s and
   this process's peak RSS (``resource.getrusage``; includes the model and the dataset).

Soak mode (``--soak 10000,50000``, one concurrency level): sends requests up to each count in turn and reads
the server's resident memory (``VmRSS`` of ``/proc/PID/status``) at each, so growth between the counts shows a
leak; latency percentiles over all requests and per segment. The bar of the library issue:

    python -m benchmarks.speed.serve_latency runs/ml100k-serve --soak 10000,50000 --concurrency 16 --batch-source none

Writes one record (to stdout and ``benchmarks/out/speed/``). Meant for a quiet machine; numbers from a busy
one are noise.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.serve.batch import recommend_file
from thinkrec.serve.recommender import Recommends
from thinkrec.serve.service import load_recommender


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(run_dir: str, port: int, startup_timeout: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "thinkrec.cli.main", "serve", run_dir, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}; run: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"server did not answer /health within {startup_timeout} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def server_rss_mb(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB (Linux; ``None`` elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stats(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
    }


def soak(
    url: str, bodies: list[dict[str, Any]], counts: list[int], concurrency: int, timeout: float, pid: int
) -> dict[str, Any]:
    """Requests up to each of ``counts`` in turn, the server's RSS read after each segment."""
    segments, start, everything = [], 0, []
    for count in counts:
        part = load(url, bodies[start:count], concurrency, timeout, keep=True)
        everything.extend(part.pop("latencies"))
        segments.append({"after_requests": count, "server_rss_mb": server_rss_mb(pid), **part})
        start = count
    rss = [s["server_rss_mb"] for s in segments]
    return {
        "concurrency": concurrency,
        "requests": len(everything),
        "errors": sum(s["errors"] for s in segments),
        **stats(everything),
        "p99_over_p50": percentile(everything, 0.99) / percentile(everything, 0.50),
        "rss_last_over_first": rss[-1] / rss[0] if None not in rss and len(rss) > 1 else None,
        "segments": segments,
    }


def load(
    url: str, bodies: list[dict[str, Any]], concurrency: int, timeout: float, keep: bool = False
) -> dict[str, Any]:
    """Send every body once from ``concurrency`` threads; latency stats in milliseconds (and every latency
    under ``"latencies"`` with ``keep``)."""

    def worker(part: list[dict[str, Any]]) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with httpx.Client(timeout=timeout) as client:
            for body in part:
                t0 = time.perf_counter()
                try:
                    ok = client.post(url, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok
        return latencies, errors

    parts = [bodies[i::concurrency] for i in range(concurrency)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(worker, parts))
    wall = time.perf_counter() - t0
    latencies = [x for lat, _ in results for x in lat]
    out = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": sum(e for _, e in results),
        **stats(latencies),
        "requests_per_s": len(latencies) / wall,
    }
    return {**out, "latencies": latencies} if keep else out


def random_histories(rec: Recommends, n: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randint(1, rec.vocabulary.n_items) for _ in range(rng.randint(1, rec.max_len))] for _ in range(n)]


def dataset_histories(run_dir: str) -> tuple[list[str], list[list[int]]]:
    """Every user of the run's dataset with their whole sequence (external item ids)."""
    from thinkrec.runs import load_data, load_run

    cfg, _ = load_run(run_dir)
    ds, _ = load_data(cfg)
    users = [str(u) for u in ds.user_ids]
    return users, [[int(ds.item_ids[i - 1]) for i in ds.sequence(u)] for u in range(ds.n_users)]


def batch(rec: Recommends, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    if args.batch_source == "dataset":
        users, histories = dataset_histories(args.run_dir)
        items: list[list[Any]] = histories
    else:
        internal = random_histories(rec, args.batch_users, rng)
        users = [str(u) for u in range(len(internal))]
        items = [[rec.vocabulary.external_id(i) for i in h] for h in internal]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "users.parquet", Path(tmp) / "top.parquet"
        pq.write_table(pa.table({"user": users, "items": items}), src)
        t0 = time.perf_counter()
        summary = recommend_file(rec, src, dst, k=args.k, chunk_size=args.chunk_size, progress=False)
        seconds = time.perf_counter() - t0
    return {
        "source": args.batch_source,
        "users": summary.users,
        "seconds": seconds,
        "users_per_s": summary.users / seconds if seconds else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"summary_{k}": v for k, v in summary.as_dict().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--requests", type=int, default=500, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client thread counts")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before the timed ones (default 20)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--batch-source", choices=["dataset", "random", "none"], default="dataset")
    parser.add_argument("--batch-users", type=int, default=10_000, help="with --batch-source random")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--soak",
        help="comma-separated increasing request counts (e.g. 10000,50000): one soak at the first --concurrency "
        "level instead of the latency levels, the server's RSS read at each count",
    )
    parser.add_argument("--threads", type=int, help="torch threads of this process (batch mode)")
    harness.add_records_argument(parser)
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    records = harness.Records("speed", "serve_latency", args.records)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.soak.split(",")] if args.soak else []
    if counts and (counts != sorted(set(counts)) or counts[0] < 1):
        parser.error("--soak takes increasing positive request counts, e.g. 10000,50000")
    rng = random.Random(args.seed)
    rec = load_recommender(args.run_dir, depth="none")  # a sequence-model or an R²ec run; only its catalogue is used
    bodies = [
        {"history": [rec.vocabulary.external_id(i) for i in h], "k": args.k}
        for h in random_histories(rec, counts[-1] if counts else args.requests, rng)
    ]
    out: dict[str, Any] = {"run_dir": args.run_dir, "model": rec.describe(), "cpus": os.cpu_count(), "latency": []}
    port = free_port()
    server = start_server(args.run_dir, port, args.startup_timeout)
    try:
        url = f"http://127.0.0.1:{port}/recommend"
        if args.warmup:
            load(url, bodies[: min(args.warmup, len(bodies))], 1, args.timeout)
        levels = [int(c) for c in args.concurrency.split(",")]
        if counts:
            out["soak"] = soak(url, bodies, counts, levels[0], args.timeout, server.pid)
        else:
            for level in levels:
                out["latency"].append(load(url, bodies, level, args.timeout))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.batch_source != "none":
        out["batch"] = batch(rec, args, rng)
    records.write(out)


if __name__ == "__main__":
    main()
