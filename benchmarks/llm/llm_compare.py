"""R²ec vs its no-reasoning variant vs SASRec on the same split, the same test samples and the same masking.

    python -m benchmarks.llm.llm_compare --llm runs/llm-recpo --llm runs/llm-noreason --sasrec-run runs/llm-sasrec

Each LLM run directory is one written by ``thinkrec llm train`` (its ``results.json`` holds the ranks of the
test samples). SASRec is trained with the engine (preset ``ml100k-time-sasrec``, same data + split) when
``--sasrec-run`` does not hold a run yet, then ranks the *same* test samples as the LLM runs (drawn with the
LLM config's ``sample.seed``) over the full catalogue with the user's whole history masked. The comparison
goes to ``--out`` (default ``benchmarks/out/llm/compare.json``, and the table beside it as ``.md``): one row per
model -- most popular (training counts, from the first run's report), each LLM run, SASRec -- on the same
samples, each with its paired tests against the first ``--llm`` run (paired bootstrap on NDCG@k, McNemar on
HR@k; the samples' ``(user, position)`` lists must match).
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
from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import gather_histories, position_ids, trim
from thinkrec.data.split import Split
from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.data import Example, eval_examples
from thinkrec.llm.evaluation import compare_reports
from thinkrec.llm.recpo import history_mask, mask_scores
from thinkrec.llm.run import load_split
from thinkrec.runs import load_run, train

KS = [5, 10, 20]


def split_overrides(cfg: LLMRunConfig) -> list[str]:
    """Dotted overrides that give an engine config the LLM config's split (JSON values parse as YAML)."""
    return [f"data.split.{key}={json.dumps(value)}" for key, value in cfg.data.split.model_dump().items()]


def check_same_data(engine_cfg: RunConfig, cfg: LLMRunConfig, run_dir: Path) -> None:
    """Refuse a SASRec run on another source or split: its training data may hold the LLM's test period."""
    if engine_cfg.data.split != cfg.data.split or engine_cfg.data.source != cfg.data.source:
        raise SystemExit(
            f"{run_dir}: SASRec was trained on another source or split ({engine_cfg.data.split}) than the LLM runs"
            f" ({cfg.data.split}); give an empty --sasrec-run folder to train one on the LLM's split"
        )


def sasrec_ranks(
    run_dir: Path, cfg: LLMRunConfig, split: Split, examples: list[Example], epochs: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """SASRec's ranks of ``examples`` (the LLM runs' test samples of ``split``), trained first if needed."""
    if not (run_dir / "results.json").exists():
        engine_cfg = load_config(
            "ml100k-time-sasrec",
            [
                f"train.epochs={epochs}",
                "train.threads=1",
                "progress=never",
                "eval.ks=[5,10,20]",
                *split_overrides(cfg),
            ],
        )
        check_same_data(engine_cfg, cfg, run_dir)
        train(engine_cfg, run_dir)
    engine_cfg, model = load_run(run_dir, "best")
    check_same_data(engine_cfg, cfg, run_dir)
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


def llm_name(run_cfg: LLMRunConfig, best_step: int | None = None) -> str:
    """The run's settings; ``best_step``: the step whose weights were tested (best validation), when selected."""
    name = f"R2ec-{run_cfg.recpo.variant}" + (f"-{run_cfg.recpo.pairing}" if run_cfg.recpo.variant == "recpo" else "")
    tested = f", weights of step {best_step}" if best_step is not None else ""
    return name + (
        f" (lr {run_cfg.recpo.lr:g}, {run_cfg.recpo.steps} steps x {run_cfg.recpo.users_per_step} users{tested},"
        f" {run_cfg.recpo.negatives} negatives)"
    )


def row_names(paths: list[Path], configs: list[LLMRunConfig], best_steps: list[int | None] | None = None) -> list[str]:
    """A distinct row name per LLM run: its settings, and its folder when two runs' settings read the same."""
    names = [
        llm_name(run_cfg, best) for run_cfg, best in zip(configs, best_steps or [None] * len(configs), strict=True)
    ]
    if len(set(names)) < len(names):  # runs that differ in what the name leaves out (seed, precision, ...)
        names = [f"{name} [{label}]" for name, label in zip(names, harness.run_labels(paths), strict=True)]
    return names


def paired_columns(reports: dict[str, dict[str, Any]], reference: str, k: int) -> dict[str, dict[str, Any]]:
    """Each row's paired tests against ``reference`` (row - reference): bootstrap on NDCG@k, McNemar on HR@k."""
    out = {}
    for name, report in reports.items():
        if name != reference:
            out[name] = compare_reports(reports[reference], report, k=k)
    return out


def markdown(rows: dict[str, dict[str, Any]], tests: dict[str, dict[str, Any]], reference: str, k: int) -> str:
    head = ["model", "n"] + [f"{m}@{c}" for c in KS for m in ("HR", "NDCG")]
    head += [f"NDCG@{k} − ref. [95% CI], p (bootstrap)", f"HR@{k} only ref. / only row, p (McNemar)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name + (" (reference)" if name == reference else ""), str(row["n"])]
        cells += [f"{row[f'{m}@{c}']:.4f}" for c in KS for m in ("HR", "NDCG")]
        t = tests.get(name)
        if t is None:
            cells += ["–", "–"]
        else:
            nd, hr = t[f"NDCG@{k}"], t[f"HR@{k}"]
            cells.append(f"{nd['mean_diff']:+.4f} [{nd['ci_low']:+.4f}, {nd['ci_high']:+.4f}], p {nd['p_value']:.3g}")
            cells.append(f"{hr['only_a']} / {hr['only_b']}, p {hr['p_value']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", action="append", default=[], help="an LLM run directory (repeatable)")
    parser.add_argument("--sasrec-run", required=True, help="SASRec run directory (trained if empty)")
    parser.add_argument("--sasrec-epochs", type=int, default=200, help="SASRec max epochs (early stopping)")
    parser.add_argument("--k", type=int, default=20, help="the cut-off of the paired tests")
    parser.add_argument(
        "--out", type=Path, default=harness.out_dir("llm", "compare.json"), help="the comparison JSON (%(default)s)"
    )
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    if not args.llm:
        raise SystemExit("give at least one --llm run")
    paths = [Path(run) for run in args.llm]
    configs = [LLMRunConfig.model_validate_json((path / "config.json").read_text()) for path in paths]
    cfg = configs[0]  # every run must share its data and samples
    every_results = [json.loads((path / "results.json").read_text()) for path in paths]
    names = row_names(paths, configs, [r.get("selection", {}).get("best_step") for r in every_results])
    reports: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for path, run_cfg, name, results in zip(paths, configs, names, every_results, strict=True):
        if cfg.sample != run_cfg.sample or cfg.data != run_cfg.data:
            raise SystemExit(f"{path}: different data or sample settings than the first run")
        if not reports and "popularity" in results["test"]:  # the same samples and masking as every run's
            reports["most popular (training counts)"] = {
                "ranks": results["test"]["popularity"]["ranks"],
                "samples": results["test"]["samples"],
            }
        reports[name] = results["test"]
        extra[name] = {
            "run": str(path),
            "steps": run_cfg.recpo.steps,
            "reward_first_half": results.get("reward_first_half"),
            "reward_second_half": results.get("reward_second_half"),
            "protocol": results["test"].get("protocol"),
        }
    split = load_split(cfg)
    examples = eval_examples(split, cfg, "test")
    ranks, info = sasrec_ranks(Path(args.sasrec_run), cfg, split, examples, args.sasrec_epochs)
    reports["SASRec (all training data)"] = {
        "ranks": ranks.tolist(),
        "samples": [[ex.user, ex.position] for ex in examples],
    }
    extra["SASRec (all training data)"] = info
    reference = names[0]
    tests = paired_columns(reports, reference, args.k)
    rows = {
        name: {**metrics_from_ranks(np.asarray(r["ranks"]), KS), "n": len(r["ranks"]), **extra.get(name, {})}
        for name, r in reports.items()
    }
    table = markdown(rows, tests, reference, args.k)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"models": rows, "paired_tests_against": reference, "paired_tests": tests, "table": table}
    args.out.write_text(json.dumps(harness.stamp(record), indent=2, default=str))
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
