"""How often a trained run recommends what the user already has: a diagnosis, not a metric.

    THINKREC_DATA_DIR=../shared/data python benchmarks/history_in_topk.py runs/s3rec-beauty-s1 [--k 10]

For every test sample of the run's own split (history not masked, full catalogue, the best checkpoint),
prints one JSON line: the share of samples whose top-1 item is the newest history item, the share with the
newest history item anywhere in the top-K, the mean number of history items in the top-K, and the share of
test targets that occur in their own history (if that is ~0, ranking history items high only costs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from thinkrec.allocator import tune_allocator
from thinkrec.data.batches import eval_histories, trim
from thinkrec.eval.evaluator import encode_in_blocks
from thinkrec.runs import load_data, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    cfg, model = load_run(args.run_dir, "best")
    _, split = load_data(cfg)
    model.eval()
    max_len = model.backbone.max_len
    samples = split.test
    first_is_last = in_topk = history_hits = target_in_history = 0
    for start in range(0, len(samples), args.batch):
        part = samples.subset(slice(start, start + args.batch))
        hist = eval_histories(split, part, max_len)
        (trimmed,) = trim(hist)
        with torch.no_grad():
            states = encode_in_blocks(model, torch.from_numpy(trimmed), None, cfg.eval)
            scores = model.score(model.user_vector(states))  # column = item id - 1
        top = (scores.topk(args.k, dim=1).indices + 1).numpy()
        newest = hist[:, -1]
        first_is_last += int((top[:, 0] == newest).sum())
        in_topk += int((top == newest[:, None]).any(axis=1).sum())
        seen = np.zeros((len(part), model.n_items + 1), dtype=bool)
        np.put_along_axis(seen, hist, True, axis=1)
        seen[:, 0] = False
        history_hits += int(np.take_along_axis(seen, top, axis=1).sum())
        target_in_history += int(seen[np.arange(len(part)), part.targets].sum())
    n = len(samples)
    print(
        json.dumps(
            {
                "run": str(args.run_dir),
                "n_test": n,
                "k": args.k,
                "protocol": "test split of the run, history not masked, full catalogue, best checkpoint",
                "top1_is_newest_history_item": first_is_last / n,
                "newest_history_item_in_topk": in_topk / n,
                "history_items_in_topk_mean": history_hits / n,
                "target_in_history": target_in_history / n,
            }
        )
    )


if __name__ == "__main__":
    main()
