"""Reproduce ReaRec's comparison: a backbone vs backbone+ERL vs backbone+PRL with the same budget, over seeds.

    python benchmarks/rearec_repro.py --dataset beauty --protocol time --seeds 3 --threads 1 \
        --out benchmarks/results/rearec
    python benchmarks/rearec_repro.py --dataset beauty --protocol time --backbone morec --seeds 3

For every seed, trains (or resumes) the presets ``<dataset>-<protocol>-<backbone>``, ``-<backbone>-erl``
and ``-<backbone>-prl`` (backbone: sasrec, bert4rec, gru4rec, unisrec, morec; default sasrec) with the
same epochs cap, early stopping and seed through :func:`thinkrec.runs.train`, takes the per-sample test
ranks of every reasoning step that training saved (re-scoring the best checkpoint once for runs trained
before runs saved them), and keeps them with the run's config, results and epoch log in
``<out>/records/<dataset>-<protocol>/<variant>-s<seed>/`` (~100 KB, no checkpoints: records are committed,
so the table is rebuilt on a fresh clone and a later session adds seeds without retraining the finished
ones; delete a record to rebuild it from its run). ``--variants base,erl`` leaves a
variant out; ``--first-seed 2`` trains seeds 2..N only, so two processes can split the seeds (``--seeds 1``
and ``--first-seed 2``; a last run over all seeds, all finished, writes the combined table). ``--erl`` and
``--prl`` give overrides for one variant only (a value chosen on validation, e.g. ``--erl
reasoning.erl_lambda=0.001``); the report lists every override. After every
finished seed it (re)writes ``<out>/rearec-<dataset>-<protocol>[-<backbone>].{md,json}`` (no suffix for
sasrec), so a long run that is stopped still leaves the table of the seeds it completed:

- test N@10, N@20, R@10, R@20 (R = Recall = HR with one target): mean +- std over seeds, and the relative
  change of each reasoning variant vs the backbone;
- a paired t-test of per-sample NDCG@20 (variant vs backbone, samples pooled across seeds);
- per-step curves (every step r_0..r_K scored alone, the mean of steps, and the per-sample oracle, which
  is an analysis and not a method), and seconds per training epoch;
- the evaluation protocol the numbers were measured under.

The last line printed is one machine-readable JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig
from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import metrics_from_ranks, per_sample
from thinkrec.eval.significance import paired_t_test
from thinkrec.eval.steps import oracle_ranks
from thinkrec.runs import (
    RANKS_FILES,
    changed_keys,
    load_data,
    read_log,
    saved_config,
    saved_ranks,
    set_threads,
    train,
)
from thinkrec.storage import atomic_write_text

BACKBONES = ("sasrec", "bert4rec", "gru4rec", "unisrec", "morec")
METRICS = {"N@10": "NDCG@10", "N@20": "NDCG@20", "R@10": "HR@10", "R@20": "HR@20"}
TEST_METRIC = "NDCG@20"
RECORD_FILES = ("config.json", "results.json", "log.jsonl")  # and the test ranks (RANKS_FILES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["ml100k", "beauty", "game"], required=True)
    parser.add_argument("--protocol", choices=["time", "loo"], default="time", help="default time (the paper's)")
    parser.add_argument("--backbone", choices=BACKBONES, default="sasrec", help="default sasrec")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 1..N (default 3)")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=1,
        help="train seeds FIRST..N only (default 1); finished runs of the earlier seeds are re-scored and"
        " reported, missing ones are left out: two processes can split the seeds between them",
    )
    parser.add_argument(
        "--variants",
        default="base,erl,prl",
        help="comma list of base, erl, prl to train and report (default all three; the table needs base)",
    )
    parser.add_argument("--epochs", type=int, help="cap on training epochs (default: the presets' 200)")
    parser.add_argument("--patience", type=int, help="early-stopping patience (default: the presets' 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rearec"), help="output folder")
    parser.add_argument(
        "--report-tag",
        default="",
        help="append -TAG to the table's file names (rearec-<dataset>-<protocol>-TAG.{md,json}), so a table of"
        " a subset of the variants or seeds does not replace the folder's main table",
    )
    for variant in ("erl", "prl"):
        parser.add_argument(
            f"--{variant}",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"a dotted override for the {variant.upper()} preset only (repeatable), e.g. a value chosen on"
            f" validation: --{variant} reasoning.{'erl_lambda=0.001' if variant == 'erl' else 'prl_alpha=2.0'}",
        )
    parser.add_argument("overrides", nargs="*", help="dotted overrides for all three presets, e.g. model.hidden=32")
    return parser.parse_args(argv)


def run_dir_of(args: argparse.Namespace, variant: str, seed: int) -> Path:
    path: Path = args.out / "runs" / f"{args.dataset}-{args.protocol}" / f"{variant}-s{seed}"
    return path


def record_dir_of(args: argparse.Namespace, variant: str, seed: int) -> Path:
    path: Path = args.out / "records" / f"{args.dataset}-{args.protocol}" / f"{variant}-s{seed}"
    return path


def is_finished(args: argparse.Namespace, variant: str, seed: int) -> bool:
    """Whether the run of ``variant`` and ``seed`` is over: its record exists, or its run directory has results."""
    return record_dir_of(args, variant, seed).exists() or (run_dir_of(args, variant, seed) / "results.json").exists()


def write_record(record: Path, run_dir: Path, cfg: RunConfig) -> None:
    """Keep what the tables need of a finished run, small enough to commit: its config, results, epoch log
    and per-sample test ranks (also of the test window's unseen targets, for cold-item analyses), no
    checkpoints. Written into a sibling folder and renamed, so a record is whole or absent."""
    tmp = record.with_name(record.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copyfile(run_dir / name, tmp / name)
    for name, result in recorded_ranks(run_dir, cfg).items():
        result.save(tmp / RANKS_FILES[name])
    tmp.replace(record)


def recorded_ranks(run_dir: Path, cfg: RunConfig) -> dict[str, EvalResult]:
    """The best checkpoint's per-sample ranks on test and on the test window's unseen targets."""
    _, split = load_data(cfg)
    groups = {"test": split.test, "test_unseen": split.unseen_targets.get("test")}
    return {
        name: saved_ranks(run_dir, name, samples, cfg, split)
        for name, samples in groups.items()
        if samples is not None and len(samples)
    }


def same_settings(saved: RunConfig, cfg: RunConfig, where: Path) -> None:
    if changed := changed_keys(saved, cfg):
        raise SystemExit(f"{where} was trained with other settings ({', '.join(changed)}); use another --out")


def variant_overrides(args: argparse.Namespace, variant: str) -> list[str]:
    """The ``--erl`` / ``--prl`` overrides that apply to ``variant`` (a preset name such as ``sasrec-erl``)."""
    kind = variant.rpartition("-")[2]
    return list(getattr(args, kind, [])) if kind in ("erl", "prl") else []


def run_variant(args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one preset for one seed; return its results and per-sample test ranks.

    A finished run is read, not resumed: from its record when there is one (records are committed, so a table
    is rebuilt on a fresh clone without checkpoints), else from its run directory, whose record is written
    then. No lock on a finished run (another process may be reading it too).
    """
    preset = f"{args.dataset}-{args.protocol}-{variant}"
    overrides = [f"train.seed={seed}", f"train.threads={args.threads}", "train.progress=false", *args.overrides]
    overrides += variant_overrides(args, variant)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.patience is not None:
        overrides.append(f"train.patience={args.patience}")
    cfg = load_config(preset, overrides)
    run_dir = run_dir_of(args, variant, seed)
    record = record_dir_of(args, variant, seed)
    if not record.exists():
        if not (run_dir / "results.json").exists():
            train(cfg, run_dir)
        same_settings(saved_config(run_dir), cfg, run_dir)
        write_record(record, run_dir, cfg)
    same_settings(saved_config(record), cfg, record)
    results = json.loads((record / "results.json").read_text())
    history = read_log(record)
    warmup = cfg.reasoning.warmup_epochs if cfg.reasoning.enabled else 0
    seconds = [row["train_seconds"] for row in history if row["epoch"] >= warmup]
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "results": results,
        "result": EvalResult.load(record / RANKS_FILES["test"]),
        "epoch_seconds": statistics.median(seconds) if seconds else None,  # median: robust to a paused epoch
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def step_curves(results: list[EvalResult], ks: list[int]) -> dict[str, Any]:
    """Per-step metrics averaged over seeds: every step alone, the mean of steps, the oracle."""
    names = [METRICS[k] for k in ("N@20", "R@20")]

    def averaged(ranks: list[np.ndarray]) -> dict[str, float]:
        rows = [metrics_from_ranks(r, ks) for r in ranks]
        return {name: statistics.fmean(row[name] for row in rows) for name in names}

    n_steps = results[0].step_ranks.shape[0]
    curves: dict[str, Any] = {"steps": [averaged([r.step_ranks[k] for r in results]) for k in range(n_steps)]}
    if results[0].mean_ranks is not None:
        curves["mean"] = averaged([r.mean_ranks for r in results if r.mean_ranks is not None])
    curves["oracle"] = averaged([oracle_ranks(r.step_ranks) for r in results])
    curves["oracle_note"] = "analysis, not a method: best step per sample chosen with the ground truth"
    return curves


def summarise(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base_name = args.backbone
    first = runs[base_name][0]["results"]["test"]
    ks = list(first["protocol"]["ks"])
    summary: dict[str, Any] = {
        "dataset": args.dataset,
        "protocol_name": args.protocol,
        "backbone": base_name,
        "seeds": [run["seed"] for run in runs[base_name]],
        "epochs_cap": args.epochs,
        "overrides": {"all": list(args.overrides), **{v: o for v in runs if (o := variant_overrides(args, v))}},
        "protocol": {k: v for k, v in first["protocol"].items() if k != "seed"},
        "n_test": first["n_samples"],
        "variants": {},
    }
    base_samples = np.concatenate([per_sample(run["result"].ranks, TEST_METRIC) for run in runs[base_name]])
    for variant, variant_runs in runs.items():
        metrics = {
            short: mean_std([r["results"]["test"]["metrics"][name] for r in variant_runs])
            for short, name in METRICS.items()
        }
        entry: dict[str, Any] = {
            "metrics": metrics,
            "per_seed": {
                short: [r["results"]["test"]["metrics"][name] for r in variant_runs] for short, name in METRICS.items()
            },
            "best_epochs": [r["results"]["best_epoch"] for r in variant_runs],
            "seconds_per_epoch": mean_or_none([r["epoch_seconds"] for r in variant_runs]),
            "inference": variant_runs[0]["results"]["test"]["protocol"].get("reasoning", "backbone (r_0)"),
        }
        if variant != base_name:
            base = summary["variants"][base_name]["metrics"]
            entry["relative_change"] = {
                short: (metrics[short]["mean"] - base[short]["mean"]) / base[short]["mean"]
                if base[short]["mean"]
                else float("nan")
                for short in METRICS
            }
            samples = np.concatenate([per_sample(run["result"].ranks, TEST_METRIC) for run in variant_runs])
            test = paired_t_test(base_samples, samples)
            entry["paired_t_test"] = {
                "metric": f"per-sample {TEST_METRIC}, pooled over seeds",
                "n": test.n,
                "mean_diff": test.mean_diff,
                "t": test.t,
                "p_value": test.p_value,
            }
            entry["step_curves"] = step_curves([run["result"] for run in variant_runs], ks)
        summary["variants"][variant] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    p = summary["protocol"]
    lines = [
        f"## ReaRec reproduction: {summary['dataset']} ({summary['protocol_name']})",
        "",
        f"Protocol: {p.get('split')}, {p.get('candidates')}, {p.get('history_masking')}, ks {p.get('ks')}; "
        f"{summary['n_test']} test samples; seeds {summary['seeds']}; epochs cap {summary['epochs_cap']}.",
        "",
        *(
            [f"Overrides: {'; '.join(f'{who}: ' + ' '.join(o) for who, o in summary['overrides'].items() if o)}.", ""]
            if any(summary.get("overrides", {}).values())
            else []
        ),
        "| method | N@10 | N@20 | R@10 | R@20 | p (N@20, paired t) | s/epoch | best epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, entry in summary["variants"].items():
        cells = []
        for short in METRICS:
            m = entry["metrics"][short]
            cell = f"{m['mean']:.4f} ± {m['std']:.4f}"
            if "relative_change" in entry:
                cell += f" ({entry['relative_change'][short]:+.1%})"
            cells.append(cell)
        p_value = f"{entry['paired_t_test']['p_value']:.3g}" if "paired_t_test" in entry else "-"
        secs = f"{entry['seconds_per_epoch']:.1f}" if entry["seconds_per_epoch"] is not None else "-"
        lines.append(f"| {variant} | {' | '.join(cells)} | {p_value} | {secs} | {entry['best_epochs']} |")
    lines += [
        "",
        f"Relative change vs {summary['backbone']} in brackets. R@K = Recall@K = HR@K (one target per sample).",
        "",
    ]
    for variant, entry in summary["variants"].items():
        if "step_curves" not in entry:
            continue
        curves = entry["step_curves"]
        lines += [
            f"### {variant}: metric per reasoning step (test, mean over seeds; {entry['inference']})",
            "",
            "| user vector | NDCG@20 | HR@20 |",
            "|---|---|---|",
        ]
        for k, row in enumerate(curves["steps"]):
            lines.append(f"| r_{k} | {row['NDCG@20']:.4f} | {row['HR@20']:.4f} |")
        if "mean" in curves:
            lines.append(f"| mean of steps | {curves['mean']['NDCG@20']:.4f} | {curves['mean']['HR@20']:.4f} |")
        lines.append(
            f"| oracle (analysis, not a method) | {curves['oracle']['NDCG@20']:.4f} | {curves['oracle']['HR@20']:.4f} |"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()  # as the CLI does
    set_threads(args.threads)
    names = {"base": args.backbone, "erl": f"{args.backbone}-erl", "prl": f"{args.backbone}-prl"}
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - names.keys())
    if unknown or "base" not in chosen:
        raise SystemExit(f"--variants: {args.variants!r} must list base and any of erl, prl (unknown: {unknown})")
    variants = tuple(names[v] for v in ("base", "erl", "prl") if v in chosen)
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    suffix = "" if args.backbone == "sasrec" else f"-{args.backbone}"
    if args.report_tag:
        suffix += f"-{args.report_tag}"
    stem = args.out / f"rearec-{args.dataset}-{args.protocol}{suffix}"
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(1, args.seeds + 1):
        # another process's seed (below --first-seed) is reported only once all its runs are finished
        if seed < args.first_seed and not all(is_finished(args, variant, seed) for variant in variants):
            continue
        for variant in variants:
            runs[variant].append(run_variant(args, variant, seed))
        if not runs[args.backbone]:
            continue
        summary = summarise(args, runs)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(summary, indent=2))
        atomic_write_text(stem.with_suffix(".md"), markdown(summary) + "\n")
    if not runs[args.backbone]:
        raise SystemExit(f"no seed up to {args.seeds} has all of {', '.join(variants)} finished: nothing to report")
    print(markdown(summary))
    line = {
        "dataset": args.dataset,
        "protocol": args.protocol,
        "backbone": args.backbone,
        "seeds": summary["seeds"],
        "epochs_cap": args.epochs,
        **{
            variant: {
                "N@20": entry["metrics"]["N@20"]["mean"],
                "R@20": entry["metrics"]["R@20"]["mean"],
                **(
                    {"rel_N@20": entry["relative_change"]["N@20"], "p_N@20": entry["paired_t_test"]["p_value"]}
                    if "relative_change" in entry
                    else {}
                ),
            }
            for variant, entry in summary["variants"].items()
        },
        "report": str(stem.with_suffix(".md")),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
