"""Adaptive reasoning depth in evaluation: a named selector (:mod:`thinkrec.eval.depth`) fit on a run's
validation samples, and the report of an evaluation that used one.

:func:`fit_selector` scores the **validation** window only (``split.valid``; the test samples are never
read), with every step, takes each step's per-sample value of the run's validation metric as the gains and
fits the named selector on them (thresholds tuned, routers cross-fitted over users, step weights by
cross-entropy). :func:`depth_report` puts the selector's metrics next to the fixed last step and the mean of
steps on the same samples, with the steps it used (mean and histogram) and its protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from thinkrec.data.split import Split
from thinkrec.eval import depth
from thinkrec.eval.evaluator import DepthPlan, EvalResult, evaluate
from thinkrec.eval.metrics import metrics_from_ranks, per_sample
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.model import SeqRecModel

DEPTH_NOTE = (
    "the selector chooses each sample's reasoning step (or step weights) from label-free signals of that "
    "sample's own per-step scores (entropy, top-k agreement, ...) and its history length; what it needed was fit "
    "on the validation window only. steps_used counts the reasoning steps the choice needed (a halting rule "
    "that stops at step k needs none after k); this evaluation computes all K for every sample (it reports "
    "every step's metrics)"
)
HALTING_NOTE = (
    "the selector chooses each sample's reasoning step from label-free signals of that sample's own per-step "
    "scores and its history length, after each step; what it needed was fit on the validation window only. "
    "this evaluation halts: a sample whose choice needs no further step gets none (rows_per_step: the samples "
    "each reasoning step was computed for; every sample on a runner without halting), and no per-step table "
    "is computed"
)


@dataclass(frozen=True)
class FittedSelector:
    """A named selector ready to choose, and how it was obtained."""

    name: str  # as the user wrote it: ``router``, ``fixed:1``
    selector: depth.Selector
    n_steps: int  # K + 1 it chooses among
    fit: dict[str, Any] = field(default_factory=dict)  # what it was fit on ({} when it needs no fit)

    @property
    def description(self) -> str:
        return self.selector.name


def fit_selector(
    name: str,
    model: SeqRecModel,
    split: Split,
    cfg: EvalConfig,
    metric: str,
    steps: int | None = None,
    seed: int = 0,
) -> FittedSelector:
    """Fit the selector ``name`` on the validation samples of ``split`` (every step scored under ``cfg``:
    history masking as the evaluation masks it; ``steps`` overrides K), with ``metric`` as the gain. Reads
    ``split.valid`` and never ``split.test``."""
    kind, _ = depth.parse_selector(name)
    if kind.fit is None:
        raise ValueError(f"depth selector {kind.name!r} needs no fit")
    t0 = time.perf_counter()
    samples = split.valid
    plan = DepthPlan(collect=kind.fit_needs, keep_states=kind.fit_states)
    result = evaluate(model, split, samples, cfg, steps=steps, depth=plan)
    assert result.depth is not None
    n_steps = result.step_ranks.shape[0]
    gains = np.stack([per_sample(ranks, metric) for ranks in result.step_ranks], axis=1)
    data = depth.signal_data(result.depth.signals, n_steps, samples.positions, samples.users).with_gains(gains)
    items = model.item_vectors().detach()
    states = result.depth.states if result.depth.states is not None else torch.zeros(len(samples), n_steps, 0)
    mean_gains = per_sample(result.mean_ranks, metric) if result.mean_ranks is not None else None
    given = depth.FitData(
        data,
        states,
        torch.from_numpy(samples.targets - 1).to(items.device),
        lambda users: model.scorer(users, items),
        mean_gains,
    )
    torch.manual_seed(seed)
    selector = kind.fit(given)
    choice = selector.choose(data.with_gains(None))
    in_sample: dict[str, float] = {
        "steps_used_mean": float(choice.steps_used.mean()) if len(choice.steps_used) else 0.0
    }
    if choice.hard:  # the chosen steps' metric on the samples it was fit on (optimistic: in-sample)
        in_sample[metric] = float(choice.gains(data).mean()) if len(data) else 0.0
    elif mean_gains is not None and bool(np.all(choice.weights == 1.0 / n_steps)):  # the mean of steps
        in_sample[metric] = float(mean_gains.mean()) if len(mean_gains) else 0.0
    info = {
        "split": "valid",
        "n_samples": len(samples),
        "n_users": len(np.unique(samples.users)),
        "metric": metric,
        "steps": n_steps - 1,
        "history_masking": "history items excluded" if cfg.mask_history else "history items not masked",
        "top_k": depth.TOP_K,
        "best_fixed_step_valid": depth.best_fixed_step(data) if len(data) else n_steps - 1,
        "valid_in_sample": in_sample,
        "seconds": time.perf_counter() - t0,
    }
    return FittedSelector(name, selector, n_steps, info)


def steps_histogram(steps_used: np.ndarray, n_steps: int) -> list[float]:
    """Share of samples whose choice needed 0..K reasoning steps."""
    counts = np.bincount(steps_used, minlength=n_steps)[:n_steps]
    return [float(c) / max(1, len(steps_used)) for c in counts]


def depth_report(result: EvalResult, ks: list[int], fitted: FittedSelector) -> dict[str, Any]:
    """The selector's metrics next to the fixed last step r_K and the mean of steps on the same samples, the
    reasoning steps its choices needed (mean, histogram; fixed K needs K for every sample), which step it
    scored with, and how it was obtained."""
    out = result.depth
    if out is None or out.ranks is None or out.steps_used is None or out.weights is None:
        raise ValueError("this evaluation ran without a depth selector")
    n_steps = result.step_ranks.shape[0]
    k = n_steps - 1
    fixed: dict[str, Any] = {"step": k, "steps_used": k}
    if not out.halting:  # a halting evaluation scores no fixed step
        fixed["metrics"] = metrics_from_ranks(result.step_ranks[-1], ks)
    report: dict[str, Any] = {
        "selector": fitted.name,
        "description": fitted.description,
        "metrics": metrics_from_ranks(out.ranks, ks),
        "fixed_k": fixed,
        "steps_used": {
            "mean": float(out.steps_used.mean()) if len(out.steps_used) else 0.0,
            "histogram": steps_histogram(out.steps_used, n_steps),
            "fixed_k": k,
        },
        "selector_seconds": float(sum(out.selector_seconds)),
        "fit": fitted.fit or "none (needs no fit)",
        "note": HALTING_NOTE if out.halting else DEPTH_NOTE,
    }
    if out.halting:
        steps_run = np.sum(out.step_rows, axis=0) if out.step_rows else np.zeros(k)
        report["steps_used"]["rows_per_step"] = [int(r) for r in steps_run]
    if result.mean_ranks is not None and not out.halting:
        report["mean_of_steps"] = {"metrics": metrics_from_ranks(result.mean_ranks, ks), "steps_used": k}
    hard = bool(np.all((out.weights == 0) | (out.weights == 1)))
    if hard:  # which step scored: share of samples per step
        chosen = out.weights.argmax(axis=1)
        report["scored_with_step"] = steps_histogram(chosen, n_steps)
    else:
        report["mean_weights"] = [float(w) for w in out.weights.mean(axis=0)]
    return report


def protocol_line(fitted: FittedSelector) -> str:
    """The one-line protocol entry of a depth selector."""
    if not fitted.fit:
        return f"{fitted.name}: {fitted.description} (no fit)"
    fit = fitted.fit
    return (
        f"{fitted.name}: {fitted.description}; fit on {fit['split']} only ({fit['n_samples']} samples of "
        f"{fit['n_users']} users, gain {fit['metric']}, K={fit['steps']}, {fit['history_masking']})"
    )
