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
from thinkrec.eval.metrics import metrics_from_ranks, per_sample
from thinkrec.eval.significance import paired_bootstrap, paired_t_test
from thinkrec.eval.steps import oracle_ranks
from thinkrec.runs import load_data, saved_config, saved_ranks

METRIC = "NDCG@20"
SHOWN = ("NDCG@10", "NDCG@20", "HR@20")


def side(runs: list[Path]) -> dict[str, Any]:
    """Test ranks and metrics of one side's runs, and the user of every test sample."""
    cfg = saved_config(runs[0])
    _, split = load_data(cfg)
    results = [saved_ranks(run, "test", split.test, saved_config(run), split) for run in runs]
    ks = sorted({10, 20, *cfg.eval.ks})  # the ranks give any K
    per_run = [metrics_from_ranks(r.ranks, ks) for r in results]
    out: dict[str, Any] = {
        "runs": [str(run) for run in runs],
        "users": np.asarray(split.test.users),
        "samples": [per_sample(r.ranks, METRIC) for r in results],
        "metrics": {
            m: {"mean": float(np.mean([p[m] for p in per_run])), "std": sample_std([p[m] for p in per_run])}
            for m in SHOWN
        },
    }
    if results[0].step_ranks is not None:
        steps = {f"r_{k}": [r.step_ranks[k] for r in results] for k in range(results[0].step_ranks.shape[0])}
        if all(r.mean_ranks is not None for r in results):
            steps["mean of steps"] = [r.mean_ranks for r in results]
        steps["oracle (analysis)"] = [oracle_ranks(r.step_ranks) for r in results]
        out["steps"] = {
            name: float(np.mean([metrics_from_ranks(ranks, [20])[METRIC] for ranks in rows]))
            for name, rows in steps.items()
        }
    return out


def sample_std(values: list[float]) -> float:
    """Standard deviation over seeds (n − 1), 0 for one run."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def per_user(samples: list[np.ndarray], users: np.ndarray) -> np.ndarray:
    _, index = np.unique(users, return_inverse=True)
    mean = np.mean(samples, axis=0)
    return np.bincount(index, weights=mean) / np.bincount(index)


def compare(a: list[Path], b: list[Path], names: tuple[str, str]) -> dict[str, Any]:
    if len(a) != len(b):
        raise SystemExit(f"--a has {len(a)} runs and --b {len(b)}: pair one run per seed")
    left, right = side(a), side(b)
    if not np.array_equal(left["users"], right["users"]):
        raise SystemExit("the two sides were not evaluated on the same test samples (different splits?)")
    t = paired_t_test(np.concatenate(left["samples"]), np.concatenate(right["samples"]))
    boot = paired_bootstrap(per_user(left["samples"], left["users"]), per_user(right["samples"], right["users"]))
    strip = ("users", "samples")
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
    lines = [f"| | {a_name} | {b_name} |", "|---|---|---|"]
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
    args = p.parse_args(argv)
    first, second = args.names.split(",", 1)
    summary = {**compare(args.a, args.b, (first, second)), "provenance": harness.provenance()}
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
