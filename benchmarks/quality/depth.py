"""Adaptive reasoning depth on trained reasoning runs: does choosing the step per user at inference beat
the best fixed step, and how much of the gap to the per-sample oracle does it close?

For every run directory it scores the best checkpoint's validation and test samples with every step
r_0..r_K over the full catalogue (the run's own protocol: history masking, pessimistic ties), builds each
sample's label-free signals (:func:`thinkrec.eval.depth.step_data`) and evaluates

- every fixed step, the mean of steps, and step weights learned on validation (mean-style scoring);
- the training-free halting selectors (top-k agreement, KL agreement, entropy), thresholds tuned on
  validation;
- the learned routers (all signals; step-0 signals only), cross-fitted over validation users;
- the oracle (the best step per sample, read from the target: a ceiling, not a method).

Choices (best fixed, best selector, every threshold) are made on validation; test labels are read only to
score the choices made. Reported per run: validation and test metric, the share of the oracle gap closed on
test, mean steps used and their distribution, and a paired t-test over test samples of the best selector
against the best fixed choice. A PNG per run shows which samples get more steps (history length, target
popularity in training, head vs long tail).

Usage: ``python -m benchmarks.quality.depth RUN_DIR [...] [--control PLAIN_RUN_DIR ...] [--metric NDCG@20]
[--out DIR]``; tables, plots, the fitted selectors (``depth-<run>-selectors.json``) and the JSONL records go
to ``benchmarks/out/quality/depth/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from thinkrec.data.batches import eval_histories
from thinkrec.data.split import EvalSamples, Split
from thinkrec.eval import depth
from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import metrics_from_ranks, per_sample, target_ranks
from thinkrec.eval.significance import paired_t_test
from thinkrec.inference.runner import runner_for
from thinkrec.models.model import SeqRecModel
from thinkrec.runs import load_data, load_run
from thinkrec.storage import atomic_write_bytes, atomic_write_text

BLOCK = 512  # samples scored at once: K+1 score rows of the catalogue each


@dataclass
class Scored:
    """One window of one run: signals with per-step gains, states, targets, per-step ranks."""

    data: depth.StepData
    states: torch.Tensor  # [n, K+1, d]
    targets: torch.Tensor  # [n] 0-based
    step_ranks: np.ndarray  # [K+1, n]
    history: torch.Tensor  # [n, max_len] left-padded 1-based ids (for masking)
    samples: EvalSamples


def recency(split: Split, samples: EvalSamples) -> np.ndarray:
    """Seconds between the last two history items of each sample (0 with fewer than two)."""
    ds = split.dataset
    last = ds.offsets[samples.users] + samples.positions - 1
    before = np.maximum(last - 1, ds.offsets[samples.users])
    return np.asarray(ds.timestamps[last] - ds.timestamps[before], dtype=np.float64)


def _mask(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    index = torch.arange(len(history))[:, None].expand_as(history)
    real = history > 0
    scores[index[real], history[real] - 1] = float("-inf")
    return scores


@torch.no_grad()
def score_window(model: SeqRecModel, split: Split, samples: EvalSamples, mask: bool, metric: str) -> Scored:
    max_len = model.backbone.max_len
    parts: list[depth.StepData] = []
    all_states: list[torch.Tensor] = []
    ranks: list[np.ndarray] = []
    histories: list[torch.Tensor] = []
    runner = runner_for(model)
    for start in range(0, len(samples), BLOCK):
        part = samples.subset(slice(start, start + BLOCK))
        history = torch.from_numpy(eval_histories(split, part, max_len))
        states = runner.encode_passes(history, 64).float()
        scores = torch.stack([model.score(states[:, k]) for k in range(states.shape[1])], dim=1)
        if mask:
            for k in range(scores.shape[1]):
                _mask(scores[:, k], history)
        targets = torch.from_numpy(part.targets - 1)
        ranks.append(np.stack([target_ranks(scores[:, k].clone(), targets).numpy() for k in range(scores.shape[1])]))
        parts.append(depth.step_data(scores, states, part.positions, part.users, recency=recency(split, part)))
        all_states.append(states)
        histories.append(history)
    step_ranks = np.concatenate(ranks, axis=1)
    gains = np.stack([per_sample(r, metric) for r in step_ranks], axis=1)
    data = depth.StepData.concat(parts).with_gains(gains)
    return Scored(
        data, torch.cat(all_states), torch.from_numpy(samples.targets - 1), step_ranks, torch.cat(histories), samples
    )


@torch.no_grad()
def weighted_ranks(model: SeqRecModel, window: Scored, choice: depth.Choice, mask: bool) -> np.ndarray:
    users = choice.user_vectors(window.states)
    out = []
    for start in range(0, len(users), BLOCK):
        rows = slice(start, start + BLOCK)
        scores = model.score(users[rows])
        if mask:
            _mask(scores, window.history[rows])
        out.append(target_ranks(scores, window.targets[rows]).numpy())
    return np.concatenate(out)


def ranks_of(model: SeqRecModel, window: Scored, choice: depth.Choice, mask: bool) -> np.ndarray:
    if choice.hard:
        return np.asarray(window.step_ranks[choice.step, np.arange(len(choice.step))])
    return weighted_ranks(model, window, choice, mask)


def user_means(values: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Mean of ``values`` per user (users with samples only, in user order)."""
    _, inverse = np.unique(users, return_inverse=True)
    return np.asarray(np.bincount(inverse, weights=values) / np.bincount(inverse), dtype=np.float64)


def train_counts(split: Split) -> np.ndarray:
    ds = split.dataset
    pos_in_user = np.arange(ds.n_interactions) - np.repeat(ds.offsets[:-1], ds.lengths)
    in_train = pos_in_user < np.repeat(split.train_lengths, ds.lengths)
    return np.bincount(ds.items[in_train], minlength=ds.n_items + 1)


def analyse(
    run_dir: Path, metric: str, out: Path, control: list[Path] | None = None, run_label: str | None = None
) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg, model = load_run(run_dir, device="cpu")
    _, split = load_data(cfg)
    mask = cfg.eval.mask_history
    valid = score_window(model, split, split.valid, mask, metric)
    test = score_window(model, split, split.test, mask, metric)
    k1 = valid.data.n_steps
    ks = sorted({*cfg.eval.ks})

    # every candidate: (name, family, selector for test, choice on validation)
    rows: list[dict[str, Any]] = []
    choices: dict[str, tuple[depth.Choice, depth.Choice]] = {}

    def add(name: str, family: str, on_valid: depth.Choice, on_test: depth.Choice, note: str = "") -> None:
        v = ranks_of(model, valid, on_valid, mask)
        t = ranks_of(model, test, on_test, mask)
        choices[name] = (on_valid, on_test)
        rows.append(
            {
                "name": name,
                "family": family,
                "note": note,
                "valid": metrics_from_ranks(v, ks),
                "test": metrics_from_ranks(t, ks),
                "test_values": per_sample(t, metric),
                "steps_valid": float(on_valid.steps_used.mean()),
                "steps_test": float(on_test.steps_used.mean()),
                "steps_hist_test": depth.steps_histogram(on_test, k1),
            }
        )

    def plain(data: depth.StepData) -> depth.StepData:
        return data.with_gains(None)  # selectors see no labels

    for k in range(k1):
        sel = depth.Fixed(k)
        add(sel.name, "fixed", sel.choose(plain(valid.data)), sel.choose(plain(test.data)))
    mean = depth.mean_of_steps(k1)
    add(mean.name, "fixed", mean.choose(plain(valid.data)), mean.choose(plain(test.data)))
    items = model.item_vectors().detach()
    weights = depth.fit_step_weights(valid.states, valid.targets, lambda u: model.scorer(u, items))
    learned = depth.Fixed(weights=weights, label="learned step weights " + ",".join(f"{w:.2f}" for w in weights))
    add(learned.name, "weights", learned.choose(plain(valid.data)), learned.choose(plain(test.data)), "CE on valid")
    if k1 <= 4:  # the grid grows as resolution^K
        grid = [depth.Fixed(weights=w) for w in depth.simplex_grid(k1, 10)]
        scores = [metrics_from_ranks(weighted_ranks(model, valid, g.choose(plain(valid.data)), mask), ks) for g in grid]
        best_w = grid[int(np.argmax([m[metric] for m in scores]))]
        label = "step weights by valid metric " + ",".join(f"{w:.1f}" for w in best_w.weights or ())
        on_valid, on_test = best_w.choose(plain(valid.data)), best_w.choose(plain(test.data))
        add(label, "weights", on_valid, on_test, f"grid 0.1 on valid {metric}")

    tuned: dict[str, Any] = {}
    fitted: dict[str, depth.Selector] = {}
    for family, candidates in depth.halting_candidates(plain(valid.data)).items():
        best, table = depth.tune(candidates, valid.data)
        tuned[family] = table
        held_out = depth.cross_tune(candidates, valid.data)
        fitted[family] = best
        add(family, "halting", held_out, best.choose(plain(test.data)), f"{best.name}; valid out-of-fold")
    for which in ("all", "prefix"):
        fit = depth.fit_router(valid.data, which)
        name = f"router ({which} signals)"
        fitted[name] = fit.router
        note = f"{fit.router.name}; fold margins {fit.margins[0]:.2g}, {fit.margins[1]:.2g}; valid out-of-fold"
        add(name, "router", fit.held_out, fit.router.choose(plain(test.data)), note)

    oracle_v = valid.step_ranks.min(0)
    oracle_t = test.step_ranks.min(0)
    fixed = [r for r in rows if r["family"] == "fixed"]
    adaptive = [r for r in rows if r["family"] in ("halting", "router")]
    best_fixed = max(fixed, key=lambda r: r["valid"][metric])
    best_sel = max(adaptive, key=lambda r: r["valid"][metric])
    oracle = {"valid": metrics_from_ranks(oracle_v, ks), "test": metrics_from_ranks(oracle_t, ks)}
    for r in rows:
        r["gap_closed_test"] = depth.oracle_gap_closed(
            r["test"][metric], best_fixed["test"][metric], oracle["test"][metric]
        )
        r["vs_best_fixed"] = paired_t_test(best_fixed["test_values"], r["test_values"]).__dict__
        r["vs_best_fixed_per_user"] = paired_t_test(
            user_means(best_fixed["test_values"], test.samples.users), user_means(r["test_values"], test.samples.users)
        ).__dict__
    sig = paired_t_test(best_fixed["test_values"], best_sel["test_values"])
    # the same test on per-user means: a user's samples share a history and are not independent
    per_user = paired_t_test(
        user_means(best_fixed["test_values"], test.samples.users),
        user_means(best_sel["test_values"], test.samples.users),
    )
    # learned weights against the plain mean they replace (ERL scores with the mean)
    mean_row = next(r for r in rows if r["name"] == mean.name)
    learned_row = next(r for r in rows if r["name"] == learned.name)
    users = test.samples.users
    weights_vs_mean = {
        "samples": paired_t_test(mean_row["test_values"], learned_row["test_values"]).__dict__,
        "user_means": paired_t_test(
            user_means(mean_row["test_values"], users), user_means(learned_row["test_values"], users)
        ).__dict__,
    }
    # how often the steps disagree on the metric at all: the oracle gains only there
    differ = {
        w: float(np.mean(np.ptp(window.data.gains, axis=1) > 0))  # type: ignore[arg-type]
        for w, window in (("valid", valid), ("test", test))
    }
    controls: dict[str, Any] = {}
    best_fixed_ranks = ranks_of(model, test, choices[best_fixed["name"]][1], mask)
    for other in control or []:
        # the same 'oracle' between this run's best fixed choice and an independently trained model: how much
        # headroom mere disagreement between two rankers gives
        other_ranks = EvalResult.load(other / "test_ranks.npz").ranks
        if len(other_ranks) != len(best_fixed_ranks):
            raise SystemExit(f"{other}: {len(other_ranks)} test samples, this run {len(best_fixed_ranks)}")
        controls[str(other)] = {
            "other": metrics_from_ranks(other_ranks, ks),
            "oracle_with_best_fixed": metrics_from_ranks(np.minimum(best_fixed_ranks, other_ranks), ks),
        }

    name = run_label or run_dir.name
    # the selectors chosen on validation, for inference to load (depth.selector_from_json)
    saved = {key: depth.selector_to_json(sel) for key, sel in fitted.items()}
    atomic_write_text(out / f"depth-{name}-selectors.json", json.dumps(saved, indent=1))
    plot_depths(
        out / f"depth-{name}.png",
        name,
        test,
        split,
        {
            n: choices[n][1]
            for n in dict.fromkeys([best_sel["name"], "router (all signals)", "router (prefix signals)"])
        },
    )
    record = {
        "run_dir": str(run_dir),
        "name": name,
        "metric": metric,
        "reasoning": cfg.reasoning.kind,
        "steps": k1 - 1,
        "n_valid": len(valid.samples),
        "n_test": len(test.samples),
        "users": {"valid": len(np.unique(valid.samples.users)), "test": len(np.unique(test.samples.users))},
        "best_fixed": best_fixed["name"],
        "best_selector": best_sel["name"],
        "best_selector_vs_best_fixed": sig.__dict__,
        "best_selector_vs_best_fixed_per_user": per_user.__dict__,
        "oracle": oracle,
        "share_steps_differ": differ,
        "learned_weights_vs_mean": weights_vs_mean,
        "controls": controls,
        "rows": [{k: v for k, v in r.items() if k != "test_values"} for r in rows],
        "halting_grids": tuned,
        "plot": str(out / f"depth-{name}.png"),
    }
    return record


def plot_depths(path: Path, title: str, window: Scored, split: Split, selected: dict[str, depth.Choice]) -> None:
    """Mean chosen step by history length, by target popularity in training and head vs tail, for the given
    choices and for the oracle's best step (lowest rank; ties: the earliest step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = window.data.history.astype(np.float64)
    popularity = train_counts(split)[window.samples.targets].astype(np.float64)
    order = np.argsort(-train_counts(split)[1:])
    head_items = set((order[: max(1, len(order) // 5)] + 1).tolist())  # the 20% most popular items
    tail = ~np.isin(window.samples.targets, list(head_items))
    series = {**{name: c.step.astype(np.float64) for name, c in selected.items()}}
    series["oracle best step (analysis)"] = window.step_ranks.argmin(0).astype(np.float64)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, values, label in ((axes[0], history, "history length"), (axes[1], popularity, "target training count")):
        edges = np.unique(np.quantile(values, np.linspace(0, 1, 7)))
        if len(edges) < 2:  # one value only: one bin
            edges = np.array([values.min(), values.max() + 1])
        bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        centres = [f"{edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(edges) - 1)]
        for i, (name, steps) in enumerate(series.items()):
            means = [float(steps[bins == b].mean()) if np.any(bins == b) else np.nan for b in range(len(centres))]
            ax.plot(range(len(centres)), means, marker="o", color=f"C{i}", label=name)
        ax.set_xticks(range(len(centres)), centres, rotation=30, fontsize=7)
        ax.set_xlabel(f"{label} (sextiles)")
        ax.set_ylabel("mean step chosen")
    width = 0.8 / len(series)
    for i, (name, steps) in enumerate(series.items()):
        axes[2].bar(
            np.arange(2) + i * width,
            [float(steps[~tail].mean()), float(steps[tail].mean())],
            width,
            color=f"C{i}",
            label=name,
        )
    axes[2].set_xticks(np.arange(2) + width * (len(series) - 1) / 2, ["head (top 20% items)", "long tail"])
    axes[2].set_ylabel("mean step chosen")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: which test samples get more reasoning steps")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def table(record: dict[str, Any]) -> str:
    m = record["metric"]
    o = record["oracle"]
    lines = [
        f"### {record['name']} ({record['reasoning']}, K={record['steps']}; "
        f"{record['n_valid']} valid / {record['n_test']} test samples of {record['users']['valid']} / "
        f"{record['users']['test']} users)",
        "",
        f"best fixed (valid): {record['best_fixed']}; best selector (valid): {record['best_selector']}; "
        f"test {m} difference {record['best_selector_vs_best_fixed']['mean_diff']:+.4f}, "
        f"paired t p = {record['best_selector_vs_best_fixed']['p_value']:.3g} over samples, "
        f"{record['best_selector_vs_best_fixed_per_user']['p_value']:.3g} over per-user means; "
        f"learned step weights vs the mean: {record['learned_weights_vs_mean']['samples']['mean_diff']:+.4f}, "
        f"p = {record['learned_weights_vs_mean']['samples']['p_value']:.3g} / "
        f"{record['learned_weights_vs_mean']['user_means']['p_value']:.3g}; "
        "test samples whose steps differ on "
        f"{m}: {record['share_steps_differ']['test']:.1%}",
        "",
        f"| choice | valid {m} | test {m} | test HR@20 | oracle gap closed (test) | steps used (test) "
        "| share 0..K steps | p vs best fixed (samples / user means) | chosen on valid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        hist = "/".join(f"{s:.2f}" for s in r["steps_hist_test"])
        lines.append(
            f"| {r['name']} | {r['valid'][m]:.4f} | {r['test'][m]:.4f} | {r['test'].get('HR@20', float('nan')):.4f} "
            f"| {r['gap_closed_test']:+.2f} | {r['steps_test']:.2f} | {hist} | {r['vs_best_fixed']['p_value']:.3g} / "
            f"{r['vs_best_fixed_per_user']['p_value']:.3g} "
            f"| {r['note']} |"
        )
    lines.append(
        f"| oracle (analysis, not a method) | {o['valid'][m]:.4f} | {o['test'][m]:.4f} "
        f"| {o['test'].get('HR@20', float('nan')):.4f} | +1.00 | | | | |"
    )
    for other, c in record["controls"].items():
        lines.append(
            f"| control (analysis): oracle of best fixed and {Path(other).name} (alone: test {c['other'][m]:.4f}) "
            f"| | {c['oracle_with_best_fixed'][m]:.4f} | {c['oracle_with_best_fixed'].get('HR@20', float('nan')):.4f} "
            "| | | | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of reasoning models")
    parser.add_argument("--metric", default="NDCG@20", help="what thresholds, routers and choices optimise")
    parser.add_argument("--out", type=Path, default=harness.out_dir("quality", "depth"), help="tables and plots")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--control",
        type=Path,
        nargs="*",
        default=[],
        help="runs of the same split (e.g. plain SASRec) whose saved test ranks give the oracle of two rankers",
    )
    harness.add_records_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    records = harness.Records("quality", "depth", args.records or args.out / "depth.jsonl")
    when = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = []
    for run, name in zip(args.runs, harness.run_labels(args.runs), strict=True):
        record = analyse(run, args.metric, args.out, args.control, name)
        records.write(record)
        text.append(table(record))
        atomic_write_text(args.out / f"depth-{when}.md", "\n".join(text))
        print(text[-1])


if __name__ == "__main__":
    main()
