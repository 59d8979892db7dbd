"""An R²ec run: build from a config, train with RecPO (or the no-reasoning baseline), evaluate, reload.

A run directory holds ``config.json``, ``log.jsonl`` (one line per step: reward, advantage, NDCG@cutoff,
softmax term, reasoning length, losses, seconds per phase, and the validation metrics on evaluation steps),
``reward.png``, ``checkpoints/last.safetensors`` + ``last.json`` (the final *trainable* tensors only -- LoRA
adapters, or all weights for full fine-tuning -- and the cached item table, via the engine's atomic
checkpoint files), ``checkpoints/best.*`` (the weights with the best validation ``recpo.select_metric``,
when ``recpo.eval_every`` > 0; the test evaluation and later loads use them), ``results.json``,
``checkpoints/resume.safetensors`` (the resumable training state, every ``recpo.save_every`` steps and after
the last: :mod:`thinkrec.llm.resume`) and ``.lock`` (held while a process trains there).

Resuming: training the same config into a run directory that holds a resumable state continues after its
saved step (the log is cut back to that step); a run that has trained all its steps and written its results
says so and does nothing; another config is refused (``recpo.resume = false`` starts over instead).

Stages: a run may start from another run's trained weights (``init_from``), e.g. a supervised cold start
(``recpo.variant = "no_reasoning"``, catalogue InfoNCE on thousands of history prefixes) before RecPO.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file

from thinkrec.data.prepare import load_or_prepare
from thinkrec.data.split import Split, make_split
from thinkrec.errors import ThinkrecError
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.data import PromptBank, eval_examples, train_examples
from thinkrec.llm.distributed import Replicas
from thinkrec.llm.evaluation import popularity_report, training_counts
from thinkrec.llm.model import DualHeadLM
from thinkrec.llm.prompts import PromptBuilder
from thinkrec.llm.resume import (
    RUN_OUTPUTS,
    Progress,
    capture_random,
    random_tensors,
    read_state,
    restore_random,
    resume_point,
    save_state,
    state_does_not_fit,
)
from thinkrec.llm.trainer import LLMTrainer, StepLog
from thinkrec.seed import Seeds
from thinkrec.storage import (
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    exclusive_run_dir,
    remove_temporaries,
)
from thinkrec.train.checkpoint import restore_optimizer


def load_split(cfg: LLMRunConfig) -> Split:
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    return make_split(ds, cfg.data.split)


def make_builder(model: DualHeadLM, cfg: LLMRunConfig) -> PromptBuilder:
    return PromptBuilder(
        model.tokenizer,
        system_prompt=cfg.model.system_prompt,
        marker=cfg.prompt.answer_marker,
        max_prompt_tokens=cfg.model.max_prompt_tokens,
        max_item_tokens=cfg.model.max_item_tokens,
    )


def replicas_for(cfg: LLMRunConfig) -> Replicas:
    """This process's replica, on the backend of the configured device (gloo on the CPU, NCCL on CUDA)."""
    from thinkrec.device import resolve_device

    return Replicas.detect(cpu=resolve_device(cfg.model.device).type == "cpu")


def build_model(cfg: LLMRunConfig) -> DualHeadLM:
    from thinkrec.llm.hf import load_dual_head

    torch.manual_seed(Seeds(cfg.recpo.seed).torch_seed("llm-init"))
    return load_dual_head(cfg.model)


def log_popularity(split: Split) -> torch.Tensor:
    """``log(1 + count)`` of each item's interactions in the split's training prefixes (never later ones),
    ``[N + 1]`` (the pad item 0)."""
    return torch.log1p(torch.as_tensor(training_counts(split), dtype=torch.float32))


def item_prior(cfg: LLMRunConfig, split: Split) -> torch.Tensor | None:
    """The per-item logit prior of ``model.item_prior``: :func:`log_popularity`, or ``None``."""
    return None if cfg.model.item_prior == "none" else log_popularity(split)


STATE_TENSORS = ("item_table", "item_prior")  # saved beside the trainable tensors


def trainable_state(model: DualHeadLM) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors (and the cached item table and item prior), on the CPU."""
    tensors = {f"trainable.{n}": p.detach().cpu().clone() for n, p in model.lm.named_parameters() if p.requires_grad}
    for name in STATE_TENSORS:
        value = getattr(model, name)
        if value is not None:
            tensors[name] = value.detach().cpu().clone()
    if model.item_head is not None:
        tensors.update({f"item_head.{n}": p.detach().cpu().clone() for n, p in model.item_head.named_parameters()})
    return tensors


def restore_state(model: DualHeadLM, tensors: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state`'s tensors back (onto the model's device)."""
    state = {k.removeprefix("trainable."): v for k, v in tensors.items() if k.startswith("trainable.")}
    missing = set(state) - {n for n, _ in model.lm.named_parameters()}
    if missing:
        raise ThinkrecError(f"checkpoint tensors do not fit the model: {sorted(missing)[:3]} ...")
    model.lm.load_state_dict(state, strict=False)
    head = {k.removeprefix("item_head."): v for k, v in tensors.items() if k.startswith("item_head.")}
    if bool(head) != (model.item_head is not None):
        has = "holds an item head, the model has none" if head else "holds no item head, the model has one"
        raise ThinkrecError(f"the checkpoint {has}: check model.item_head")
    if model.item_head is not None:
        model.item_head.load_state_dict(head)
    for name in STATE_TENSORS:
        if name in tensors:
            setattr(model, name, tensors[name].to(model.device))


def save_llm_checkpoint(
    directory: Path,
    model: DualHeadLM,
    info: dict[str, Any],
    name: str = "last",
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``<name>.safetensors`` + ``<name>.json`` (``tensors`` default: the model's current state)."""
    atomic_save_tensors(directory / f"{name}.safetensors", tensors or trainable_state(model))
    atomic_write_json(directory / f"{name}.json", info)


def load_llm_checkpoint(directory: Path, model: DualHeadLM, name: str | None = None) -> dict[str, Any]:
    """Load checkpoint ``name`` (default: ``best`` when the run selected one, else ``last``)."""
    name = name or ("best" if (directory / "best.json").exists() else "last")
    if not (directory / f"{name}.json").exists():
        raise ThinkrecError(f"{directory}: no checkpoint ({name}.json); train first with thinkrec llm train")
    tensors = load_file(str(directory / f"{name}.safetensors"))
    try:  # restore_state checks that the tensors fit the model; its errors get the folder's name
        restore_state(model, tensors)
    except ThinkrecError as exc:
        raise ThinkrecError(f"{directory}: {exc}") from None
    info: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    return {**info, "checkpoint": name}


def initial_item_table(
    model: DualHeadLM, bank: PromptBank, cfg: LLMRunConfig, cache: bool, progress: bool = False
) -> None:
    """The item table of the untrained model (fresh LoRA adapters are zero, so it is the base model's).

    With ``cache`` it is kept under ``$THINKREC_CACHE_DIR/llm-item-tables``, keyed by the model directory,
    its weights' size and mtime, the item token ids and the precision (``model.autocast``), so runs on the
    same data do not rebuild it.
    """
    if not cache:
        model.build_item_table(bank.item_ids, cfg.eval.item_batch_size, progress)
        return
    from safetensors.torch import save_file

    from thinkrec import paths
    from thinkrec.llm.hf import resolve_model_path

    model_dir = resolve_model_path(cfg.model)
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(model_dir.glob("*.safetensors"))]
    parts: list[Any] = [str(model_dir.resolve()), stamp, bank.item_ids]
    if cfg.model.autocast != "none":  # float32 tables keep the key they had before the setting existed
        parts.append(cfg.model.autocast)
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
    path = paths.cache_dir() / "llm-item-tables" / f"{key}.safetensors"
    if path.exists():
        model.item_table = load_file(str(path))["item_table"].to(model.device)
        return
    table = model.build_item_table(bank.item_ids, cfg.eval.item_batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"item_table": table.cpu()}, str(tmp))
    tmp.replace(path)


def table_is_fresh(step: int, refresh_every: int) -> bool:
    """Whether step ``step`` (1-based) computes its reward against a freshly built item table: step 1, and
    the first step after each rebuild (every ``recpo.refresh_every`` steps); the other steps rank their
    fresh targets among rows encoded by an older model."""
    return step == 1 or (refresh_every > 0 and (step - 1) % refresh_every == 0)


def plot_rewards(log: list[dict[str, Any]], path: Path, refresh_every: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    reward = np.array([r["reward"] for r in log])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, reward, marker=".", alpha=0.5, label="mean reward per step")
    if len(reward) >= 3:
        window = max(2, len(reward) // 5)
        smooth = np.convolve(reward, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"moving average ({window})")
    if refresh_every > 0:
        by_step = {r["step"]: r["reward"] for r in log}
        fresh = [s for s in steps if table_is_fresh(s, refresh_every)]
        ax.plot(fresh, [by_step[s] for s in fresh], "s-", color="black", label="fresh item table (honest)")
    ax.set_xlabel("step")
    ax.set_ylabel("fused reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_llm(
    cfg: LLMRunConfig,
    run_dir: str | Path | None = None,
    model: DualHeadLM | None = None,
    split: Split | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train for ``cfg.recpo.steps`` steps, then evaluate on the test samples; returns the results.

    A run directory with a resumable state of the same config continues after its saved step; one that has
    finished returns its saved results (:mod:`thinkrec.llm.resume`). Under ``accelerate launch`` /
    ``torchrun`` the processes train one model data-parallel (:mod:`thinkrec.llm.distributed`); only the main
    process writes the run directory, and holds its lock (:func:`~thinkrec.storage.exclusive_run_dir`)
    meanwhile; every process reads a resumable state.
    """
    out = Path(run_dir or cfg.default_run_dir())
    with exclusive_run_dir(out) if replicas_for(cfg).is_main else nullcontext():
        return _train_llm(cfg, out, model, split, progress, evaluate_test)


def _train_llm(
    cfg: LLMRunConfig,
    out: Path,
    model: DualHeadLM | None,
    split: Split | None,
    progress: bool,
    evaluate_test: bool,
) -> dict[str, Any]:
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    replicas = replicas_for(cfg)
    if cfg.recpo.users_per_step < replicas.world:
        raise ThinkrecError(
            f"recpo.users_per_step={cfg.recpo.users_per_step} is smaller than the {replicas.world} processes; "
            "every process needs at least one user per step"
        )
    main = replicas.is_main
    # every process reads the saved state's header (the same answer everywhere), before anything is written
    saved = resume_point(cfg, out, replicas.world)
    if saved is not None and saved.step >= cfg.recpo.steps:
        done = finished_results(out, evaluate_test, saved.step)
        if done is not None:  # trained and tested: nothing to do (the test evaluation alone takes hours)
            if main:
                print(
                    f"{out}: finished ({saved.step} of {cfg.recpo.steps} steps trained, results in results.json);"
                    " raise recpo.steps to train it further, or set recpo.resume=false to train it again",
                    flush=True,
                )
            return done
    # the whole state, its checksum checked, before anything is written (a damaged one changes nothing)
    loaded = read_state(out) if saved is not None else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, out / "checkpoints"):
            remove_temporaries(folder)  # of writers killed mid-write; no live writer exists while we hold the lock
        if saved is None:  # starting over: nothing of a run before stays beside this one's files
            for name in RUN_OUTPUTS:
                (out / name).unlink(missing_ok=True)
        else:  # results of fewer steps (a finished run given more) must not pass for this run's
            (out / "results.json").unlink(missing_ok=True)
        atomic_write_json(out / "config.json", json.loads(cfg.model_dump_json()))
    split = split or load_split(cfg)
    own_model = model is None
    model = model or build_model(cfg)
    # a resumed run's weights come from its state (the run it started from may be gone by now)
    init = initialise_from(model, cfg) if cfg.init_from and saved is None else None
    prior = item_prior(cfg, split)  # this run's split and setting, never the source run's
    model.item_prior = None if prior is None else prior.to(model.device)
    bank = PromptBank(split.dataset, cfg, make_builder(model, cfg))
    trainer = LLMTrainer(model, bank, cfg, replicas)
    examples = train_examples(split, cfg)
    valid = eval_examples(split, cfg, "valid") if cfg.recpo.eval_every else []
    rng = Seeds(cfg.recpo.seed).numpy("llm-order")
    order: list[int] = []
    log: list[dict[str, Any]] = []
    log_path = out / "log.jsonl"
    selection = Selection(cfg, trainer, split, valid, out, main, progress)
    t0 = time.perf_counter()
    if loaded is not None:
        state = restore_training(out, loaded, trainer, selection, replicas)
        order, log = state.order, state.log
        rng.bit_generator.state = state.order_rng
        table_seconds, t0 = state.table_seconds, t0 - state.train_seconds
        if main:
            # the log as it was at the saved step: a kill after it (or in the middle of a line) left more
            atomic_write_text(log_path, "".join(json.dumps(row) + "\n" for row in log))
            _say(f"resuming {out} after step {state.step} of {cfg.recpo.steps}", progress)
    else:
        if main:
            log_path.write_text("")
        if init is not None or cfg.recpo.item_side == "fixed":
            # trained weights (or the fixed side's adapter-free table): not the cached base-model table
            trainer.ensure_item_table(rebuild=init is not None, progress=progress and main)
        else:
            if main:  # the main process fills the shared cache first; the others then read it
                initial_item_table(model, bank, cfg, cache=own_model, progress=progress)
            replicas.barrier()
            if not main:
                initial_item_table(model, bank, cfg, cache=own_model)
        table_seconds = time.perf_counter() - t0
        selection.evaluate(0)  # the starting point competes too (a cold start RecPO may only make worse)
    first = saved.step + 1 if saved is not None else 1
    steps = range(first, cfg.recpo.steps + 1)
    bar: Any = steps
    progress = progress and main
    if progress:
        from tqdm import tqdm

        bar = tqdm(steps, desc=f"llm {cfg.recpo.variant}", unit="step", initial=first - 1, total=cfg.recpo.steps)
    save_every = cfg.recpo.save_every
    for step in bar:
        if len(order) < cfg.recpo.users_per_step:
            order.extend(rng.permutation(len(examples)).tolist())
        batch = [examples[i] for i in order[: cfg.recpo.users_per_step]]
        del order[: cfg.recpo.users_per_step]
        if step > 1 and table_is_fresh(step, cfg.recpo.refresh_every):
            model.build_item_table(bank.item_ids, cfg.eval.item_batch_size)
        record: StepLog = trainer.step(batch, step)
        row = record.as_dict()
        if cfg.recpo.eval_every and (step % cfg.recpo.eval_every == 0 or step == cfg.recpo.steps):
            row["valid"] = selection.evaluate(step)
        log.append(row)
        if main:
            with log_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        if save_every and (step % save_every == 0 or step == cfg.recpo.steps):
            state_now = Progress(
                step=step,
                steps=cfg.recpo.steps,
                world=replicas.world,
                device=trainer.device.type,
                order=list(order),
                order_rng=dict(rng.bit_generator.state),
                scheduler=trainer.scheduler.state_dict(),
                log=log,
                best_value=selection.best_value,
                best_step=selection.best_step,
                history=selection.history,
                table_seconds=table_seconds,
                train_seconds=time.perf_counter() - t0,
            )
            save_training(out, cfg, trainer, selection, replicas, state_now)
        if progress:
            bar.set_postfix(reward=f"{record.reward:.3f}", ndcg=f"{record.ndcg:.3f}", len=f"{record.reasoning_len:.0f}")
    replicas.check_in_sync(trainer.params)
    if main:
        plot_rewards(log, out / "reward.png", cfg.recpo.refresh_every)
        save_llm_checkpoint(
            out / "checkpoints",
            model,
            {"config": json.loads(cfg.model_dump_json()), "steps": cfg.recpo.steps, "item_table_fresh": False},
        )
    selection.restore_best()
    results: dict[str, Any] = {
        "variant": cfg.recpo.variant,
        "pairing": cfg.recpo.pairing,
        "processes": replicas.world,
        "train_examples": len(examples),
        "init_from": cfg.init_from,
        "item_table_seconds": table_seconds,
        "train_seconds": time.perf_counter() - t0,
        "reward_first_half": float(np.mean([r["reward"] for r in log[: max(1, len(log) // 2)]])),
        "reward_second_half": float(np.mean([r["reward"] for r in log[len(log) // 2 :]])),
        "selection": selection.summary(),
    }
    results["steps"] = cfg.recpo.steps  # what finished_results checks against the saved state
    if saved is not None:
        results["resumed_after_step"] = saved.step
    if evaluate_test:
        results["test"] = evaluation(trainer, split, cfg, "test", progress)
    if main:
        atomic_write_json(out / "results.json", results)
    replicas.barrier()
    return results


def _say(line: str, progress: bool) -> None:
    """A line on the console (through tqdm when bars are drawn, so they are not broken)."""
    if progress:
        from tqdm import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def finished_results(run_dir: Path, evaluate_test: bool, steps: int) -> dict[str, Any] | None:
    """The results of a run directory that has trained all its ``steps``, or ``None`` when it has not written
    them (killed during the test evaluation, say), when they are of another number of steps (a finished run
    given more steps and killed before its new results), or when it has not tested its weights and
    ``evaluate_test`` asks."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or (evaluate_test and "test" not in results):
        return None
    return results if results.get("steps") == steps else None


def save_training(
    out: Path, cfg: LLMRunConfig, trainer: LLMTrainer, selection: Selection, replicas: Replicas, state: Progress
) -> None:
    """Write the resumable state after ``state.step`` (:mod:`thinkrec.llm.resume`): every process hands its
    random streams to the main process, which writes the one file."""
    every = replicas.gather(capture_random(trainer.generator))
    if not replicas.is_main:
        return
    random_part, state.random = random_tensors(every)
    tensors = {**trainable_state(trainer.model), **random_part}
    if selection.best is not None:
        tensors.update({f"best.{name}": value for name, value in selection.best.items()})
    save_state(out, json.loads(cfg.model_dump_json()), state, tensors, trainer.optimizer)


def restore_training(
    out: Path,
    loaded: tuple[dict[str, torch.Tensor], dict[str, Any], Progress],
    trainer: LLMTrainer,
    selection: Selection,
    replicas: Replicas,
) -> Progress:
    """Put the resumable state ``loaded`` (:func:`~thinkrec.llm.resume.read_state`: every process reads the
    file) into this process's model, optimizer, scheduler, random streams and best-validation tracking;
    returns its :class:`Progress` (data order, log)."""
    tensors, info, state = loaded
    if state.device != trainer.device.type:
        raise ThinkrecError(
            f"{out} holds a run trained on {state.device}, this one runs on {trainer.device.type}: a random"
            f" generator's state fits only its own kind of device; resume it with model.device={state.device},"
            " or set recpo.resume=false to start over"
        )
    model = trainer.model
    wanted = {name for name, p in model.lm.named_parameters() if p.requires_grad}
    held = {key.removeprefix("trainable.") for key in tensors if key.startswith("trainable.")}
    if wanted != held:
        raise state_does_not_fit(out, f"trainable tensors differ: {sorted(wanted ^ held)[:3]}")
    try:
        restore_state(model, tensors)  # it reads only its own keys (not best.*, optimizer or random state)
        if model.item_table is not None:  # training writes into it: never the file's memory
            model.item_table = model.item_table.clone()
        restore_optimizer(trainer.optimizer, tensors, info)
        trainer.scheduler.load_state_dict(dict(state.scheduler))
        restore_random(state, tensors, replicas.rank, trainer.generator)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise state_does_not_fit(out, reason) from None
    best = {key.removeprefix("best."): value for key, value in tensors.items() if key.startswith("best.")}
    selection.resume(state, best or None)
    return state


def saved_llm_config(run_dir: Path) -> LLMRunConfig:
    """The config an R²ec run directory was trained with (a :class:`ThinkrecError` when it cannot be read)."""
    file = run_dir / "config.json"
    try:
        return LLMRunConfig.model_validate_json(file.read_bytes())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        raise ThinkrecError(f"{file}: not a readable R²ec run config ({reason}); train the run again") from None


def initialise_from(model: DualHeadLM, cfg: LLMRunConfig) -> dict[str, Any]:
    """Load the trained weights of run ``cfg.init_from`` (its best checkpoint, else its last); its model
    section must be the one of ``cfg`` (the same base model, fine-tuning and adapters)."""
    assert cfg.init_from is not None
    source = Path(cfg.init_from)
    if not (source / "config.json").exists():
        raise ThinkrecError(f"init_from={source}: not an LLM run directory (no config.json)")
    other = saved_llm_config(source)
    # lora_layers: adapters of other layers would load partly (the rest fresh) or not at all; autocast: the
    # weights were fit against hidden states (and a fixed item table) of that precision; item_prior: the user
    # vectors were fit to what the prior leaves unexplained; item_head: and to the mapped item vectors
    keys = [
        *("path", "finetune", "lora_r", "lora_alpha", "lora_targets", "lora_layers", "autocast"),
        *("item_prior", "item_head"),
    ]
    differ = [k for k in keys if getattr(other.model, k) != getattr(cfg.model, k)]
    if differ:
        raise ThinkrecError(f"init_from={source}: its model.{differ[0]} differs from this run's")
    info = load_llm_checkpoint(source / "checkpoints", model)
    model.item_table = None  # rebuilt by the trainer for this run's prompts and item side
    return info


class Selection:
    """Best-validation checkpoint selection: every ``recpo.eval_every`` steps (and before the first), the
    validation ``recpo.select_metric`` is compared with the best so far; the best weights are kept in memory
    (every process) and written to ``checkpoints/best.*`` (main process). A most-popular row computed on the
    same validation samples is reported beside each evaluation. Off (a no-op) when ``eval_every`` is 0."""

    def __init__(
        self,
        cfg: LLMRunConfig,
        trainer: LLMTrainer,
        split: Split,
        valid: list[Any],
        out: Path,
        main: bool,
        progress: bool,
    ) -> None:
        self.cfg, self.trainer, self.valid, self.out, self.main, self.progress = (
            cfg,
            trainer,
            valid,
            out,
            main,
            progress,
        )
        self.metric = cfg.recpo.select_metric
        self.on = bool(cfg.recpo.eval_every) and bool(valid)
        self.popularity = (
            popularity_report(split, valid, cfg.eval.ks, cfg.eval.mask_history)
            if self.on and cfg.eval.popularity_baseline
            else None
        )
        self.best_value = float("-inf")
        self.best_step = -1
        self.best: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.on:
            return {}
        report = self.trainer.evaluate(self.valid, self.progress)
        metrics: dict[str, float] = report["metrics"]
        value = metrics[self.metric]
        if value > self.best_value:
            self.best_value, self.best_step = value, step
            self.best = trainable_state(self.trainer.model)
            if self.main:
                info = {"config": json.loads(self.cfg.model_dump_json()), "step": step, "item_table_fresh": True}
                save_llm_checkpoint(self.out / "checkpoints", self.trainer.model, info, "best", self.best)
        pop = self.popularity["metrics"][self.metric] if self.popularity else None
        self.history.append({"step": step, **metrics, "cost": report["cost"]})
        if self.main:
            side = f"  most-popular {pop:.4f}" if pop is not None else ""
            line = (
                f"step {step}: valid {self.metric} {value:.4f}{side}  (best {self.best_value:.4f} at step"
                f" {self.best_step}; {report['n_samples']} samples)"
            )
            _say(line, self.progress)
        return metrics

    def resume(self, state: Progress, best: dict[str, torch.Tensor] | None) -> None:
        """Continue the tracking of a resumed run: its best so far (value, step, weights) and its validations.
        The main process writes ``checkpoints/best.*`` from those weights again: a run killed after it wrote a
        new best (or half of one: two files) but before it saved its state left a best the resumed run has not
        reached yet."""
        self.best_value, self.best_step, self.history = state.best_value, state.best_step, state.history
        self.best = best
        if not self.main:
            return
        directory = self.out / "checkpoints"
        if best is None:
            for name in ("best.safetensors", "best.json"):
                (directory / name).unlink(missing_ok=True)
            return
        info = {"config": json.loads(self.cfg.model_dump_json()), "step": state.best_step, "item_table_fresh": True}
        save_llm_checkpoint(directory, self.trainer.model, info, "best", best)

    def restore_best(self) -> None:
        """Put the best weights back (the test evaluation then uses them); a no-op without selection."""
        if self.best is not None:
            restore_state(self.trainer.model, self.best)

    def summary(self) -> dict[str, Any]:
        if not self.on:
            return {"selected": "final weights (recpo.eval_every = 0: no validation)"}
        return {
            "selected": f"best validation {self.metric} (checkpoints/best.*)",
            "metric": self.metric,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "valid_samples": len(self.valid),
            "most_popular": self.popularity["metrics"] if self.popularity else None,
            "history": self.history,
        }


def evaluation(
    trainer: LLMTrainer, split: Split, cfg: LLMRunConfig, which: Literal["valid", "test"], progress: bool
) -> dict[str, Any]:
    """The model's report on the seeded ``which`` samples (full catalogue), with the per-sample ``(user,
    position)`` list that pairs runs, and a most-popular row on the same samples and masking."""
    examples = eval_examples(split, cfg, which)
    report = trainer.evaluate(examples, progress)
    report["samples"] = [[ex.user, ex.position] for ex in examples]
    if cfg.eval.popularity_baseline:
        report["popularity"] = popularity_report(split, examples, cfg.eval.ks, cfg.eval.mask_history)
    report["protocol"] = {
        **{k: v for k, v in split.protocol.items() if k != "samples"},
        "samples": f"{len(examples)} seeded {which} samples (sample.seed={cfg.sample.seed})",
        "candidates": f"full catalogue ({split.dataset.n_items} items; the pad item never ranks)",
        "history_masking": "the user's whole history excluded" if cfg.eval.mask_history else "not masked",
        "reasoning": "greedy, stop at the marker" if cfg.recpo.variant == "recpo" else "none (prompt + marker)",
        "ranking": "pessimistic ties",
        "most_popular": "training-prefix interaction counts, same samples and masking",
    }
    return report


def load_llm_run(run_dir: str | Path) -> tuple[LLMRunConfig, DualHeadLM]:
    path = Path(run_dir)
    if not (path / "config.json").exists():
        raise ThinkrecError(f"{path}: not an LLM run directory (no config.json); run thinkrec llm train first")
    cfg = saved_llm_config(path)
    model = build_model(cfg)
    info = load_llm_checkpoint(path / "checkpoints", model)
    if not info.get("item_table_fresh", False) and cfg.recpo.item_side == "trained":
        model.item_table = None  # stale rows: rebuilt on first use (a fixed item side keeps its table)
    if (model.item_prior is not None) != (cfg.model.item_prior != "none"):
        raise ThinkrecError(
            f"{path}: the checkpoint {'holds' if model.item_prior is not None else 'lacks'} an item prior but the"
            f" run's config says model.item_prior={cfg.model.item_prior!r}; the files do not belong together"
        )
    return cfg, model
