"""An R²ec run's ranking quality on its own training examples, with a freshly built item table.

    python -m benchmarks.llm.llm_train_fit runs/llm-noreason --n 200

During training only the step's target rows of the cached item table are re-encoded; every other row
keeps the vector of the model as it was when the table was built. The training reward ranks the fresh
target among those stale rows. This script ranks the same training examples the way evaluation does (the
whole table rebuilt with the trained model, history masked, full catalogue) and writes both as one record
(stdout and ``benchmarks/out/llm/``), so a gap
between the logged reward and this NDCG shows how much of the reward came from the stale table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.recpo import ndcg_reward
from thinkrec.llm.run import load_llm_run, load_split, make_builder
from thinkrec.llm.trainer import LLMTrainer
from thinkrec.runs import read_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=200, help="training examples to rank (the first n)")
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("llm", "train_fit", args.records)
    tune_allocator()  # as the CLI does
    cfg, model = load_llm_run(args.run_dir)
    split = load_split(cfg)
    bank = PromptBank(split.dataset, cfg, make_builder(model, cfg))
    trainer = LLMTrainer(model, bank, cfg)
    examples = train_examples(split, cfg)[: args.n]
    report = trainer.evaluate(examples)
    log = read_log(args.run_dir)
    half = len(log) // 2
    records.write(
        {  # the reward's NDCG (cut-off recpo.ndcg_cutoff) on the same footing as the log
            "run": str(args.run_dir),
            "examples": len(examples),
            "protocol": "training examples, item table rebuilt with the trained model, history masked, full catalogue",
            "metrics_fresh_table": report["metrics"],
            "reward_ndcg_fresh_table": float(ndcg_reward(torch.as_tensor(report["ranks"]), trainer.cutoff).mean()),
            "logged_train_ndcg_second_half": float(np.mean([row["ndcg"] for row in log[half:]])),
            "logged_train_reward_second_half": float(np.mean([row["reward"] for row in log[half:]])),
        }
    )


if __name__ == "__main__":
    main()
