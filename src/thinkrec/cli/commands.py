"""Implementations of the CLI verbs (parsing lives in :mod:`thinkrec.cli.main`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from thinkrec.cli.format import metrics_table, protocol_lines, table
from thinkrec.config.loader import config_table, load_config, preset_names
from thinkrec.errors import ThinkrecError


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from thinkrec.data.prepare import load_or_prepare

    cfg = load_config(args.config, args.overrides)
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    print(
        f"prepared {cfg.data.name}: {ds.n_users} users, {ds.n_items} items, {ds.n_interactions} interactions"
    )
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
    print(
        f"\nrun: {run.run_dir}  (best epoch {run.fit.best_epoch}, {run.fit.epochs_run} epochs, {run.fit.stopped})"
    )
    print_results(run.results, cfg.eval.ks)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from thinkrec.runs import train

    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    cfg = load_config("ml100k-sasrec", overrides)
    print(
        f"demo: SASRec on MovieLens-100K, leave-one-out, full ranking, {args.epochs} epochs (seed {cfg.train.seed})"
    )
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
    eval_cfg = cfg.eval.model_copy(update=updates)
    _, split = load_data(cfg)
    report, _ = evaluation_report(model, split, cfg, args.split, eval_cfg)
    print(f"{args.split} ({report['n_samples']} samples, {report['eval_seconds']:.2f}s):")
    print(metrics_table(report["metrics"], eval_cfg.ks))
    print("\nprotocol:")
    print(protocol_lines(report["protocol"]))
    if args.output:
        from thinkrec.train.checkpoint import atomic_write_json

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
        raise ThinkrecError(
            "--history is empty; give item ids separated by commas, e.g. --history 50,172,133"
        )
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
