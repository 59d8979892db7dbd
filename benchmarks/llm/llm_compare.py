"""R²ec vs its no-reasoning variant vs SASRec on the same split, the same test samples and the same masking.

    python -m benchmarks.llm.llm_compare --llm runs/llm-recpo --llm runs/llm-noreason --sasrec-run runs/llm-sasrec

Each LLM run directory is one written by ``thinkrec llm train`` (its ``results.json`` holds the ranks of the
test samples). SASRec is trained with the engine (preset ``ml100k-time-sasrec``, same data + split) when
``--sasrec-run`` does not hold a run yet, then ranks the *same* test samples as the LLM runs (drawn with the
LLM config's ``sample.seed``) over the full catalogue with the user's whole history masked. The comparison
goes to ``--out`` (default ``benchmarks/out/llm/compare.json``) as ``{"models": ..., "provenance": ...}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.data.batches import gather_histories, position_ids, trim
from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.data import eval_examples
from thinkrec.llm.recpo import history_mask, mask_scores
from thinkrec.llm.run import load_split
from thinkrec.runs import load_run, train

KS = [5, 10, 20]


def sasrec_ranks(run_dir: Path, cfg: LLMRunConfig, epochs: int) -> tuple[np.ndarray, dict[str, Any]]:
    if not (run_dir / "results.json").exists():
        engine_cfg = load_config(
            "ml100k-time-sasrec",
            [f"train.epochs={epochs}", "train.threads=1", "progress=never", "eval.ks=[5,10,20]"],
        )
        if engine_cfg.data.split != cfg.data.split or engine_cfg.data.source != cfg.data.source:
            raise SystemExit("the SASRec preset's data/split differs from the LLM config's")
        train(engine_cfg, run_dir)
    engine_cfg, model = load_run(run_dir, "best")
    split = load_split(cfg)
    examples = eval_examples(split, cfg, "test")
    model.eval()
    max_len = model.backbone.max_len
    users = np.array([ex.user for ex in examples])
    ends = np.array([ex.position for ex in examples])
    hist = gather_histories(split.dataset, users, ends, max_len, keep=split.history_keep)
    (trimmed,) = trim(hist)
    inputs = torch.from_numpy(trimmed)
    with torch.no_grad():
        states = model.encode(inputs, position_ids(inputs.shape[1], max_len))
        scores = model.scorer(model.user_vector(states), model.item_vectors()).float()  # column = item id - 1
    full = torch.cat([torch.zeros(len(examples), 1), scores], dim=1)  # column = item id (0: pad)
    masked = history_mask([ex.seen for ex in examples], full.shape[1])
    ranks = target_ranks(mask_scores(full, masked), torch.as_tensor([ex.target for ex in examples])).numpy()
    return ranks, {"sasrec_run": str(run_dir), "max_len": max_len}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", action="append", default=[], help="an LLM run directory (repeatable)")
    parser.add_argument("--sasrec-run", required=True, help="SASRec run directory (trained if empty)")
    parser.add_argument("--sasrec-epochs", type=int, default=200, help="SASRec max epochs (early stopping)")
    parser.add_argument(
        "--out", type=Path, default=harness.out_dir("llm", "compare.json"), help="the comparison JSON (%(default)s)"
    )
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    rows: dict[str, dict[str, Any]] = {}
    cfg: LLMRunConfig | None = None
    for run in args.llm:
        path = Path(run)
        run_cfg = LLMRunConfig.model_validate_json((path / "config.json").read_text())
        results = json.loads((path / "results.json").read_text())
        name = f"R2ec-{run_cfg.recpo.variant}" + (
            f"-{run_cfg.recpo.pairing}" if run_cfg.recpo.variant == "recpo" else ""
        )
        name += (
            f" (lr {run_cfg.recpo.lr:g}, {run_cfg.recpo.steps} steps x {run_cfg.recpo.users_per_step} users,"
            f" {run_cfg.recpo.negatives} negatives)"
        )
        rows[name] = {
            **metrics_from_ranks(results["test"]["ranks"], KS),
            "n": results["test"]["n_samples"],
            "steps": run_cfg.recpo.steps,
            "reward_first_half": results["reward_first_half"],
            "reward_second_half": results["reward_second_half"],
        }
        if cfg is not None and (cfg.sample != run_cfg.sample or cfg.data != run_cfg.data):
            raise SystemExit(f"{run}: different data or sample settings than the first run")
        cfg = run_cfg
    if cfg is None:
        raise SystemExit("give at least one --llm run")
    ranks, info = sasrec_ranks(Path(args.sasrec_run), cfg, args.sasrec_epochs)
    rows["SASRec"] = {**metrics_from_ranks(ranks, KS), "n": len(ranks), **info}
    head = ["model", "n"] + [f"{m}@{k}" for k in KS for m in ("HR", "NDCG")]
    print(" | ".join(head))
    for name, row in rows.items():
        print(" | ".join([name, str(row["n"])] + [f"{row[f'{m}@{k}']:.4f}" for k in KS for m in ("HR", "NDCG")]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(harness.stamp({"models": rows}), indent=2, default=str))


if __name__ == "__main__":
    main()
