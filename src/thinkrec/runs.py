"""Runs: build every component from a :class:`RunConfig`, train, evaluate, and reload a saved run.

A run directory holds ``config.json`` (the resolved config), ``checkpoints/{best,last}.safetensors``,
``log.jsonl`` (one line per epoch), ``curve.png``, ``items.parquet`` (the item vocabulary with titles, so
a saved model can recommend without the raw data), ``results.json`` (metrics with their protocol),
``{valid,test}_ranks.npz`` (every sample's rank, per reasoning step: for significance tests and subgroup
analyses without the model; time splits add ``{valid,test}_unseen_ranks.npz`` for the samples whose target
never occurs in training, kept out of the headline metrics), ``depth/`` (adaptive-depth selectors fit on the
run's validation samples, one JSON file each: :func:`run_selector`) and ``.lock`` (held while a process
trains there, so the same run cannot be trained twice at once). Experiment trackers (``train.trackers``, see
:mod:`thinkrec.train.trackers`) add their own: ``tensorboard/``, ``mlflow.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import ValidationError

from thinkrec import distributed
from thinkrec.config.schema import RunConfig, changed_settings, flat_settings, operational_keys
from thinkrec.data.batches import TrainSampler
from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.prepare import load_or_prepare
from thinkrec.data.split import EvalSamples, Split, Window, make_split
from thinkrec.device import resolve_device
from thinkrec.errors import ThinkrecError
from thinkrec.eval import depth as depth_selectors
from thinkrec.eval.adaptive import FittedSelector, depth_report, fit_selector, protocol_line
from thinkrec.eval.evaluator import DepthPlan, EvalResult, evaluate
from thinkrec.eval.popularity import popularity_report
from thinkrec.eval.protocol import EvalConfig, describe_protocol
from thinkrec.eval.steps import step_report
from thinkrec.models.base import ClosedForm
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.text_items import attach_item_text, mark_known_items
from thinkrec.objectives import Objective, ObjectiveContext
from thinkrec.objectives import build_objective as build_named_objective
from thinkrec.progress import show_bars
from thinkrec.reasoning.config import LatentReasoningConfig
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.seed import Seeds
from thinkrec.storage import atomic_path, atomic_write_json, atomic_write_text, exclusive_run_dir, remove_temporaries
from thinkrec.train.checkpoint import (
    CheckpointError,
    checkpoint_digest,
    checkpoint_exists,
    checkpoint_info,
    load_checkpoint,
    save_checkpoint,
)
from thinkrec.train.trackers import NO_TRACKERS, TrackedRun, Trackers, start_trackers, tracker_outputs
from thinkrec.train.trainer import SAVED_RUN, FitResult, Trainer, epoch_metrics

log = logging.getLogger(__name__)


def load_data(cfg: RunConfig) -> tuple[SequenceDataset, Split]:
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    return ds, make_split(ds, cfg.data.split)


def build(cfg: RunConfig, n_items: int) -> SeqRecModel:
    """The model of ``cfg`` (with its latent reasoner if ``cfg.reasoning`` asks), initialised from the root
    seed; the backbone is initialised first, so it starts equal to the plain model of the same seed."""
    torch.manual_seed(Seeds(cfg.train.seed).torch_seed("init"))
    model = build_model(cfg.model, n_items)
    r = cfg.reasoning
    if isinstance(r, LatentReasoningConfig):
        model.reasoner = LatentReasoner(
            model.backbone.hidden_size, r.steps, r.table_size, r.normalise_feedback, r.feedback_dropout
        )
    return model


def build_objective(cfg: RunConfig, split: Split | None = None) -> Objective:
    """The training objective ``cfg`` names (:attr:`RunConfig.objective`), from the objective registry.

    Its context's options carry the sampled softmax's settings and, given the ``split``, every item's count
    in training (what popularity negatives and the log-Q correction draw on)."""
    options: dict[str, Any] = {
        "negatives": cfg.train.negatives,
        "logq": cfg.train.logq,
        "negatives_per": cfg.train.negatives_per,
    }
    if split is not None:
        options["item_counts"] = split.item_counts()
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
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


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
    depth: FittedSelector | None = None,
    per_step: bool = True,
) -> tuple[dict[str, Any], EvalResult]:
    """Metrics of ``which`` (or of other ``samples`` of that window) with their protocol; reasoning models
    (``steps`` overrides K) also get the metrics of every step, of the mean of steps and of the oracle under
    ``"reasoning"``, and with a ``depth`` selector (:func:`run_selector`) its metrics next to fixed K, the
    steps it used and its protocol under ``"depth"``. Without ``per_step`` only the inference mode is scored
    (what batch recommendation computes): no per-step table, and with a ``depth`` selector the evaluation halts
    (samples that stopped get no further reasoning step) and ``"metrics"`` are the selector's."""
    t0 = time.perf_counter()
    samples = split.samples(which) if samples is None else samples
    plan = DepthPlan(selector=depth.selector) if depth is not None else None
    result = evaluate(
        model,
        split,
        samples,
        eval_cfg,
        steps=steps,
        progress=show_bars(cfg.progress),
        per_step=per_step,
        depth=plan,
    )
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
        if k > 0 and per_step:
            report["reasoning"] = step_report(result, eval_cfg.ks)
    if depth is not None:
        report["depth"] = depth_report(result, eval_cfg.ks, depth)
        report["protocol"]["depth"] = protocol_line(depth)
    return report, result


DEPTH_DIR = "depth"


def selector_path(run_dir: str | Path, kind: str, steps: int, checkpoint: str, mask_history: bool) -> Path:
    """Where a fitted selector of a run is saved: one file per selector, K, checkpoint and history masking."""
    return Path(run_dir) / DEPTH_DIR / f"{kind}-K{steps}-{checkpoint}{'-masked' if mask_history else ''}.json"


def run_selector(
    run_dir: str | Path,
    name: str,
    model: SeqRecModel,
    cfg: RunConfig,
    eval_cfg: EvalConfig | None = None,
    checkpoint: str = "best",
    steps: int | None = None,
    data: Callable[[], Split] | None = None,
    fit: bool = True,
) -> FittedSelector:
    """The depth selector ``name`` for a run's ``model`` (its ``checkpoint``; ``steps`` overrides K):
    built at once when it needs no fit (``fixed[:k]``, ``mean``); else read from the run directory's
    ``depth/`` folder when it was fit there for these weights, K, history masking (``eval_cfg``, default the
    run's) and the run's validation metric, or else (with ``fit``) fit on the validation samples of the split
    ``data`` gives and saved there (atomically), so later evaluations and servers reuse it. Raises
    :class:`ThinkrecError` for an unknown name, a model without reasoning steps, or (without ``fit``) a
    selector not fit yet."""
    eval_cfg = cfg.eval if eval_cfg is None else eval_cfg
    try:
        kind, argument = depth_selectors.parse_selector(name)
    except ValueError as exc:
        raise ThinkrecError(str(exc)) from None
    k = model.reasoning_steps if steps is None else steps
    if model.reasoner is None or k < 1:
        raise ThinkrecError(
            f"depth selector {name!r} chooses among reasoning steps; this model has none (K = {k}); "
            "use a reasoning run (reasoning.kind = erl | prl) with K >= 1"
        )
    if kind.build is not None:
        try:
            return FittedSelector(name, kind.build(k + 1, argument), k + 1)
        except ValueError as exc:
            raise ThinkrecError(str(exc)) from None
    path = selector_path(run_dir, kind.name, k, checkpoint, eval_cfg.mask_history)
    key = {
        "selector": kind.name,
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_digest(Path(run_dir) / "checkpoints", checkpoint),
        "steps": k,
        "mask_history": eval_cfg.mask_history,
        "metric": cfg.train.valid_metric,
        "top_k": depth_selectors.TOP_K,
    }
    saved = _saved_selector(path, key)
    if saved is not None:
        selector, info = saved
        return FittedSelector(name, selector, k + 1, {**info, "loaded_from": str(path)})
    if not fit or data is None:
        raise ThinkrecError(
            f"depth selector {name!r} is not fit for this run ({run_dir}, K={k}, checkpoint {checkpoint}): fit it "
            f"once on the validation samples with: thinkrec evaluate {run_dir} --depth {name}"
            + (f" --steps {k}" if steps is not None else "")
        )
    fitted = fit_selector(name, model, data(), eval_cfg, cfg.train.valid_metric, steps, seed=cfg.train.seed)
    record = {
        "key": key,
        "selector": depth_selectors.selector_to_json(fitted.selector),
        "description": fitted.description,
        "fit": fitted.fit,
    }
    atomic_write_json(path, record)
    return FittedSelector(name, fitted.selector, k + 1, {**fitted.fit, "saved_to": str(path)})


def _saved_selector(path: Path, key: dict[str, Any]) -> tuple[depth_selectors.Selector, dict[str, Any]] | None:
    """The selector saved at ``path`` if it was fit under ``key`` (None if absent, unreadable or stale)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("key") != key:
            return None
        return depth_selectors.selector_from_json(record["selector"]), dict(record.get("fit") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # damaged: fit again


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
    return flat_settings(cfg)


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, apart from the operational ones (threads, progress
    bars, resuming, the run directory), which do not change what a run computes."""
    return changed_settings(old, new)


def train(cfg: RunConfig, run_dir: str | Path | None = None) -> TrainedRun:
    """Prepare data, train with early stopping, evaluate the best checkpoint on validation and test.

    Nothing in the run directory is created or changed before the data are read and checked and the config
    is known to fit the run there. A run directory that holds no finished epoch (no ``last`` checkpoint,
    e.g. after a run that failed before its first epoch) takes any config: the run starts over there.
    """
    set_threads(cfg.train.threads)
    out = Path(run_dir or cfg.default_run_dir())
    ranks = distributed.join(resolve_device(cfg.device))  # under torchrun: one of several processes
    if not ranks.is_main:  # rank 0 holds the lock, prepares the data and writes; the others train beside it
        run = _train_beside(cfg, out, ranks)
    else:
        with ExitStack() as stack:
            locked = out.is_dir()
            if locked:  # an existing run directory: refuse at once when another process trains there
                stack.enter_context(exclusive_run_dir(out))
            resume = resumes(cfg, out)
            ds, split = load_data(cfg)
            if not locked:  # a new run directory: created only now that the data are known to be good
                stack.enter_context(exclusive_run_dir(out))
                resume = resumes(cfg, out)  # another process may have trained there while the data loaded
            run = _train(cfg, out, ds, split, resume, ranks)
    # only after success: a process that failed exits at once, and torchrun stops the others
    distributed.leave()
    return run


# The files a run writes (beside config.json and items.parquet, which every start rewrites); a run that starts
# over deletes those of the run before, so none of them describes another config.
RUN_OUTPUTS = (
    "log.jsonl",
    "curve.png",
    "results.json",
    "checkpoints/best.safetensors",
    "checkpoints/best.json",
    "checkpoints/last.safetensors",
    "checkpoints/last.json",
)


def resumes(cfg: RunConfig, out: Path) -> bool:
    """Whether training ``cfg`` into ``out`` continues the run there (from its ``last`` checkpoint) rather
    than starting over. Raises :class:`ThinkrecError` when ``out`` holds finished epochs of another config.

    ``train.epochs`` may differ from the saved config as long as it is not below the epochs already done: a
    finished run continues with more epochs (one that stopped early stays stopped, as an uninterrupted run
    with the larger ``train.epochs`` would have stopped at the same epoch)."""
    ckpt_dir = out / "checkpoints"
    if not cfg.train.resume or not checkpoint_exists(ckpt_dir, "last"):
        return False
    state = checkpoint_info(ckpt_dir, "last").get("trainer_state")
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise CheckpointError(
            f"{ckpt_dir / 'last.safetensors'}: not a resumable checkpoint (no trainer state); delete it to start the"
            " run over, or set train.resume=false"
        )
    try:
        # through the current schema: keys added since (with their defaults) do not block resuming a run
        # written by an older thinkrec
        previous = saved_config(out)
    except ThinkrecError as exc:
        raise ThinkrecError(
            f"{exc}\n  {out} holds {state['epoch']} trained epochs; to keep them, restore config.json, or set "
            "train.resume=false to start over there"
        ) from None
    changed = changed_keys(previous, cfg)
    done = state["epoch"]
    if "train.epochs" in changed and cfg.train.epochs >= done:
        changed.remove("train.epochs")
    elif "train.epochs" in changed:
        raise ThinkrecError(
            f"{out} holds a run that has trained {done} epochs, more than train.epochs={cfg.train.epochs}; set "
            f"train.epochs to {done} or more, choose another run_dir, or set train.resume=false to start over there"
        )
    if changed:
        raise ThinkrecError(
            f"{out} holds a run with a different config ({', '.join(changed)}); choose another run_dir, "
            "or set train.resume=false to start over there"
        )
    return True


def _train(
    cfg: RunConfig,
    out: Path,
    ds: SequenceDataset,
    split: Split,
    resume: bool,
    ranks: distributed.Ranks = distributed.SINGLE,
) -> TrainedRun:
    """:func:`train` while holding the run directory's lock, with the data read (rank 0 of a distributed run;
    see :mod:`thinkrec.distributed`: rank 0 prepares the data, evaluates and writes every file)."""
    ranks.barrier()  # the dataset is prepared (and cached): the other processes load it now
    for folder in (out, out / "checkpoints"):
        remove_temporaries(folder)  # of writers killed mid-write; no live writer exists while we hold the lock
    model = build(cfg, ds.n_items)
    attach_item_text(model, ds, progress=show_bars(cfg.progress))  # text backbones: frozen item text embeddings
    mark_known_items(model, split.known_items)  # UniSRec-style, unseen_items = "text_only"
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    info = {"config": json.loads(cfg.model_dump_json()), "dataset": ds.describe()}
    model.to(_device(cfg, ranks))
    trainer = None
    if not isinstance(model.backbone, ClosedForm):
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
    if not resume:
        for name in (*RUN_OUTPUTS, *RANKS_FILES.values()):
            (out / name).unlink(missing_ok=True)
        for name in tracker_outputs():  # of every tracker, also those this run does not use: none continues
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    atomic_write_json(out / "config.json", json.loads(cfg.model_dump_json()))
    save_vocabulary(ds, out / "items.parquet")
    done = _finished_epochs(out) if resume else []
    params = {**flat_config(cfg), "run_dir": str(out)}  # where the run is, also when --run-dir named it
    tracked = TrackedRun(out, params, resumed=resume, first_step=done[-1]["epoch"] if done else 0)
    # every tracker is closed however this ends: finished, failed, or interrupted (Ctrl-C)
    with start_trackers(cfg.train.trackers, tracked) as trackers:
        if trainer is not None:
            trainer.trackers = trackers  # started only now that every part of the run is built
            if done:  # the last finished epoch again: a run killed before its trackers heard of it lost it
                trackers.log_metrics(epoch_metrics(done[-1]), done[-1]["epoch"])
        fit = trainer.fit() if trainer is not None else _fit_closed_form(model, split, cfg, out, info, trackers)
        results = _final_results(model, split, cfg, out, fit, sampler, ds)
        trackers.log_metrics(final_metrics(results), fit.epochs_run)
    ranks.broadcast(results)  # the other processes wait for the results
    return TrainedRun(out, fit, results)


def _finished_epochs(out: Path) -> list[dict[str, Any]]:
    """The log rows of the epochs the ``last`` checkpoint holds (what a resumed run continues after)."""
    state = checkpoint_info(out / "checkpoints", "last").get("trainer_state", {})
    history = state.get("history", []) if isinstance(state, dict) else []
    return [row for row in history if isinstance(row, dict) and isinstance(row.get("epoch"), int)]


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The test metrics of a run's results, as experiment trackers get them: ``test/<metric>``, and for a
    reasoning run ``test/r_<k>/<metric>`` of every step and ``test/mean/<metric>``; ``time/test_seconds``."""
    test = results["test"]
    out = {f"test/{name}": float(value) for name, value in test["metrics"].items()}
    reasoning = test.get("reasoning", {})
    for k, metrics in enumerate(reasoning.get("steps", [])):
        out.update({f"test/r_{k}/{name}": float(value) for name, value in metrics.items()})
    out.update({f"test/mean/{name}": float(value) for name, value in reasoning.get("mean", {}).items()})
    out["time/test_seconds"] = float(test["eval_seconds"])
    return out


def _final_results(
    model: SeqRecModel,
    split: Split,
    cfg: RunConfig,
    out: Path,
    fit: FitResult,
    sampler: TrainSampler,
    ds: SequenceDataset,
) -> dict[str, Any]:
    """Evaluate the best checkpoint (loaded by the fit) on validation and test, save the ranks and write
    ``results.json``; its contents."""
    log.info("evaluating %s: the best checkpoint (epoch %d) on valid and test", out, fit.best_epoch)
    results: dict[str, Any] = {
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped": fit.stopped,
        "train_targets_per_epoch": sampler.n_targets,
        "dataset": ds.describe(),
    }
    selector = None
    if cfg.eval.depth is not None:  # fit on validation once (saved in depth/), reported next to fixed K
        selector = run_selector(out, cfg.eval.depth, model, cfg, data=lambda: split)
    for which in ("valid", "test"):
        report, result = evaluation_report(model, split, cfg, which, cfg.eval, depth=selector)
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
    results["popularity"] = {
        which: popularity_report(split, split.samples(which), cfg.eval, cfg.model.max_len)
        for which in ("valid", "test")
    }
    atomic_write_json(out / "results.json", results)
    return results


def _fit_closed_form(
    model: SeqRecModel,
    split: Split,
    cfg: RunConfig,
    out: Path,
    info: dict[str, Any],
    trackers: Trackers = NO_TRACKERS,
) -> FitResult:
    """Fit a :class:`ClosedForm` backbone from the split (no epochs, no optimiser) and save it as the run's
    ``best`` and ``last`` checkpoints, with one log line: a run directory like a trained model's. Fitting
    again (a re-run on the same directory) gives the same model."""
    assert isinstance(model.backbone, ClosedForm)
    model.backbone.fit_from_split(split)
    valid = evaluate(model, split, split.valid, cfg.eval).metrics(cfg.eval.ks)
    row = {"epoch": 0, "loss": 0.0, "valid": valid, "fit": "closed form (no training epochs)"}
    state: dict[str, Any] = {"epoch": 1, "best_value": valid[cfg.train.valid_metric], "best_epoch": 0, "bad": 0}
    state.update(best_valid=valid, history=[row], stopped="closed_form")
    ckpt_dir = out / "checkpoints"
    save_checkpoint(ckpt_dir, "best", model, {**info, "epoch": 0, "valid": valid})
    save_checkpoint(ckpt_dir, "last", model, {**info, "trainer_state": state})
    atomic_write_text(out / "log.jsonl", json.dumps(row) + "\n")  # one line: the closed-form fit
    trackers.log_metrics(epoch_metrics(row), 0)
    return FitResult(0, valid, 0, [row], "closed_form")


def _reason(exc: Exception) -> str:
    """The gist of a parsing error in one line (a pydantic error: its first field and message)."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
    if isinstance(model.backbone, ClosedForm):  # nothing to train beside rank 0, which fits and writes
        return TrainedRun(out, FitResult(0, {}, 0, [], "closed_form"), ranks.broadcast({}))
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    model.to(_device(cfg, ranks))
    trainer = Trainer(model, build_objective(cfg, split), split, sampler, cfg.train, cfg.eval, out, {}, False, ranks)
    fit = trainer.fit()
    return TrainedRun(out, fit, ranks.broadcast({}))


def saved_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory (or a record of one) was trained with."""
    path = Path(run_dir)
    file = path / "config.json"
    if not file.exists():
        raise ThinkrecError(f"{path}: not a thinkrec run directory (no config.json); train one with thinkrec train")
    try:
        # a saved run's config: what only training needs (its trackers' packages) is not checked here
        return RunConfig.model_validate_json(file.read_bytes(), context=SAVED_RUN)
    except (OSError, ValueError) as exc:
        raise ThinkrecError(
            f"{file}: not a readable thinkrec config ({_reason(exc)}); restore it (the run's checkpoints record "
            "the config they were trained with), or train the run again"
        ) from None


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch log of a run directory (or a record of one): one dict per ``log.jsonl`` line."""
    text = (Path(run_dir) / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def vocabulary_size(run_dir: str | Path) -> int:
    """The number of items of a run's ``items.parquet``, read whole, so a damaged file is reported here (and
    not by the readers of the titles later)."""
    file = Path(run_dir) / "items.parquet"
    fix = "train the run again with the same command: resuming a run rewrites it"
    if not file.exists():
        raise ThinkrecError(f"{file}: missing (the run's item vocabulary); {fix}")
    try:
        table = pq.read_table(file)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ThinkrecError(f"{file}: damaged ({_reason(exc)}); {fix}") from None
    missing = {"item", "external_id"} - set(table.column_names)
    if missing:
        raise ThinkrecError(f"{file}: damaged (no column {', '.join(sorted(missing))}); {fix}")
    return int(table.num_rows)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None) -> tuple[RunConfig, SeqRecModel]:
    """The config and trained model of a run directory, on ``device`` (default: the run's ``device``
    setting, ``auto`` unless it was set). Every file it reads is checked: a missing or damaged one raises a
    :class:`ThinkrecError` naming it and what to do."""
    path = Path(run_dir)
    cfg = saved_config(path)
    ckpt_dir = path / "checkpoints"
    if not checkpoint_exists(ckpt_dir, checkpoint):
        raise ThinkrecError(f"{path}: no '{checkpoint}' checkpoint yet; has training finished an epoch?")
    model = build(cfg, vocabulary_size(path))
    load_checkpoint(ckpt_dir, checkpoint, model)
    model.to(resolve_device(device or cfg.device))
    model.eval()
    return cfg, model
