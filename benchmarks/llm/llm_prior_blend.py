"""Does a trained LLM run's score add anything to a popularity list? Validation only.

    python -m benchmarks.llm.llm_prior_blend RUN --valid-users 400 --threads 1

Scores ``sample.valid_users`` seeded validation samples with the run's best weights (no reasoning: prompt +
marker), then ranks the catalogue by ``score + beta * log(1 + training count)`` for each ``--beta`` (the pad
item and the user's history masked, pessimistic ties). The samples are cut into two halves (even and odd
positions); beta is chosen on one half and reported on the other, both ways, beside most popular on the same
half. A run trained with ``model.item_prior`` already adds the prior (beta = 0 is then the run itself).
Prints one JSON record with machine, torch version and commit.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks import harness
from thinkrec.eval.metrics import per_sample, target_ranks
from thinkrec.llm.data import PromptBank, eval_examples
from thinkrec.llm.evaluation import popularity_ranks, training_counts
from thinkrec.llm.recpo import history_mask, mask_scores
from thinkrec.llm.run import load_llm_run, load_split, log_popularity, make_builder
from thinkrec.llm.trainer import LLMTrainer

DEFAULT_BETAS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="an LLM run directory (thinkrec llm train)")
    parser.add_argument("--valid-users", type=int, default=400, help="validation samples (default 400)")
    parser.add_argument("--beta", type=float, action="append", help="prior weights to try (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    betas = args.beta or DEFAULT_BETAS
    cfg, model = load_llm_run(args.run)
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"valid_users": args.valid_users})})
    split = load_split(cfg)
    trainer = LLMTrainer(model, PromptBank(split.dataset, cfg, make_builder(model, cfg)), cfg)
    examples = eval_examples(split, cfg, "valid")
    model.eval()
    trainer.ensure_item_table()
    bs = cfg.eval.batch_size
    with torch.no_grad():
        parts = [trainer.user_vectors(examples[i : i + bs], reasoning=False)[0] for i in range(0, len(examples), bs)]
        scores = model.score_all(torch.cat(parts)).float()
    masked = history_mask([ex.seen for ex in examples], scores.shape[1], device=scores.device)
    targets = torch.as_tensor([ex.target for ex in examples], device=scores.device)
    prior = log_popularity(split).to(scores.device)

    def ndcg20(ranked: torch.Tensor) -> np.ndarray:
        return per_sample(target_ranks(mask_scores(ranked, masked), targets).cpu().numpy(), "NDCG@20")

    rows = {beta: ndcg20(scores + beta * prior) for beta in betas}
    popular = per_sample(popularity_ranks(training_counts(split), examples, mask_history=True), "NDCG@20")
    halves = {"even": np.arange(0, len(examples), 2), "odd": np.arange(1, len(examples), 2)}
    held_out = {}
    for chosen_on, other in (("even", "odd"), ("odd", "even")):
        best = max(betas, key=lambda b: rows[b][halves[chosen_on]].mean())
        held_out[f"beta chosen on {chosen_on}, reported on {other}"] = {
            "beta": best,
            "NDCG@20": float(rows[best][halves[other]].mean()),
            "most_popular": float(popular[halves[other]].mean()),
        }
    record = harness.stamp(
        {
            "benchmark": "llm_prior_blend",
            "run": str(args.run),
            "item_prior_in_run": cfg.model.item_prior,
            "samples": f"{len(examples)} seeded validation samples (sample.seed={cfg.sample.seed})",
            "protocol": "full catalogue, pad and the user's history masked, pessimistic ties, no reasoning",
            "most_popular": float(popular.mean()),
            "NDCG@20_by_beta": {str(b): float(v.mean()) for b, v in rows.items()},
            "held_out": held_out,
        }
    )
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
