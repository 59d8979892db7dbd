"""Per-step analysis of reasoning models: every step r_0..r_K scored on its own, the mean of the steps, the
inference mode in use, and the per-sample oracle ceiling (an analysis, not a method)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import metrics_from_ranks

ORACLE_NOTE = (
    "analysis, not a method: for each sample the best step is chosen with the ground truth "
    "(min rank over r_0..r_K); no model can choose it at inference"
)


def oracle_ranks(step_ranks: np.ndarray) -> np.ndarray:
    """Per sample, the best (lowest) rank over the steps ``[K+1, n] -> [n]``."""
    return np.asarray(step_ranks.min(axis=0))


def step_report(result: EvalResult, ks: list[int]) -> dict[str, Any]:
    """Metrics of every step, of the mean of steps, of the mode in use, and of the oracle."""
    report: dict[str, Any] = {
        "steps": [metrics_from_ranks(ranks, ks) for ranks in result.step_ranks],
        "mode": result.mode,
        "oracle": metrics_from_ranks(oracle_ranks(result.step_ranks), ks),
        "oracle_note": ORACLE_NOTE,
    }
    if result.mean_ranks is not None:
        report["mean"] = metrics_from_ranks(result.mean_ranks, ks)
    return report


def step_metrics(result: EvalResult, ks: list[int]) -> dict[str, dict[str, float]]:
    """Metrics of every step on its own and of the mean of the steps, keyed ``r_0 .. r_K`` and ``mean``
    (what a reasoning run logs for every validation); empty for a model without reasoning steps."""
    if result.step_ranks.shape[0] < 2:
        return {}
    out = {f"r_{k}": metrics_from_ranks(ranks, ks) for k, ranks in enumerate(result.step_ranks)}
    if result.mean_ranks is not None:
        out["mean"] = metrics_from_ranks(result.mean_ranks, ks)
    return out


def step_rows(report: dict[str, Any], metrics: list[str]) -> list[list[Any]]:
    """Table rows ``[label, value per metric]``: r_0..r_K, mean, oracle."""
    n_steps = len(report["steps"])
    rows: list[list[Any]] = []
    for k, values in enumerate(report["steps"]):
        label = f"r_{k}" + (" (backbone)" if k == 0 else "") + (" (last)" if k == n_steps - 1 else "")
        rows.append([label, *(values[m] for m in metrics)])
    if "mean" in report:
        rows.append(["mean of r_0..r_K", *(report["mean"][m] for m in metrics)])
    rows.append(["oracle (analysis, not a method)", *(report["oracle"][m] for m in metrics)])
    return rows


def plot_steps(report: dict[str, Any], path: Path, metrics: list[str], title: str = "") -> None:
    """Metric vs reasoning step as a PNG: one panel per metric (their scales differ), each with the mean of
    the steps and the oracle as dashed / dotted levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from thinkrec.storage import atomic_write_bytes

    steps = list(range(len(report["steps"])))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for i, (metric, ax) in enumerate(zip(metrics, axes[0], strict=True)):
        color = f"C{i}"
        ax.plot(steps, [row[metric] for row in report["steps"]], color=color, marker="o", label="r_k alone")
        if "mean" in report:
            ax.axhline(report["mean"][metric], color=color, linestyle="--", linewidth=1, label="mean of r_0..r_K")
        ax.axhline(report["oracle"][metric], color=color, linestyle=":", linewidth=1, label="oracle*")
        ax.set_xticks(steps)
        ax.set_xlabel("reasoning step k (user vector r_k)")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"metric vs reasoning step (inference: {report['mode']})")
    fig.text(
        0.01, 0.01, "* oracle: best step per sample chosen with the ground truth (analysis, not a method)", fontsize=7
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
