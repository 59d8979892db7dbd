"""Runs: build every component from a :class:`RunConfig`, train, evaluate, and reload a saved run.

A run directory holds ``config.json`` (the resolved config), ``checkpoints/{best,last}.{safetensors,json}``,
``log.jsonl`` (one line per epoch), ``curve.png``, ``items.parquet`` (the item vocabulary with titles, so
a saved model can recommend without the raw data), ``results.json`` (metrics with their protocol),
``{valid,test}_ranks.npz`` (every sample's rank, per reasoning step: for significance tests and subgroup
analyses without the model; time splits add ``{valid,test}_unseen_ranks.npz`` for the samples whose target
never occurs in training, kept out of the headline metrics) and ``.lock`` (held while a process trains
there, so the same run cannot be trained twice at once).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from thinkrec import distributed
from thinkrec.config.schema import RunConfig, operational_keys
from thinkrec.data.batches import TrainSampler
from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.prepare import load_or_prepare
from thinkrec.data.split import EvalSamples, Split, Window, make_split
from thinkrec.device import resolve_device
from thinkrec.errors import ThinkrecError
from thinkrec.eval.evaluator import EvalResult, evaluate
from thinkrec.eval.protocol import EvalConfig, describe_protocol
from thinkrec.eval.steps import step_report
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.text_items import attach_item_text, mark_known_items
from thinkrec.objectives import Objective, ObjectiveContext
from thinkrec.objectives import build_objective as build_named_objective
from thinkrec.objectives.sampled import training_item_counts
from thinkrec.progress import show_bars
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.seed import Seeds
from thinkrec.storage import atomic_write_json, exclusive_run_dir
from thinkrec.train.checkpoint import checkpoint_exists, load_checkpoint
from thinkrec.train.trainer import FitResult, Trainer


def load_data(cfg: RunConfig) -> tuple[SequenceDataset, Split]:
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    return ds, make_split(ds, cfg.data.split)


def build(cfg: RunConfig, n_items: int) -> SeqRecModel:
    """The model of ``cfg`` (with its latent reasoner if ``cfg.reasoning`` asks), initialised from the root
    seed; the backbone is initialised first, so it starts equal to the plain model of the same seed."""
    torch.manual_seed(Seeds(cfg.train.seed).torch_seed("init"))
    model = build_model(cfg.model, n_items)
    r = cfg.reasoning
    if r.enabled:
        model.reasoner = LatentReasoner(cfg.model.hidden, r.steps, r.table_size, r.normalise_feedback)
    return model


def build_objective(cfg: RunConfig, split: Split | None = None) -> Objective:
    """The training objective ``cfg`` names (:attr:`RunConfig.objective`), from the objective registry.

    Its context's options carry the sampled softmax's settings and, given the ``split``, every item's count
    in training (what popularity negatives and the log-Q correction draw on)."""
    options: dict[str, Any] = {"negatives": cfg.train.negatives, "logq": cfg.train.logq}
    if split is not None:
        options["item_counts"] = training_item_counts(split)
    ctx = ObjectiveContext(cfg.model, cfg.reasoning, cfg.train.seed, cfg.train.n_negatives, options)
    return build_named_objective(cfg.objective, ctx)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def save_vocabulary(ds: SequenceDataset, path: Path) -> None:
    columns: dict[str, Any] = {
        "item": pa.array(range(1, ds.n_items + 1)),
        "external_id": pa.array(ds.item_ids),
    }
    for name, values in ds.item_text.items():
        columns[name] = pa.array(values[1:], type=pa.string())
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(path)


@dataclass
class TrainedRun:
    run_dir: Path
    fit: FitResult
    results: dict[str, Any]


def evaluation_report(
    model: SeqRecModel,
    split: Split,
    cfg: RunConfig,
    which: Window,
    eval_cfg: EvalConfig,
    steps: int | None = None,
    samples: EvalSamples | None = None,
) -> tuple[dict[str, Any], EvalResult]:
    """Metrics of ``which`` (or of other ``samples`` of that window) with their protocol; reasoning models
    (``steps`` overrides K) also get the metrics of every step, of the mean of steps and of the oracle under
    ``"reasoning"``."""
    t0 = time.perf_counter()
    samples = split.samples(which) if samples is None else samples
    result = evaluate(model, split, samples, eval_cfg, steps=steps, progress=show_bars(cfg.progress))
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {
        "split": which,
        "metrics": result.metrics(eval_cfg.ks),
        "n_samples": len(result.ranks),
        "eval_seconds": seconds,
        "protocol": describe_protocol(eval_cfg, split.protocol, cfg.train.seed, split.dataset.n_items),
    }
    if model.reasoner is not None:
        k = result.step_ranks.shape[0] - 1
        report["protocol"]["reasoning"] = f"{cfg.reasoning.kind}, K={k} steps, user vector: {result.mode}"
        if k > 0:
            report["reasoning"] = step_report(result, eval_cfg.ks)
    return report, result


# Per-sample ranks of the best checkpoint (every reasoning step), written beside results.json
RANKS_FILES = {
    "valid": "valid_ranks.npz",
    "test": "test_ranks.npz",
    "valid_unseen": "valid_unseen_ranks.npz",
    "test_unseen": "test_unseen_ranks.npz",
}
UNSEEN_NOTE = (
    "samples of the window whose target never occurs in training: not in the headline metrics (an ID "
    "embedding cannot rank such an item); a cold-start analysis for text-based items"
)


def saved_ranks(run_dir: Path, name: str, samples: EvalSamples, cfg: RunConfig, split: Split) -> EvalResult:
    """The best checkpoint's ranks of ``samples`` (``name`` a key of :data:`RANKS_FILES`): as training saved
    them, or scored from the checkpoint for runs trained before runs saved them."""
    path = Path(run_dir) / RANKS_FILES[name]
    if path.exists():
        result = EvalResult.load(path)
        if len(result.ranks) != len(samples):
            raise ThinkrecError(f"{path} holds {len(result.ranks)} samples, the split {len(samples)}; delete it")
        return result
    _, model = load_run(run_dir)
    return evaluate(model, split, samples, cfg.eval)


# Settings that change how a run is executed, not what it computes: a resumed run may change them, and runs
# that differ only in them are the same run (``run_dir``: a run directory moved or copied elsewhere).
OPERATIONAL_KEYS = operational_keys()


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of a config under its dotted key (``reasoning.erl_lambda``), as the CLI overrides name them."""

    def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for key, value in obj.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): obj}

    return flat(cfg.model_dump(mode="json"))


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, apart from the operational ones (threads, progress
    bars, resuming, the run directory), which do not change what a run computes."""
    a, b = flat_config(old), flat_config(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in OPERATIONAL_KEYS)


def train(cfg: RunConfig, run_dir: str | Path | None = None) -> TrainedRun:
    """Prepare data, train with early stopping, evaluate the best checkpoint on validation and test."""
    set_threads(cfg.train.threads)
    out = Path(run_dir or cfg.default_run_dir())
    ranks = distributed.join(resolve_device(cfg.device))  # under torchrun: one of several processes
    if not ranks.is_main:  # rank 0 holds the lock and writes; the others train beside it
        run = _train_beside(cfg, out, ranks)
    else:
        with exclusive_run_dir(out):
            run = _train(cfg, out, ranks)
    # only after success: a process that failed exits at once, and torchrun stops the others
    distributed.leave()
    return run


def _train(cfg: RunConfig, out: Path, ranks: distributed.Ranks = distributed.SINGLE) -> TrainedRun:
    """:func:`train` while holding the run directory's lock (rank 0 of a distributed run; see
    :mod:`thinkrec.distributed`: rank 0 prepares the data, evaluates and writes every file)."""
    saved = out / "config.json"
    if saved.exists() and cfg.train.resume:
        # Read the saved config through the current schema, so keys added since (with their defaults)
        # do not block resuming a run written by an older thinkrec.
        try:
            previous = RunConfig.model_validate_json(saved.read_text())
        except ValueError:
            previous = None
        changed = changed_keys(previous, cfg) if previous is not None else ["(unreadable config.json)"]
        if changed:
            raise ThinkrecError(
                f"{out} holds a run with a different config ({', '.join(changed)}); choose another run_dir, "
                "or set train.resume=false to start over there"
            )
    atomic_write_json(saved, json.loads(cfg.model_dump_json()))
    ds, split = load_data(cfg)
    ranks.barrier()  # the dataset is prepared (and cached): the other processes load it now
    save_vocabulary(ds, out / "items.parquet")
    model = build(cfg, ds.n_items)
    attach_item_text(model, ds, progress=show_bars(cfg.progress))  # text backbones: frozen item text embeddings
    mark_known_items(model, split.known_items)  # UniSRec-style, unseen_items = "text_only"
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    info = {"config": json.loads(cfg.model_dump_json()), "dataset": ds.describe()}
    model.to(_device(cfg, ranks))
    trainer = Trainer(
        model,
        build_objective(cfg, split),
        split,
        sampler,
        cfg.train,
        cfg.eval,
        out,
        info,
        show_bars(cfg.progress),
        ranks,
    )
    fit = trainer.fit()
    results: dict[str, Any] = {
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped": fit.stopped,
        "train_targets_per_epoch": sampler.n_targets,
        "dataset": ds.describe(),
    }
    for which in ("valid", "test"):
        report, result = evaluation_report(model, split, cfg, which, cfg.eval)
        result.save(out / RANKS_FILES[which])
        results[which] = {**report, "ranks_file": RANKS_FILES[which]}
    for which, samples in split.unseen_targets.items():  # time splits: cold-start targets, reported apart
        if len(samples):
            report, result = evaluation_report(model, split, cfg, which, cfg.eval, samples=samples)
            result.save(out / RANKS_FILES[f"{which}_unseen"])
            results[f"{which}_unseen_targets"] = {
                **report,
                "split": f"{which} window, targets never seen in training",
                "note": UNSEEN_NOTE,
                "ranks_file": RANKS_FILES[f"{which}_unseen"],
            }
    atomic_write_json(out / "results.json", results)
    ranks.broadcast(results)  # the other processes wait for the results
    return TrainedRun(out, fit, results)


def _device(cfg: RunConfig, ranks: distributed.Ranks) -> torch.device:
    """The run's device; a process of a distributed CUDA run gets the GPU of its local rank."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def _train_beside(cfg: RunConfig, out: Path, ranks: distributed.Ranks) -> TrainedRun:
    """A process other than rank 0 of a distributed run: train its share of every batch, write nothing, and
    return rank 0's results."""
    ranks.barrier()  # rank 0 has checked the run directory and prepared the data
    ds, split = load_data(cfg)
    model = build(cfg, ds.n_items)
    attach_item_text(model, ds, progress=False)
    mark_known_items(model, split.known_items)
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    model.to(_device(cfg, ranks))
    trainer = Trainer(model, build_objective(cfg, split), split, sampler, cfg.train, cfg.eval, out, {}, False, ranks)
    fit = trainer.fit()
    return TrainedRun(out, fit, ranks.broadcast({}))


def saved_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory (or a record of one) was trained with."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        raise ThinkrecError(f"{path}: not a thinkrec run directory (no config.json); train one with thinkrec train")
    return RunConfig.model_validate_json((path / "config.json").read_text())


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch log of a run directory (or a record of one): one dict per ``log.jsonl`` line."""
    text = (Path(run_dir) / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None) -> tuple[RunConfig, SeqRecModel]:
    """The config and trained model of a run directory, on ``device`` (default: the run's ``device``
    setting, ``auto`` unless it was set)."""
    path = Path(run_dir)
    cfg = saved_config(path)
    ckpt_dir = path / "checkpoints"
    if not checkpoint_exists(ckpt_dir, checkpoint):
        raise ThinkrecError(f"{path}: no '{checkpoint}' checkpoint yet; has training finished an epoch?")
    items = pq.read_metadata(path / "items.parquet").num_rows
    model = build(cfg, items)
    load_checkpoint(ckpt_dir, checkpoint, model)
    model.to(resolve_device(device or cfg.device))
    model.eval()
    return cfg, model
