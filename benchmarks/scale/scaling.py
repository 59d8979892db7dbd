"""How preparation, training and evaluation scale with the log and the catalogue (synthetic logs).

Two sweeps, each measurement in a fresh process so its peak memory (``VmHWM``) is its own:

- **prepare**: ``thinkrec data prepare``'s work (read + filter + sequences, no cache) on synthetic logs of
  ``--prepare-rows`` interactions (default 1M, 10M, 50M), streamed and, for comparison, whole-table
  (``--prepare-modes``; the whole-table path at 50M needs far more memory: leave it out on small machines);
- **train**: SASRec on synthetic logs of ``--train-rows`` interactions (default 1M, 10M) and ``--items``
  catalogue sizes (default 10k, 100k, 1M), per ``--losses`` (default sampled softmax with 256 uniform
  negatives, and full CE up to ``--ce-max-items``): the time of ``--batches`` training batches after
  ``--warmup`` untimed ones (the epoch time is that per-batch time times the epoch's batches), one
  validation pass over ``--eval-users`` users (full ranking), and the peak memory (and the GPU's, on CUDA).

Logs are generated once into ``--data-dir`` (``benchmarks/scale/synthetic_log.py``; 50M rows are ~0.5 GB of
Parquet) and reused. Records go to the JSONL file of :mod:`benchmarks.harness`; ``<out>/scaling.png`` plots
them. The full measurement (hours on a CPU; the 50M whole-table preparation alone needs ~8 GB):

    python -m benchmarks.scale.scaling --threads 8
    python -m benchmarks.scale.scaling --device cuda --sweeps train          # the training sweep on a GPU

and a check that it runs (seconds):

    python -m benchmarks.scale.scaling --prepare-rows 20000,50000 --train-rows 20000 --items 500,2000 \\
        --batches 2 --warmup 1 --eval-users 50 --data-dir /tmp/scale-data --out /tmp/scale-out
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.scale import synthetic_log


def sizes(text: str) -> list[int]:
    """``1M,10M,50M`` / ``10k`` / plain numbers."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        out.append(int(float(part.rstrip("km")) * scale))
    return out


def sizes_arg(text: str) -> int:
    """One size (``1M``, ``10k``, ``0``) for argparse."""
    return sizes(text)[0]


def log_path(data_dir: Path, rows: int, items: int | None) -> Path:
    """The synthetic log of that size, generated on first use."""
    path = data_dir / f"log-{rows}{'' if items is None else f'-i{items}'}.parquet"
    if not path.exists():
        argv = ["--rows", str(rows), "--out", str(path)]
        if items is not None:
            argv += ["--items", str(items)]
        synthetic_log.generate(synthetic_log.parser().parse_args(argv))
    return path


def source(path: Path) -> dict[str, Any]:
    return {
        "format": "table",
        "path": str(path),
        "user_col": "user_id",
        "item_col": "item_id",
        "time_col": "timestamp",
        "rating_col": "rating",
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` of a child started by a big parent
    counts the parent's memory at the fork, on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ child processes
def child_prepare(job: dict[str, Any]) -> dict[str, Any]:
    from thinkrec.data.config import PrepareConfig, SourceConfig
    from thinkrec.data.prepare import prepare_source

    t0 = time.perf_counter()
    ds = prepare_source(
        SourceConfig(**source(Path(job["path"]))), PrepareConfig(**job["prepare"]), "scale", job["mode"] == "stream"
    )
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mib": peak_rss_mib(),
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": ds.n_interactions,
    }


def child_train(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from thinkrec.config.loader import load_config
    from thinkrec.data.batches import TrainSampler
    from thinkrec.eval.evaluator import evaluate
    from thinkrec.runs import build, build_objective, load_data
    from thinkrec.train.optim import build_optimizer

    torch.set_num_threads(job["threads"])
    overrides = [
        f"data.source={json.dumps(source(Path(job['path'])))}",
        "data.name=scale",
        f"data.prepare={json.dumps(job['prepare'])}",
        f"device={job['device']}",
        *job["overrides"],
    ]
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    ds, split = load_data(cfg)
    prepare_seconds = time.perf_counter() - t0
    device = torch.device(job["device"] if job["device"] != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    model = build(cfg, ds.n_items).to(device)
    objective = build_objective(cfg, split)
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.lr, t.weight_decay, t.betas, t.item_updates)
    model.train()
    batches = sampler.batches(cfg.train.batch_size, np.random.default_rng(0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i, batch in enumerate(batches):
        if i >= job["warmup"] + job["batches"]:
            break
        sync()
        start = time.perf_counter()
        out = objective(model, batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        sync()
        if i >= job["warmup"]:
            times.append(time.perf_counter() - start)
    per_batch = float(np.median(times)) if times else float("nan")
    n_batches = sampler.n_batches(cfg.train.batch_size)
    model.eval()
    samples = split.valid.subset(slice(0, job["eval_users"]))
    sync()
    start = time.perf_counter()
    result = evaluate(model, split, samples, cfg.eval)
    sync()
    eval_seconds = time.perf_counter() - start
    record = {
        "users": ds.n_users,
        "catalogue": ds.n_items,  # the items that occur (a Zipf tail of the generated ones never does)
        "interactions": ds.n_interactions,
        "prepare_or_load_seconds": prepare_seconds,
        "batches_per_epoch": n_batches,
        "seconds_per_batch": per_batch,
        "epoch_seconds_estimate": per_batch * n_batches,
        "eval_samples": len(samples),
        "eval_seconds": eval_seconds,
        "eval_seconds_per_1k_samples": eval_seconds / max(1, len(samples)) * 1000,
        # the two rates that should stay flat as the log and the catalogue grow
        "train_seconds_per_1m_interactions": per_batch * n_batches / max(1, ds.n_interactions) * 1e6,
        "eval_seconds_per_1e9_scores": eval_seconds / max(1, len(samples) * ds.n_items) * 1e9,
        "valid_metrics": result.metrics(cfg.eval.ks),
        "peak_rss_mib": peak_rss_mib(),
    }
    if device.type == "cuda":
        record["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if job.get("ann_users"):
        model.train()
        for i, batch in enumerate(batches):  # the rest of the generator: batches not yet trained on
            if i >= job["ann_train_batches"]:
                break
            out = objective(model, batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            optimizer.step()
        model.eval()
        record["ann"] = ann_recall(model, split, job["ann_users"], job["threads"])
    return record


def ann_recall(model: Any, split: Any, users: int, threads: int) -> list[dict[str, Any]]:
    """Approximate top-K (FAISS HNSW, as ``thinkrec serve --ann``) against exact full-catalogue scoring on the
    first ``users`` test samples: recall@K, milliseconds per single query for both, the index's build time."""
    import numpy as np
    import torch

    from thinkrec.data.batches import eval_histories, position_ids, trim
    from thinkrec.serve.ann import AnnIndex, recall_at_k

    samples = split.test.subset(np.arange(min(users, len(split.test))))
    (hist,) = trim(eval_histories(split, samples, model.backbone.max_len))
    inputs = torch.from_numpy(hist)
    with torch.no_grad():
        states = model.encode(inputs, position_ids(inputs.shape[1], model.backbone.max_len))
        queries, items = model.scorer.prepare(model.user_vector(states, "last", None), model.item_vectors())
    start = time.perf_counter()
    index = AnnIndex.for_model(model)
    build_seconds = time.perf_counter() - start
    out = []
    for k in (10, 100):
        start = time.perf_counter()
        tops = [torch.topk(q[None] @ items.T, k, dim=1) for q in queries]
        exact_ms = (time.perf_counter() - start) * 1000 / len(queries)
        exact = torch.cat([top.indices for top in tops]) + 1
        # the K-th best exact score of every query: an approximate result scoring at least that is as good as
        # an exact one (barely trained tail items tie, so id recall alone understates the quality)
        kth = torch.cat([top.values[:, -1] for top in tops])
        for ef in (128, 256):
            index.index.hnsw.efSearch = ef
            start = time.perf_counter()
            found = torch.stack([index.search(q[None], k)[0][0] for q in queries])
            out.append(
                {
                    "k": k,
                    "ef_search": ef,
                    "recall": recall_at_k(found, exact),
                    "score_recall": float(
                        (torch.einsum("bd,bkd->bk", queries, items[found.clamp_min(1) - 1]) >= kth[:, None] - 1e-6)
                        .float()
                        .mean()
                    ),
                    "ann_ms_per_query": (time.perf_counter() - start) * 1000 / len(queries),
                    "exact_ms_per_query": exact_ms,
                    "index_build_seconds": build_seconds,
                    "users": len(queries),
                    "items": int(items.shape[0]),
                    "threads": threads,
                }
            )
    return out


def run_child(kind: str, job: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "benchmarks.scale.scaling", "--child", kind, json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------- table and plot
def markdown(records: list[dict[str, Any]]) -> str:
    """One table per sweep; the training table's last two columns are the rates that should stay flat."""
    lines: list[str] = []
    prepared = [r for r in records if r["sweep"] == "prepare"]
    if prepared:
        lines += ["| rows | mode | users / items kept | peak RSS (MiB) | seconds |", "|---|---|---|---|---|"]
        for r in prepared:
            if "error" in r:
                lines.append(f"| {r['rows']:,} | {r['mode']} | error | - | - |")
                continue
            kept = f"{r['users']:,} / {r['items']:,}"
            lines.append(f"| {r['rows']:,} | {r['mode']} | {kept} | {r['peak_rss_mib']:,.0f} | {r['seconds']:.1f} |")
        lines.append("")
    trained = [r for r in records if r["sweep"] == "train"]
    if trained:
        lines += [
            "| rows | catalogue | loss | s / batch | epoch (s, est.) | s / 1M interactions | eval s / 10^9 scores"
            " | peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in trained:
            if "error" in r:
                lines.append(f"| {r['rows']:,} | {r['items']:,} | {r['loss']} | error | | | | |")
                continue
            lines.append(
                f"| {r['interactions']:,} | {r['catalogue']:,} | {r['loss']} | {r['seconds_per_batch']:.3f} |"
                f" {r['epoch_seconds_estimate']:.0f} | {r['train_seconds_per_1m_interactions']:.1f} |"
                f" {r['eval_seconds_per_1e9_scores']:.2f} | {r['peak_rss_mib']:,.0f} |"
            )
    ann = [a for r in trained if "error" not in r for a in r.get("ann", [])]
    if ann:
        lines += [
            "",
            "| catalogue | K | efSearch | recall@K (ids) | recall@K (scores) | ANN ms / query | exact ms / query"
            " | index build (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in ann:
            lines.append(
                f"| {a['items']:,} | {a['k']} | {a['ef_search']} | {a['recall']:.3f} |"
                f" {a.get('score_recall', float('nan')):.3f} | {a['ann_ms_per_query']:.2f} |"
                f" {a['exact_ms_per_query']:.2f} | {a['index_build_seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
    ax_prep, ax_mem, ax_train, ax_rate, ax_eval = axes
    for mode in sorted({r["mode"] for r in records if r["sweep"] == "prepare"}):
        ok = [r for r in records if r["sweep"] == "prepare" and r["mode"] == mode and "error" not in r]
        rows = sorted(ok, key=lambda r: r["rows"])
        if rows:
            x = [r["rows"] for r in rows]
            ax_prep.plot(x, [r["seconds"] for r in rows], marker="o", label=mode)
            ax_mem.plot(x, [r["peak_rss_mib"] / 1024 for r in rows], marker="s", label=mode)
    for ax, what in ((ax_prep, "seconds"), (ax_mem, "peak memory (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("interactions in the raw log")
        ax.set_ylabel(what)
        ax.set_title(f"data prepare: {what}")
        ax.legend(fontsize=8)
    for key in sorted({(r["rows"], r["loss"]) for r in records if r["sweep"] == "train"}):
        ok = [r for r in records if r["sweep"] == "train" and (r["rows"], r["loss"]) == key and "error" not in r]
        rows = sorted(ok, key=lambda r: r["catalogue"])
        if rows:
            x, y = [r["catalogue"] for r in rows], [r["seconds_per_batch"] for r in rows]
            ax_train.plot(x, y, marker="o", label=f"{key[0]:,} rows, {key[1]}")
    ax_train.set_xscale("log")
    ax_train.set_yscale("log")
    ax_train.set_xlabel("catalogue (items in the prepared log)")
    ax_train.set_ylabel("seconds per training batch")
    ax_train.set_title("training")
    ax_train.legend(fontsize=8)
    for ax, key, title in (
        (ax_rate, "train_seconds_per_1m_interactions", "training: seconds per 1M interactions"),
        (ax_eval, "eval_seconds_per_1e9_scores", "evaluation: seconds per 10^9 scores"),
    ):
        for group in sorted({(r["rows"], r["loss"]) for r in records if r["sweep"] == "train"}):
            ok = [r for r in records if r["sweep"] == "train" and (r["rows"], r["loss"]) == group and key in r]
            rows = sorted(ok, key=lambda r: r["catalogue"])
            if rows:
                ax.plot(
                    [r["catalogue"] for r in rows],
                    [r[key] for r in rows],
                    marker="o",
                    label=f"{group[0]:,} rows, {group[1]}",
                )
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("catalogue (items in the prepared log)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


LOSSES = {
    "sampled": ["train.loss=sampled", "train.n_negatives=256"],
    # the same, with Adam updating only the item rows a batch touched (sparse item-table gradients)
    "sampled_touched": ["train.loss=sampled", "train.n_negatives=256", "train.item_updates=touched"],
    "ce": ["train.loss=ce"],
}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        job = json.loads(sys.argv[3])
        print(json.dumps(child_prepare(job) if sys.argv[2] == "prepare" else child_train(job)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweeps", default="prepare,train", help="prepare, train or both")
    p.add_argument("--prepare-rows", default="1M,10M,50M")
    p.add_argument("--prepare-modes", default="stream,whole", help="stream and/or whole")
    p.add_argument("--train-rows", default="1M,10M")
    p.add_argument("--items", default="10k,100k,1M", help="catalogue sizes of the training sweep")
    p.add_argument("--losses", default="sampled,ce", help=f"of: {', '.join(LOSSES)}")
    p.add_argument(
        "--ce-max-items",
        type=int,
        default=100_000,
        help="skip full CE above this catalogue (a 1M-item softmax over every position takes minutes a batch on a CPU);"
        " 0 = never skip",
    )
    p.add_argument("--batches", type=int, default=20, help="timed training batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before them")
    p.add_argument("--eval-users", type=int, default=5000, help="validation samples of the timed pass")
    p.add_argument(
        "--ann-at-items",
        type=sizes_arg,
        default=1_000_000,
        help="measure approximate top-K (FAISS HNSW) against exact scoring for generated catalogues this big"
        " or bigger (0: never; needs the ann extra)",
    )
    p.add_argument("--ann-users", type=int, default=1000, help="test samples (single queries) of that measurement")
    p.add_argument(
        "--ann-train-batches",
        type=int,
        default=300,
        help="more training batches before it (untimed), so that the item table is a trained one",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-dir", type=Path, default=harness.out_dir("scale", "data"))
    p.add_argument("--out", type=Path, default=harness.out_dir("scale"))
    harness.add_records_argument(p)
    p.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="JSONL records of an earlier sweep to show in the table and plot too (e.g. the prepare sweep's)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides of the training runs (default SASRec, d=64)")
    args = p.parse_args(argv)
    records = harness.Records("scale", "scaling", args.records)
    done: list[dict[str, Any]] = []
    prepare = {"user_min": 5, "item_min": 5, "dedup": "exact"}
    sweeps = args.sweeps.split(",")
    if "prepare" in sweeps:
        for rows in sizes(args.prepare_rows):
            path = log_path(args.data_dir, rows, None)
            for mode in args.prepare_modes.split(","):
                job = {"path": str(path), "prepare": prepare, "mode": mode}
                result = run_child("prepare", job, args.threads)
                done.append(records.write({"sweep": "prepare", "rows": rows, "mode": mode, **job, **result}))
    if "train" in sweeps:
        train_prepare = {"user_min": 2, "item_min": 0, "dedup": "exact"}  # keep the whole catalogue
        base = [
            "model.hidden=64",
            "model.max_len=50",
            "train.batch_size=256",
            "eval.ks=[10]",
            "train.valid_metric=NDCG@10",
        ]
        for rows in sizes(args.train_rows):
            for items in sizes(args.items):
                path = log_path(args.data_dir, rows, items)
                for loss in args.losses.split(","):
                    if loss == "ce" and args.ce_max_items and items > args.ce_max_items:
                        continue
                    job = {
                        "path": str(path),
                        "prepare": train_prepare,
                        "device": args.device,
                        "threads": args.threads,
                        "batches": args.batches,
                        "warmup": args.warmup,
                        "eval_users": args.eval_users,
                        "ann_users": args.ann_users if args.ann_at_items and items >= args.ann_at_items else 0,
                        "ann_train_batches": args.ann_train_batches,
                        "overrides": [*base, *LOSSES[loss], *args.overrides],
                    }
                    result = run_child("train", job, args.threads)
                    done.append(
                        records.write({"sweep": "train", "rows": rows, "items": items, "loss": loss, **job, **result})
                    )
    for earlier in args.include:
        done = [json.loads(line) for line in earlier.read_text().splitlines() if line.strip()] + done
    plot(done, args.out / "scaling.png")
    text = markdown(done)
    (args.out / "scaling.md").write_text(text)
    print(text)
    print(f"plot: {args.out / 'scaling.png'}; table: {args.out / 'scaling.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
