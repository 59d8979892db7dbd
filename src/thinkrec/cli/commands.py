"""Implementations of the CLI verbs (parsing lives in :mod:`thinkrec.cli.main`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinkrec.cli.format import metrics_table, models_table, protocol_lines, table
from thinkrec.config.loader import config_table, load_config, preset_names
from thinkrec.errors import ThinkrecError
from thinkrec.serve.service import check_depth, check_k, check_output, check_port, check_steps, parse_ks

if TYPE_CHECKING:
    from thinkrec.serve.recommender import Recommends, TopK


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from thinkrec.data.prepare import load_or_prepare

    cfg = load_config(args.config, args.overrides)
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    print(f"prepared {cfg.data.name}: {ds.n_users} users, {ds.n_items} items, {ds.n_interactions} interactions")
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    from thinkrec.data.dataset import SequenceDataset
    from thinkrec.data.prepare import load_or_prepare
    from thinkrec.data.split import make_split

    if Path(args.config).is_dir():
        ds = SequenceDataset.load(args.config)
        split_protocol = None
    else:
        cfg = load_config(args.config, args.overrides)
        ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
        split_protocol = make_split(ds, cfg.data.split).protocol
    stats = ds.describe()
    print(table(["statistic", "value"], [[k, v] for k, v in stats.items()]))
    if ds.meta.get("steps"):
        print("\npreparation:")
        for step in ds.meta["steps"]:
            print(f"  {json.dumps(step, default=str)}")
    if split_protocol:
        print("\nsplit:")
        print(json.dumps(split_protocol, indent=2, default=str))
    return 0


def print_results(results: dict[str, object], ks: list[int]) -> None:
    for which in ("valid", "test"):
        report = results.get(which)
        if not isinstance(report, dict):
            continue
        print(f"\n{which} ({report['n_samples']} samples):")
        print(metrics_table(report["metrics"], ks, popular_metrics(results, which)))
    test = results.get("test")
    if isinstance(test, dict):
        print("\nprotocol:")
        print(protocol_lines(test["protocol"]))


def popular_metrics(results: dict[str, object], which: str) -> dict[str, float] | None:
    """The most-popular list's metrics of ``which`` in a run's results (None for runs written before them)."""
    popularity = results.get("popularity")
    report = popularity.get(which) if isinstance(popularity, dict) else None
    return report["metrics"] if isinstance(report, dict) else None


def cmd_train(args: argparse.Namespace) -> int:
    from thinkrec.runs import train

    cfg = load_config(args.config, args.overrides)
    check_output(Path(args.run_dir or cfg.default_run_dir()) / "config.json", "--run-dir", create=False)
    run = train(cfg, args.run_dir)
    print(f"\nrun: {run.run_dir}  (best epoch {run.fit.best_epoch}, {run.fit.epochs_run} epochs, {run.fit.stopped})")
    print_results(run.results, cfg.eval.ks)
    return 0


# The demo's three runs, each a run directory of the demo folder: popularity (the floor), the backbone alone,
# and the backbone thinking before it recommends (PRL: K = 2 latent steps, the last at inference), all under
# the ml100k-time protocol.
DEMO_RUNS = {"pop": "ml100k-time-pop", "sasrec": "ml100k-time-sasrec", "sasrec-prl": "ml100k-time-sasrec-prl"}


def demo_overrides(name: str, overrides: list[str]) -> list[str]:
    """The overrides of the demo run ``name``: ``model.*`` ones go to the SASRec runs (and ``model.max_len``, the
    history window, to popularity too), ``reasoning.*`` ones to the reasoning run, the rest (data, training,
    evaluation: the protocol) to all three."""
    keep = []
    for item in overrides:
        key = item.split("=", 1)[0]
        section = key.split(".", 1)[0]
        if section == "model" and name == "pop" and key != "model.max_len":
            continue
        if section == "reasoning" and name != "sasrec-prl":
            continue
        keep.append(item)
    return keep


def cmd_demo(args: argparse.Namespace) -> int:
    """Most popular vs SASRec vs SASRec + PRL on MovieLens-100K (global time split), in one demo folder:
    one table per window, the reasoning run's per-step table, where the plots are and the protocol."""
    import time

    from thinkrec.runs import train

    if args.epochs < 1:
        raise ThinkrecError(f"--epochs must be at least 1, got {args.epochs}")
    folder = Path(args.run_dir or "runs/demo")
    # a reasoning run's best epoch comes after its warm-up: a short demo shortens the warm-up (the PRL preset's
    # is 2 epochs) so that at least one epoch trains the reasoning; an explicit override still wins
    warmup = [f"reasoning.warmup_epochs={min(2, args.epochs - 1)}"]
    configs = {
        name: load_config(
            preset,
            [
                f"train.epochs={args.epochs}",
                *(warmup if name == "sasrec-prl" else []),
                *demo_overrides(name, args.overrides),
            ],
        )
        for name, preset in DEMO_RUNS.items()
    }
    check_output(folder / "pop" / "config.json", "--run-dir", create=False)
    thinking = configs["sasrec-prl"]
    r = thinking.reasoning
    steps = f"K={r.steps if r.enabled else 0}"
    labels = {"pop": "most popular", "sasrec": "SASRec", "sasrec-prl": f"SASRec + {r.kind.upper()} ({steps})"}
    print(
        f"demo: does thinking before recommending help? {thinking.data.name}: {labels['pop']} (closed form, no "
        f"training), {labels['sasrec']}, and {labels['sasrec-prl']} that reasons {steps} latent steps before it "
        f"scores (user vector: {thinking.inference()[0]} step).\n  At most {args.epochs} epochs each, early stop on "
        f"valid {thinking.train.valid_metric}, seed {thinking.train.seed}: a demo budget, not converged models. "
        f"Runs in {folder}/"
    )
    runs = {}
    for name, cfg in configs.items():
        print(f"\n== {labels[name]}: {folder / name}")
        t0 = time.perf_counter()
        run = runs[name] = train(cfg, folder / name)
        trained = "fit in closed form" if run.fit.stopped == "closed_form" else f"{run.fit.epochs_run} epochs"
        print(f"   {trained}, best epoch {run.fit.best_epoch}, {time.perf_counter() - t0:.0f}s")
    ks = thinking.eval.ks
    columns = [f"{metric}@{k}" for k in ks for metric in ("NDCG", "HR")]
    for which in ("valid", "test"):
        print(f"\n{which} ({runs['pop'].results[which]['n_samples']} samples):")
        print(models_table({labels[name]: run.results[which]["metrics"] for name, run in runs.items()}, columns))
    reasoning = runs["sasrec-prl"]
    if "reasoning" in reasoning.results["test"]:
        print(f"\n{labels['sasrec-prl']}, test, scored with each step's user vector alone:", end="")
        print_reasoning_steps(reasoning.results["test"], ks, reasoning.run_dir, "test", None)
    print(f"training curves: {', '.join(str(runs[n].run_dir / 'curve.png') for n in ('sasrec', 'sasrec-prl'))}")
    print("\nprotocol:")
    print(protocol_lines(reasoning.results["test"]["protocol"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from thinkrec.eval.popularity import popularity_report
    from thinkrec.runs import evaluation_report, load_data, load_run, run_selector

    ks = parse_ks(args.ks) if args.ks else None
    check_steps(args.steps)
    check_depth(args.depth)
    if args.output:
        check_output(args.output)
    cfg, model = load_run(args.run_dir, args.checkpoint)
    updates: dict[str, object] = {}
    if args.mask_history is not None:
        updates["mask_history"] = args.mask_history
    if ks:
        updates["ks"] = ks
    if args.autocast:
        updates["autocast"] = args.autocast
    eval_cfg = cfg.eval.model_copy(update=updates)
    depth = cfg.eval.depth if args.depth is None else args.depth
    _, split = load_data(cfg)
    selector = None
    if depth is not None and depth != "none":  # loaded, or fit on the validation samples once and saved
        selector = run_selector(args.run_dir, depth, model, cfg, eval_cfg, args.checkpoint, args.steps, lambda: split)
    per_step = getattr(args, "per_step", True)
    report, _ = evaluation_report(
        model, split, cfg, args.split, eval_cfg, steps=args.steps, depth=selector, per_step=per_step
    )
    # the floor beside it: the most-popular list on the same samples, under the same protocol
    report["popularity"] = popularity_report(split, split.samples(args.split), eval_cfg, cfg.model.max_len)
    print(f"{args.split} ({report['n_samples']} samples, {report['eval_seconds']:.2f}s):")
    print(metrics_table(report["metrics"], eval_cfg.ks, report["popularity"]["metrics"]))
    if "reasoning" in report:
        print_reasoning_steps(report, eval_cfg.ks, Path(args.run_dir), args.split, args.steps)
    if "depth" in report:
        print_depth(report, eval_cfg.ks)
    print("\nprotocol:")
    print(protocol_lines(report["protocol"]))
    if args.output:
        from thinkrec.storage import atomic_write_json

        atomic_write_json(Path(args.output), report)
        print(f"\nwritten: {args.output}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """``thinkrec recommend RUN_DIR --history ...|--user ...``: one top-K list with titles."""
    from thinkrec.serve.service import load_recommender, parse_history, recommend, top_rows, user_history

    check_k(args.k)
    check_depth(args.depth)
    if (args.user is None) == (args.history is None):
        raise ThinkrecError("give exactly one of --user ID (a user of the dataset) or --history ID,ID,...")
    rec = load_recommender(args.run_dir, args.checkpoint, depth=args.depth)
    times = None
    if args.history is not None:
        history = parse_history(args.history, rec.vocabulary)
    else:  # the whole sequence: what to recommend next
        found = user_history(rec, args.user)
        history, times = found.items, [[*found.times, found.now]]
    top = recommend(rec, [history], args.k, exclude_seen=args.exclude_seen, per_step=args.show_steps, times=times)
    vocab = rec.vocabulary
    if top.texts is not None:
        print("reasoning:")
        print("  " + (top.texts[0].strip().replace("\n", "\n  ") or "(none)") + "\n")
    print("history (most recent last):")
    for item in history[-10:]:
        print(f"  {vocab.external_id(item)}  {vocab.title(item)}")
    rows = top_rows(rec, top, [None])
    print(f"\ntop-{args.k}:")
    ranked = zip(rows["rank"], rows["item"], rows["score"], rows["title"], strict=True)
    print(table(["rank", "item", "score", "title"], [[r, i, f"{sc:.3f}", t] for r, i, sc, t in ranked]))
    if top.depth is not None and top.step_weights is not None and top.steps_used is not None:
        weights = [float(w) for w in top.step_weights[0]]
        scored = (
            f"r_{weights.index(1.0)}"
            if sorted(weights)[-1] == 1.0
            else "weights " + ",".join(f"{w:.2f}" for w in weights)
        )
        print(f"\ndepth {top.depth}: scored with {scored}; reasoning steps needed: {int(top.steps_used[0])}")
    if args.show_steps:
        print_step_recommendations(rec, top, args.k)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    if args.config or args.overrides:
        cfg = load_config(args.config, args.overrides)
        print(cfg.model_dump_json(indent=2))
        return 0
    import textwrap

    for key, default, desc in config_table():
        if default == "":
            print(f"\n[{key}]  {desc}")
            continue
        print(f"  {key} = {default}")
        for line in textwrap.wrap(desc, 96):
            print(f"      {line}")
    print(f"\npresets: {', '.join(preset_names())}")
    print("override any key on the command line: thinkrec train PRESET key.path=value")
    return 0


# --- serving: batch recommendation and the HTTP server -----------------------------------------------------


def cmd_recommend_batch(args: argparse.Namespace) -> int:
    """``thinkrec recommend RUN_DIR --batch INPUT --output OUT``: top-K for every user of a file."""
    from thinkrec.serve.batch import recommend_file
    from thinkrec.serve.service import load_recommender

    if args.output is None:
        raise ThinkrecError("--batch needs --output OUT.parquet or OUT.csv")
    if args.history is not None or args.user is not None:
        raise ThinkrecError("--batch cannot be combined with --history or --user")
    check_k(args.k)
    check_depth(args.depth)
    if args.chunk_size < 1:
        raise ThinkrecError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    check_output(args.output, inputs=[args.batch])
    rec = load_recommender(args.run_dir, args.checkpoint, depth=args.depth)
    summary = recommend_file(
        rec,
        args.batch,
        args.output,
        k=args.k,
        id_type=args.id_type,
        chunk_size=args.chunk_size,
        exclude_seen=args.exclude_seen,
    )
    print(json.dumps({"output": str(args.output), **summary.as_dict()}))
    if summary.unknown_items:
        print(
            f"thinkrec: note: skipped {summary.unknown_items} unknown item ids "
            f"({summary.users_without_known_items} users had no known item and were left out)",
            file=sys.stderr,
        )
    return 0


def cmd_recommend_or_batch(args: argparse.Namespace) -> int:
    """``thinkrec recommend``: batch mode with ``--batch``, else one history or user."""
    if getattr(args, "batch", None) is not None:
        return cmd_recommend_batch(args)
    if getattr(args, "output", None) is not None:
        raise ThinkrecError("--output is only used with --batch INPUT")
    return cmd_recommend(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """``thinkrec serve RUN_DIR``: the HTTP API and web page (needs the ``serve`` extra)."""
    check_port(args.port)
    check_depth(args.depth)
    try:
        from thinkrec.serve.app import serve
    except ImportError as exc:
        raise ThinkrecError(f"thinkrec serve needs the serve extra: pip install 'thinkrec[serve]' ({exc})") from exc
    serve(args.run_dir, args.host, args.port, ann=args.ann, extra_hosts=args.allowed_host or (), depth=args.depth)
    return 0


# --- reasoning: per-step metrics and per-step recommendations ----------------------------------------------


def print_reasoning_steps(
    report: dict[str, Any], ks: list[int], run_dir: Path, split: str, steps_override: int | None
) -> None:
    """The metrics of every step r_0..r_K, the mean and the oracle; saves ``steps-<split>[-K<k>].png``
    (``-K<k>`` when ``--steps`` changed K)."""
    from thinkrec.eval.steps import plot_steps, step_rows

    steps = report["reasoning"]
    metrics = [f"{name}@{k}" for name in ("NDCG", "HR") for k in ks]
    print(f"\nper reasoning step (inference uses: {steps['mode']}):")
    print(table(["user vector", *metrics], step_rows(steps, metrics)))
    print(f"oracle: {steps['oracle_note']}")
    suffix = "" if steps_override is None else f"-K{steps_override}"
    path = run_dir / f"steps-{split}{suffix}.png"
    plot_steps(steps, path, [f"NDCG@{ks[-1]}", f"HR@{ks[-1]}"])
    print(f"plot: {path}")


def print_depth(report: dict[str, Any], ks: list[int]) -> None:
    """The depth selector's metrics next to fixed K and the mean of steps on the same samples, the steps
    it used, how it was fit, and what it cost."""
    depth = report["depth"]
    k = depth["fixed_k"]["step"]
    metrics = [f"{name}@{cut}" for name in ("NDCG", "HR") for cut in ks]
    rows = []
    if "metrics" in depth["fixed_k"]:  # a halting evaluation (--no-steps) scores no fixed step
        rows.append([f"fixed r_{k} (K={k})", *(depth["fixed_k"]["metrics"][m] for m in metrics), f"{k:.2f}"])
    if "mean_of_steps" in depth:
        rows.append(["mean of r_0..r_K", *(depth["mean_of_steps"]["metrics"][m] for m in metrics), f"{k:.2f}"])
    used = depth["steps_used"]
    rows.append([f"depth: {depth['selector']}", *(depth["metrics"][m] for m in metrics), f"{used['mean']:.2f}"])
    print(f"\nadaptive depth ({depth['description']}), same samples:")
    print(table(["user vector", *metrics, "steps used"], rows))
    shares = "/".join(f"{x:.2f}" for x in used["histogram"])
    print(f"steps used per sample: mean {used['mean']:.2f} (fixed K: {k}); share of samples with 0..{k}: {shares}")
    if "rows_per_step" in used:
        ran = ", ".join(f"r_{i + 1}: {n}" for i, n in enumerate(used["rows_per_step"]))
        print(f"halting: reasoning steps computed for {ran} of {report['n_samples']} samples")
    if "scored_with_step" in depth:
        print("scored with r_0..r_K: " + "/".join(f"{x:.2f}" for x in depth["scored_with_step"]))
    fit = depth["fit"]
    if isinstance(fit, dict):
        where = fit.get("loaded_from") or fit.get("saved_to")
        done = "loaded" if "loaded_from" in fit else f"fit in {fit.get('seconds', 0.0):.1f}s, saved"
        print(f"fit on {fit['split']} only ({fit['n_samples']} samples, gain {fit['metric']}); {done}: {where}")
    if "rows_per_step" in used:
        print(f"time: evaluation {report['eval_seconds']:.2f}s (halting: encoding, signals and choices interleave)")
        return
    print(
        f"time: evaluation {report['eval_seconds']:.2f}s, of it signals and choices"
        f" {depth['selector_seconds']:.2f}s (summed over worker threads)"
    )


def print_step_recommendations(rec: Recommends, top: TopK, k: int) -> None:
    """The top-``k`` of every reasoning step of row 0 of ``top`` side by side (``+`` marks an item new at
    that step), and how many items each step keeps from the previous one."""
    steps = [[item for item, _ in row] for row in top.step_rows(0)]
    if len(steps) < 2:
        print("\n--show-steps: this model does not reason (K = 0); nothing to compare")
        return
    vocab = rec.vocabulary

    def label(item: int, new: bool) -> str:
        text = f"{vocab.external_id(item)} {vocab.title(item)[:28]}".strip()
        return ("+ " if new else "  ") + text

    header = [f"r_{j}" + (" (backbone)" if j == 0 else "") for j in range(len(steps))]
    depth = min(len(s) for s in steps)
    rows = [
        [rank + 1, *(label(steps[j][rank], j > 0 and steps[j][rank] not in steps[j - 1]) for j in range(len(steps)))]
        for rank in range(depth)
    ]
    print(f"\ntop-{k} of every reasoning step (+ = not in the previous step's top-{k}):")
    print(table(["rank", *header], rows))
    kept = [
        f"r_{j - 1}->r_{j}: {len(set(steps[j]) & set(steps[j - 1]))}/{len(steps[j])} kept" for j in range(1, len(steps))
    ]
    print("  " + ";  ".join(kept))


# --- LLM recommender, R²ec: the verbs that go through the serving path ---------------------------------------


def cmd_llm_evaluate(args: argparse.Namespace) -> int:
    """``thinkrec llm evaluate``: checks ``--output`` before the evaluation runs."""
    from thinkrec.llm.cli import cmd_llm_evaluate as evaluate

    if args.output:
        check_output(args.output)
    return evaluate(args)


def cmd_llm_recommend(args: argparse.Namespace) -> int:
    """The shared recommendation path (:mod:`thinkrec.serve.service`), printed as reasoning then top-K.
    The history is always excluded from the ranking, as in the run's evaluation."""
    from thinkrec.serve.llm import is_llm_run
    from thinkrec.serve.service import check_k, load_recommender, parse_history, recommend, top_rows, user_history

    check_k(args.k)
    if not is_llm_run(args.run_dir):
        raise ThinkrecError(f"{args.run_dir}: not an LLM run directory; train one with thinkrec llm train")
    rec = load_recommender(args.run_dir)
    times = None
    if args.user is not None:  # after the whole sequence: "now" is the last item's time
        found = user_history(rec, args.user)
        history, times = found.items, [[*found.times, found.now]]
    else:
        history = parse_history(args.history, rec.vocabulary)
    top = recommend(rec, [history], args.k, exclude_seen=True, times=times)
    text = top.texts[0] if top.texts else ""
    print("reasoning:")
    print("  " + (text.strip().replace("\n", "\n  ") if text else "(none: the no-reasoning variant)"))
    rows = top_rows(rec, top, [None])
    print(f"\ntop-{args.k}:")
    for rank, item, title, score in zip(rows["rank"], rows["item"], rows["title"], rows["score"], strict=True):
        print(f"  {rank:>2}. {item}  {title}  ({score:.2f})")
    return 0
