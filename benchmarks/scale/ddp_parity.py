"""Does data-parallel training give the metrics of one process? N-process torchrun runs against 1-process runs
of the same preset, seeds and overrides (so the same global batch size and epoch cap in both arms).

    python -m benchmarks.scale.ddp_parity ml1m-sasrec --processes 2 --seeds 1,2,3 \\
        train.epochs=20 train.threads=1 progress=never
    python -m benchmarks.scale.ddp_parity ml100k-sasrec --seeds 1 train.epochs=1 \\
        data.prepare.max_users=100 --runs-root /tmp/ddp-runs          # a check that it runs

Each run is a fresh ``thinkrec train`` process (the N-process arm under ``torch.distributed.run
--standalone``); a run whose ``results.json`` exists is reused and an interrupted one resumes, so the
command can be rerun after a kill. Give each process its share of the cores (``train.threads``). The
verdict follows the issue's bar: the N-process mean of ``--metric`` lies within two standard deviations
(of the 1-process runs) of the 1-process mean; Welch's t-test is printed beside it. ``<out>/<preset>.md`` and
``.json`` hold the table with the protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from thinkrec.eval.significance import t_two_sided_p

METRICS = ["NDCG@10", "HR@10", "NDCG@20", "HR@20"]


def run_dir(root: Path, preset: str, processes: int, seed: int) -> Path:
    return root / f"{preset}-p{processes}-s{seed}"


def train_command(preset: str, processes: int, seed: int, directory: Path, overrides: list[str]) -> list[str]:
    """The command line of one run: plain ``python -m thinkrec.cli.main`` or under torchrun."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [
        *launcher,
        "-m",
        "thinkrec.cli.main",
        "train",
        preset,
        *overrides,
        f"train.seed={seed}",
        "--run-dir",
        str(directory),
    ]


def run_one(preset: str, processes: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    directory = run_dir(Path(args.runs_root), preset, processes, seed)
    command = train_command(preset, processes, seed, directory, args.overrides)
    if not (directory / "results.json").exists():
        env = {"OMP_NUM_THREADS": "1", **os.environ}  # one thread per process unless the caller says otherwise
        subprocess.run(command, check=True, env=env)
    results = json.loads((directory / "results.json").read_text())
    metrics = results["test"]["metrics"]
    return {
        "preset": preset,
        "processes": processes,
        "seed": seed,
        "command": command,
        "test": {m: metrics[m] for m in METRICS if m in metrics},
        "protocol": results["test"].get("protocol"),
        "best_epoch": results.get("best_epoch"),
        "epochs_run": results.get("epochs_run"),
        "run_dir": str(directory),
    }


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value of mean(a) = mean(b) (None with fewer than two values a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_two_sided_p(t, df)


def summarise(records: list[dict[str, Any]], metric: str, processes: int) -> dict[str, Any]:
    """Per arm mean / std of every metric; the verdict on ``metric``."""
    arms: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        arms.setdefault(r["processes"], []).append(r)
    table: dict[str, Any] = {}
    for n, rows in sorted(arms.items()):
        table[str(n)] = {
            m: {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "values": vals,
            }
            for m in METRICS
            if (vals := [r["test"][m] for r in rows if m in r["test"]])
        } | {"seeds": [r["seed"] for r in rows], "best_epochs": [r["best_epoch"] for r in rows]}
    one = [r["test"][metric] for r in arms.get(1, [])]
    many = [r["test"][metric] for r in arms.get(processes, [])]
    verdict: dict[str, Any] = {"metric": metric}
    if len(one) > 1 and many:
        sd = statistics.stdev(one)
        gap = statistics.fmean(many) - statistics.fmean(one)
        verdict |= {
            "difference": gap,
            "sd_1process": sd,
            "difference_in_sd": gap / sd if sd > 0 else None,
            "within_2sd": abs(gap) <= 2 * sd,
            "welch_p": welch_p(many, one),
        }
    return {"arms": table, "verdict": verdict}


def markdown(preset: str, summary: dict[str, Any], protocol: dict[str, Any] | None, overrides: list[str]) -> str:
    lines = [
        f"# {preset}: {', '.join(summary['arms'])} processes (overrides: `{' '.join(overrides)}`)",
        "",
        "| processes | seeds | best epochs | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for n, arm in summary["arms"].items():
        cells = []
        for m in METRICS:
            cell = arm.get(m)
            spread = f" ± {cell['std']:.4f}" if cell and cell["std"] else ""
            cells.append("-" if cell is None else f"{cell['mean']:.4f}{spread}")
        lines.append(f"| {n} | {arm['seeds']} | {arm['best_epochs']} | " + " | ".join(cells) + " |")
    v = summary["verdict"]
    if "difference" in v:
        lines += [
            "",
            f"{v['metric']}: difference {v['difference']:+.4f} = {v['difference_in_sd']:+.2f} SD of the 1-process runs "
            f"({'within' if v['within_2sd'] else 'outside'} 2 SD); Welch p = {v['welch_p']:.3f}",
        ]
    if protocol:
        lines += ["", "protocol: " + "; ".join(f"{k}: {val}" for k, val in protocol.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("--processes", type=int, default=2, help="processes of the data-parallel arm")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (each arm)")
    p.add_argument("--metric", default="NDCG@10", choices=METRICS, help="the metric of the verdict")
    p.add_argument("--runs-root", default=str(harness.out_dir("scale", "ddp", "runs")))
    p.add_argument("--out", type=Path, default=harness.out_dir("scale", "ddp"))
    harness.add_records_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.epochs=20")
    args = p.parse_intermixed_args(argv)
    if args.processes < 2:
        p.error("--processes must be at least 2 (the 1-process arm always runs)")
    records = harness.Records("scale", "ddp_parity", args.records)
    done = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for processes in (1, args.processes):
            done.append(records.write(run_one(args.preset, processes, seed, args)))
    summary = summarise(done, args.metric, args.processes)
    # the protocol of every run but its seed (the seeds are in the table)
    protocol = {k: v for k, v in done[0]["protocol"].items() if k != "seed"} if done and done[0]["protocol"] else None
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(args.preset, summary, protocol, args.overrides)
    (args.out / f"{args.preset}.md").write_text(text)
    payload = {"preset": args.preset, "overrides": args.overrides, "protocol": protocol, **summary}
    (args.out / f"{args.preset}.json").write_text(json.dumps(harness.stamp(payload), indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
