"""Implementations of the CLI verbs (parsing lives in :mod:`thinkrec.cli.main`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import torch

from thinkrec.cli.format import metrics_table, protocol_lines, table
from thinkrec.config.loader import config_table, load_config, preset_names
from thinkrec.errors import ThinkrecError

if TYPE_CHECKING:
    from thinkrec.models.model import SeqRecModel


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
        print(metrics_table(report["metrics"], ks))
    test = results.get("test")
    if isinstance(test, dict):
        print("\nprotocol:")
        print(protocol_lines(test["protocol"]))


def cmd_train(args: argparse.Namespace) -> int:
    from thinkrec.runs import train

    cfg = load_config(args.config, args.overrides)
    run = train(cfg, args.run_dir)
    print(f"\nrun: {run.run_dir}  (best epoch {run.fit.best_epoch}, {run.fit.epochs_run} epochs, {run.fit.stopped})")
    print_results(run.results, cfg.eval.ks)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from thinkrec.runs import train

    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    cfg = load_config("ml100k-sasrec", overrides)
    print(f"demo: SASRec on MovieLens-100K, leave-one-out, full ranking, {args.epochs} epochs (seed {cfg.train.seed})")
    run = train(cfg, args.run_dir or "runs/demo")
    print(f"\nrun: {run.run_dir}  (best epoch {run.fit.best_epoch}; curve: {run.run_dir / 'curve.png'})")
    print_results(run.results, cfg.eval.ks)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from thinkrec.runs import evaluation_report, load_data, load_run

    cfg, model = load_run(args.run_dir, args.checkpoint)
    updates: dict[str, object] = {}
    if args.mask_history is not None:
        updates["mask_history"] = args.mask_history
    if args.ks:
        updates["ks"] = [int(k) for k in args.ks.split(",")]
    if args.autocast:
        updates["autocast"] = args.autocast
    eval_cfg = cfg.eval.model_copy(update=updates)
    _, split = load_data(cfg)
    report, _ = evaluation_report(model, split, cfg, args.split, eval_cfg, steps=args.steps)
    print(f"{args.split} ({report['n_samples']} samples, {report['eval_seconds']:.2f}s):")
    print(metrics_table(report["metrics"], eval_cfg.ks))
    if "reasoning" in report:
        print_reasoning_steps(report, eval_cfg.ks, Path(args.run_dir), args.split, args.steps)
    print("\nprotocol:")
    print(protocol_lines(report["protocol"]))
    if args.output:
        from thinkrec.storage import atomic_write_json

        atomic_write_json(Path(args.output), report)
        print(f"\nwritten: {args.output}")
    return 0


def _parse_history(text: str, external: np.ndarray) -> list[int]:
    lookup = {str(e): i + 1 for i, e in enumerate(external)}
    history: list[int] = []
    for token in text.replace(",", " ").split():
        if token not in lookup:
            raise ThinkrecError(f"--history: item id {token!r} is not in this model's catalogue")
        history.append(lookup[token])
    if not history:
        raise ThinkrecError("--history is empty; give item ids separated by commas, e.g. --history 50,172,133")
    return history


def cmd_recommend(args: argparse.Namespace) -> int:
    from thinkrec.data.batches import position_ids
    from thinkrec.runs import load_data, load_run

    cfg, model = load_run(args.run_dir, args.checkpoint)
    vocab = pq.read_table(Path(args.run_dir) / "items.parquet").to_pydict()
    external = np.asarray(vocab["external_id"])
    titles = vocab.get("title")
    if (args.user is None) == (args.history is None):
        raise ThinkrecError("give exactly one of --user ID (a user of the dataset) or --history ID,ID,...")
    if args.history is not None:
        history = _parse_history(args.history, external)
    else:
        ds, _ = load_data(cfg)
        users = {str(u): i for i, u in enumerate(ds.user_ids)}
        if args.user not in users:
            raise ThinkrecError(f"--user {args.user!r} is not a user of dataset {cfg.data.name}")
        history = ds.sequence(users[args.user]).tolist()
    max_len = model.backbone.max_len
    window = history[-max_len:]
    inputs = torch.tensor([window])
    with torch.no_grad():
        states = model.encode(inputs, position_ids(len(window), max_len))
        scores = model.score(model.user_vector(states, cfg.eval.inference, cfg.eval.inference_step))[0]
    if args.exclude_seen:
        scores[torch.tensor(history) - 1] = float("-inf")
    top = torch.topk(scores, min(args.k, len(scores)))
    print("history (most recent last):")
    for item in history[-10:]:
        print(f"  {external[item - 1]}  {titles[item - 1] if titles else ''}")
    rows = [
        [rank + 1, external[int(i)], f"{float(s):.3f}", titles[int(i)] if titles else ""]
        for rank, (s, i) in enumerate(zip(top.values, top.indices, strict=True))
    ]
    print(f"\ntop-{args.k}:")
    print(table(["rank", "item", "score", "title"], rows))
    if args.show_steps:
        seen = history if args.exclude_seen else None
        print_step_recommendations(model, states, seen, args.k, external, titles)
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


# --- serving (issue 6): batch recommendation and the HTTP server -------------------------------------------


def cmd_recommend_batch(args: argparse.Namespace) -> int:
    """``thinkrec recommend RUN_DIR --batch INPUT --output OUT``: top-K for every user of a file."""
    from thinkrec.serve.batch import recommend_file
    from thinkrec.serve.recommender import MAX_K, Recommender

    if args.output is None:
        raise ThinkrecError("--batch needs --output OUT.parquet or OUT.csv")
    if args.history is not None or args.user is not None:
        raise ThinkrecError("--batch cannot be combined with --history or --user")
    if not 1 <= args.k <= MAX_K:
        raise ThinkrecError(f"-k must be in 1..{MAX_K}")
    rec = Recommender.from_run(args.run_dir, args.checkpoint)
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
    try:
        from thinkrec.serve.app import serve
    except ImportError as exc:
        raise ThinkrecError(f"thinkrec serve needs the serve extra: pip install 'thinkrec[serve]' ({exc})") from exc
    serve(args.run_dir, args.host, args.port, ann=args.ann)
    return 0


# --- reasoning (issue 3): per-step metrics and per-step recommendations ------------------------------------


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


def print_step_recommendations(
    model: SeqRecModel,
    states: torch.Tensor,
    seen: list[int] | None,
    k: int,
    external: np.ndarray,
    titles: list[str] | None,
) -> None:
    """The top-``k`` of every reasoning step side by side (``+`` marks an item new at that step), and how
    many items each step keeps from the previous one."""
    if states.shape[1] < 2:
        print("\n--show-steps: this model does not reason (K = 0); nothing to compare")
        return
    with torch.no_grad():
        scores = torch.stack([model.score(states[:, j])[0] for j in range(states.shape[1])])
    if seen is not None:
        scores[:, torch.tensor(seen) - 1] = float("-inf")
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.tolist()

    def label(item: int, new: bool) -> str:
        name = titles[item] if titles else ""
        text = f"{external[item]} {name[:28]}".strip()
        return ("+ " if new else "  ") + text

    header = [f"r_{j}" + (" (backbone)" if j == 0 else "") for j in range(len(top))]
    rows = [
        [rank + 1, *(label(top[j][rank], j > 0 and top[j][rank] not in top[j - 1]) for j in range(len(top)))]
        for rank in range(len(top[0]))
    ]
    print(f"\ntop-{k} of every reasoning step (+ = not in the previous step's top-{k}):")
    print(table(["rank", *header], rows))
    kept = [f"r_{j - 1}->r_{j}: {len(set(top[j]) & set(top[j - 1]))}/{len(top[j])} kept" for j in range(1, len(top))]
    print("  " + ";  ".join(kept))
