"""Approximate top-K (FAISS HNSW) vs exact full-catalogue scoring: recall@K and time per query.

    python -m benchmarks.speed.ann_recall runs/beauty-prl-serve --users 2000 --k 10,100 --ef 64,128,256

User vectors are those of the run's test histories (``$THINKREC_DATA_DIR`` needed), computed once; then for
each ``efSearch`` the top-K of every user is taken exactly (one matrix product + topk over all items) and
approximately (HNSW, inner product on the scoring vectors). Writes one record per setting (stdout and
``benchmarks/out/speed/``): recall@K against exact, and milliseconds per query for both, single query at a
time (the serving case).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.data.batches import eval_histories, position_ids, trim
from thinkrec.runs import load_data, load_run
from thinkrec.serve.ann import AnnIndex, recall_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--k", default="10,100")
    parser.add_argument("--ef", default="64,128,256")
    parser.add_argument("--threads", type=int, default=1)
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("speed", "ann_recall", args.records)
    tune_allocator()  # as the CLI does
    torch.set_num_threads(args.threads)
    cfg, model = load_run(args.run_dir)
    _, split = load_data(cfg)
    samples = split.test.subset(np.arange(min(args.users, len(split.test))))
    (hist,) = trim(eval_histories(split, samples, model.backbone.max_len))
    inputs = torch.from_numpy(hist)
    with torch.no_grad():
        states = model.encode(inputs, position_ids(inputs.shape[1], model.backbone.max_len))
        users = model.user_vector(states, cfg.eval.inference, cfg.eval.inference_step)
        queries, items = model.scorer.prepare(users, model.item_vectors())
    t0 = time.perf_counter()
    index = AnnIndex.for_model(model)
    build_seconds = time.perf_counter() - t0
    for k in [int(x) for x in args.k.split(",")]:
        exact_ids = []
        t0 = time.perf_counter()
        for q in queries:
            exact_ids.append(torch.topk(q[None] @ items.T, k, dim=1).indices[0] + 1)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        exact = torch.stack(exact_ids)
        for ef in [int(x) for x in args.ef.split(",")]:
            index.index.hnsw.efSearch = ef
            found = []
            t0 = time.perf_counter()
            for q in queries:
                found.append(index.search(q[None], k)[0][0])
            ann_ms = (time.perf_counter() - t0) * 1000 / len(queries)
            records.write(
                {
                    "run_dir": args.run_dir,
                    "n_items": model.n_items,
                    "users": len(queries),
                    "k": k,
                    "ef_search": ef,
                    f"recall@{k}": recall_at_k(torch.stack(found), exact),
                    "ann_ms_per_query": ann_ms,
                    "exact_ms_per_query": exact_ms,
                    "index_build_seconds": build_seconds,
                    "threads": args.threads,
                }
            )


if __name__ == "__main__":
    main()
