"""Two sets of finished runs on the same split (one run per seed, paired in the order given), compared on test.

    python -m benchmarks.quality.compare_runs --a RUNS/erl/s1 RUNS/erl/s2 RUNS/erl/s3 \\
        --b RUNS/erl-uniform/s1 RUNS/erl-uniform/s2 RUNS/erl-uniform/s3 --names "fixed K,uniform depth" --out STEM

For each side: test NDCG@10/@20 and HR@20 of every run's best checkpoint (mean ± std over the runs), and for
reasoning runs the metric of every step r_0..r_K, of the mean of steps and of the oracle over steps (an
analysis, not a method), averaged over the runs. Then B against A on per-sample NDCG@20: a paired t-test over
the samples pooled over the seeds (not independent: the same samples recur), and a paired bootstrap over
users (each user's samples averaged over seeds, then over the user). Everything comes from the runs' saved
files (``config.json``, ``results.json``, ``test_ranks.npz``); the runs must share a split. ``--out STEM``
writes ``STEM.md`` and ``STEM.json``; the last line printed is the JSON summary with provenance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.quality.depth import user_means
from benchmarks.quality.rearec_repro import mean_std, step_curves
from thinkrec.data.split import Split
from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import metrics_from_ranks, per_sample
from thinkrec.eval.significance import paired_bootstrap, paired_t_test
from thinkrec.runs import load_data, saved_config, saved_ranks

METRIC = "NDCG@20"
SHOWN = ("NDCG@10", "NDCG@20", "HR@20")


def readout_ranks(result: EvalResult, readout: str, run: Path) -> np.ndarray:
    """The per-sample ranks of one read-out of a run: ``inference`` (what the run scores with), ``mean`` (the
    mean of the reasoning steps) or ``r_k`` (step k alone)."""
    if readout == "inference":
        return np.asarray(result.ranks)
    if readout == "mean" and result.mean_ranks is not None:
        return np.asarray(result.mean_ranks)
    if readout.startswith("r_") and readout[2:].isdigit() and result.step_ranks is not None:
        k = int(readout[2:])
        if k < result.step_ranks.shape[0]:
            return np.asarray(result.step_ranks[k])
    raise SystemExit(f"{run} has no read-out {readout!r} (inference, mean, or r_k for one of its reasoning steps)")


def side(runs: list[Path], split: Split, readout: str = "inference") -> dict[str, Any]:
    """Test ranks and metrics of one side's runs on ``split``'s test samples, scored with ``readout``."""
    results = [saved_ranks(run, "test", split.test, saved_config(run), split) for run in runs]
    ranks = [readout_ranks(r, readout, run) for r, run in zip(results, runs, strict=True)]
    per_run = [metrics_from_ranks(r, [10, 20]) for r in ranks]
    out: dict[str, Any] = {
        "runs": [str(run) for run in runs],
        "readout": readout,
        "samples": [per_sample(r, METRIC) for r in ranks],
        "metrics": {m: mean_std([p[m] for p in per_run]) for m in SHOWN},
    }
    if results[0].step_ranks is not None:
        curves = step_curves(results, [20])
        steps = {f"r_{k}": step[METRIC] for k, step in enumerate(curves["steps"])}
        if "mean" in curves:
            steps["mean of steps"] = curves["mean"][METRIC]
        out["steps"] = {**steps, "oracle (analysis)": curves["oracle"][METRIC]}
    return out


def compare(
    a: list[Path], b: list[Path], names: tuple[str, str], readouts: tuple[str, str] = ("inference", "inference")
) -> dict[str, Any]:
    if len(a) != len(b):
        raise SystemExit(f"--a has {len(a)} runs and --b {len(b)}: pair one run per seed")
    cfg = saved_config(a[0])
    if any(saved_config(run).data != cfg.data for run in [*a, *b]):
        raise SystemExit("the runs were not all trained on the same data and split; compare runs of one split")
    _, split = load_data(cfg)  # one split for both sides
    left, right = side(a, split, readouts[0]), side(b, split, readouts[1])
    t = paired_t_test(np.concatenate(left["samples"]), np.concatenate(right["samples"]))
    users = np.asarray(split.test.users)
    boot = paired_bootstrap(
        user_means(np.mean(left["samples"], axis=0), users), user_means(np.mean(right["samples"], axis=0), users)
    )
    strip = ("samples",)
    return {
        "names": list(names),
        "a": {k: v for k, v in left.items() if k not in strip},
        "b": {k: v for k, v in right.items() if k not in strip},
        "b_minus_a": {
            "metric": METRIC,
            "samples_pooled": {"n": t.n, "mean_diff": t.mean_diff, "p": t.p_value},
            "users_bootstrap": {
                "n": boot.n,
                "mean_diff": boot.mean_diff,
                "low": boot.ci_low,
                "high": boot.ci_high,
                "p": boot.p_value,
            },
        },
    }


def markdown(summary: dict[str, Any]) -> str:
    a_name, b_name = summary["names"]
    a, b = summary["a"], summary["b"]
    labels = [
        name if x["readout"] == "inference" else f"{name} ({x['readout']})" for name, x in ((a_name, a), (b_name, b))
    ]
    lines = [f"| | {labels[0]} | {labels[1]} |", "|---|---|---|"]
    for m in SHOWN:
        cells = [f"{x['metrics'][m]['mean']:.4f} ± {x['metrics'][m]['std']:.4f}" for x in (a, b)]
        lines.append(f"| {m} | {cells[0]} | {cells[1]} |")
    for step in a.get("steps", {}):
        if step in b.get("steps", {}):
            lines.append(f"| {METRIC}, {step} | {a['steps'][step]:.4f} | {b['steps'][step]:.4f} |")
    d = summary["b_minus_a"]
    s, u = d["samples_pooled"], d["users_bootstrap"]
    lines += [
        "",
        f"{b_name} − {a_name}, per-sample {METRIC}: {s['mean_diff']:+.4f} (paired t over {s['n']:,} pooled samples,"
        f" p = {s['p']:.3g}); per-user means {u['mean_diff']:+.4f} [{u['low']:+.4f}, {u['high']:+.4f}]"
        f" (paired bootstrap over {u['n']} users, p = {u['p']:.3g}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs="+", type=Path, required=True, help="run directories of side A, one per seed")
    p.add_argument("--b", nargs="+", type=Path, required=True, help="run directories of side B, in the same seed order")
    p.add_argument("--names", default="A,B", help="two comma-separated labels")
    p.add_argument("--out", type=Path, help="write STEM.md and STEM.json")
    for name in ("a", "b"):
        p.add_argument(
            f"--{name}-readout",
            default="inference",
            help=f"what side {name.upper()}'s metrics score with: inference (default: what the run scores with),"
            " mean (the mean of its reasoning steps) or r_k (step k alone); a choice to be made on validation"
            " (benchmarks.quality.depth), never on these test numbers",
        )
    args = p.parse_args(argv)
    first, second = args.names.split(",", 1)
    compared = compare(args.a, args.b, (first, second), (args.a_readout, args.b_readout))
    summary = {**compared, "provenance": harness.provenance()}
    text = markdown(summary)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
