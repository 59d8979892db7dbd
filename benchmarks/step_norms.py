"""How big each reasoning step's user vector is, and how well it ranks alone: a diagnosis of ERL/PRL runs.

    python benchmarks/step_norms.py benchmarks/results/rearec-prefix/runs/beauty-time/sasrec{,-erl,-prl}-s1

For each run directory (its best checkpoint) and the first ``--samples`` samples of ``--split`` (default
validation: this is for understanding a training objective, not for reporting a result), prints one JSON
line per run with, for every step r_0..r_K: the mean L2 norm of the user vector, the mean (over samples)
standard deviation of its raw dot products with the item vectors, and NDCG@20 when that step alone
scores the full catalogue with the model's own scorer (the evaluator's per-step ranks under the run's
[eval] settings). Also the mean norm of the item vectors.
With a dot-product scorer a step trained at a higher temperature (PRL's progressive schedule) can only
fit its targets with proportionally larger logits, which shows up here as a larger norm.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from thinkrec.data.batches import eval_histories, trim
from thinkrec.eval.evaluator import encode_in_blocks, evaluate
from thinkrec.eval.metrics import metrics_from_ranks
from thinkrec.runs import load_data, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--split", choices=["valid", "test"], default="valid")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        cfg, model = load_run(run_dir)
        _, split = load_data(cfg)
        samples = split.valid if args.split == "valid" else split.test
        part = samples.subset(np.arange(min(args.samples, len(samples))))
        (history,) = trim(eval_histories(split, part, model.backbone.max_len))
        # ranks through the shipped evaluator: the model's own scorer (e.g. cosine), blocks, tie rule
        step_ranks = evaluate(model, split, part, cfg.eval, steps=None).step_ranks
        with torch.no_grad():
            states = encode_in_blocks(model, torch.from_numpy(history), None, cfg.eval)
            items = model.item_vectors().detach()
            steps = []
            for k in range(states.shape[1]):
                logits = states[:, k] @ items.T  # raw dot products: what a norm change does to the scale
                steps.append(
                    {
                        "step": k,
                        "norm": float(states[:, k].norm(dim=-1).mean()),
                        "logit_std": float(logits.std(dim=1).mean()),
                        "NDCG@20": metrics_from_ranks(step_ranks[k], [20])["NDCG@20"],
                    }
                )
        row = {
            "run": str(run_dir),
            "split": args.split,
            "samples": len(part),
            "reasoning": cfg.reasoning.kind,
            "item_norm": float(items.norm(dim=-1).mean()),
            "steps": steps,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
