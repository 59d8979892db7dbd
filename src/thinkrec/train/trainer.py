"""The training loop: epochs of shuffled batches, validation, early stopping, checkpoints, resume.

Everything random is derived from the root seed per epoch (data order, dropout), so a run killed after
epoch ``e`` and resumed from its ``last`` checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from tqdm import tqdm

from thinkrec.data.batches import TrainBatch, TrainSampler
from thinkrec.data.dataset import PAD
from thinkrec.data.split import Split
from thinkrec.distributed import SINGLE, Ranks
from thinkrec.errors import ThinkrecError
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.metrics import parse_metric
from thinkrec.eval.protocol import EvalConfig
from thinkrec.eval.steps import step_metrics
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives import Objective, loss_names
from thinkrec.objectives.registry import SELECTED_ELSEWHERE
from thinkrec.objectives.sampled import NegativeMode, NegativesPer
from thinkrec.precision import warn_slow_bf16
from thinkrec.seed import Seeds
from thinkrec.storage import atomic_write_text
from thinkrec.train.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from thinkrec.train.optim import ItemUpdates, build_optimizer, clip_gradients
from thinkrec.train.trackers import NO_TRACKERS, Trackers, check_trackers

log = logging.getLogger(__name__)

# Validation context of a config read back from a run directory (runs.saved_config): what only training needs
# is not checked there, so evaluating or serving a run does not need its trackers' packages, for one.
SAVED_RUN_KEY = "saved_run"
SAVED_RUN: dict[str, bool] = {SAVED_RUN_KEY: True}


class TrainConfig(BaseModel):
    """Optimisation settings (RecBole names in brackets)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(200, description="maximum number of epochs [epochs]", ge=1)
    batch_size: int = Field(
        256,
        description=(
            "training samples per batch [train_batch_size]; under torchrun the global batch: each of N processes"
            " trains batch_size / N of its rows"
        ),
        ge=1,
    )
    optimizer: Literal["adam", "adamw"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, description="learning rate [learning_rate]", gt=0)
    weight_decay: float = Field(0.0, description="weight decay (L2 for adam, decoupled for adamw)", ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999),
        description="Adam's moment decay rates (beta1, beta2); RecTools' transformers use (0.9, 0.98)",
    )
    grad_clip: float | None = Field(None, description="clip the gradient norm to this value (> 0; default: off)", gt=0)
    sample_mode: Literal["all", "last"] = Field(
        "all", description="'all': every position predicts its next item; 'last': one target per prefix"
    )
    stride: int | None = Field(
        None, description="'all' mode: targets per window for sequences longer than max_len (default max_len)"
    )
    loss: str = Field(
        "ce",
        description=(
            "training objective of a plain run: 'ce' = full-softmax cross-entropy, 'sampled' = sampled softmax,"
            " or any objective registered with thinkrec.objectives.register_objective"
        ),
    )
    n_negatives: int = Field(
        256, description="sampled softmax: negatives per batch, or per target with negatives_per='target'", ge=1
    )
    negatives_per: NegativesPer = Field(
        "batch",
        description=(
            "sampled softmax: 'batch' = one set of negatives shared by the batch (cheap); 'target' = each trained"
            " position draws its own (RecTools, eSASRec); uniform and popularity negatives only"
        ),
    )
    negatives: NegativeMode = Field(
        "uniform",
        description=(
            "sampled softmax: how negatives are drawn: 'uniform' over the catalogue, 'popularity' in proportion to"
            " the items' training counts, 'in_batch' = the batch's own targets (at most n_negatives of them)"
        ),
    )
    logq: bool = Field(
        False,
        description=(
            "sampled softmax: subtract log(sampling probability) from every candidate's logit (log-Q correction;"
            " no effect with uniform negatives)"
        ),
    )
    item_updates: ItemUpdates = Field(
        "dense",
        description=(
            "'dense': Adam updates every item-table row each step; 'touched': only the rows the batch's inputs,"
            " targets and negatives touched, with sparse gradients (lazy Adam; rows untouched keep their"
            " momentum instead of drifting with it). With train.loss='sampled' only: pays with big catalogues"
        ),
    )
    valid_metric: str = Field(
        "NDCG@10", description="validation metric for early stopping, NAME@K with K in eval.ks [valid_metric]"
    )
    patience: int = Field(10, description="stop after this many evaluations without improvement", ge=1)
    eval_every: int = Field(1, description="validate every this many epochs", ge=1)
    autocast: Literal["none", "bf16"] = Field(
        "none", description="CPU mixed precision for training: bf16 only pays off on AMX / AVX512-BF16 CPUs"
    )
    threads: int | None = Field(
        None, description="torch CPU threads (default: torch's choice)", ge=1, json_schema_extra={"operational": True}
    )
    seed: int = Field(2020, description="root seed: data order, initialisation, dropout and noise")
    trackers: list[str] = Field(
        default_factory=list,
        description=(
            "experiment trackers that receive the run's settings and every epoch's metrics: 'tensorboard'"
            " (<run_dir>/tensorboard/; pip install 'thinkrec[tensorboard]'), 'mlflow' (MLflow's tracking URI and"
            " experiment from its environment variables; pip install 'thinkrec[mlflow]'), or any registered with"
            " thinkrec.train.trackers.register_tracker"
        ),
        json_schema_extra={"operational": True},
    )
    resume: bool = Field(
        True,
        description="continue from the run directory's last checkpoint if present",
        json_schema_extra={"operational": True},
    )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value in SELECTED_ELSEWHERE:
            raise ValueError(f"{value!r} is not chosen through train.loss; set {SELECTED_ELSEWHERE[value]}")
        if value not in loss_names():
            raise ValueError(f"unknown objective {value!r}; choose one of {', '.join(loss_names())}")
        return value

    @model_validator(mode="after")
    def _sampled_options(self) -> TrainConfig:
        if self.loss != "sampled" and (self.negatives != "uniform" or self.logq or self.negatives_per != "batch"):
            raise ValueError(
                "train.negatives, train.negatives_per and train.logq apply to train.loss='sampled' (the loss is"
                f" {self.loss!r})"
            )
        if self.negatives_per == "target" and self.negatives == "in_batch":
            raise ValueError(
                "train.negatives_per='target' draws negatives for each target; in-batch negatives are the batch's"
                " own targets: use negatives_per='batch'"
            )
        return self

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_tracker(cls, value: object) -> object:
        """``train.trackers=tensorboard`` (one name, as an override writes it) is a list of one."""
        return [value] if isinstance(value, str) else value

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not (isinstance(info.context, dict) and info.context.get(SAVED_RUN_KEY)):
            check_trackers(value)  # registered, and their packages installed: before anything is written
        return value

    @field_validator("valid_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        parse_metric(value)
        return value


class NonFiniteLossError(ThinkrecError):
    """Training produced a NaN/inf loss; the run stops and the last good checkpoint is kept."""


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "max_epochs"


class Trainer:
    """Fits a model with an objective on a split; checkpoints and logs go to ``run_dir``."""

    def __init__(
        self,
        model: SeqRecModel,
        objective: Objective,
        split: Split,
        sampler: TrainSampler,
        cfg: TrainConfig,
        eval_cfg: EvalConfig,
        run_dir: Path,
        run_info: dict[str, Any] | None = None,
        progress: bool = False,
        ranks: Ranks = SINGLE,
        trackers: Trackers = NO_TRACKERS,
    ) -> None:
        self.model = model
        self.trackers = trackers  # experiment trackers, started by the caller: told every epoch's metrics
        self.ranks = ranks  # data-parallel processes (torchrun): see thinkrec.distributed
        self.objective = objective
        self.split = split
        self.sampler = sampler
        self.cfg = cfg
        self.eval_cfg = eval_cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.run_info = run_info or {}
        self.progress = progress
        self.device = next(model.parameters()).device
        self.seeds = Seeds(cfg.seed)
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas, cfg.item_updates)
        if cfg.autocast == "bf16":
            warn_slow_bf16("train.autocast")
        ranks.broadcast_params(list(model.parameters()))

    # ------------------------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.objective.start_epoch(epoch)
        rng = self.seeds.numpy(f"data-order/{epoch}")
        rank = f"/rank{self.ranks.rank}" if self.ranks.distributed else ""  # each process its own masks
        torch.manual_seed(self.seeds.torch_seed(f"dropout/{epoch}{rank}"))
        n_batches = self.sampler.n_batches(self.cfg.batch_size)
        batches = self.sampler.batches(self.cfg.batch_size, rng)
        bar = tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=not self.progress,
        )
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        for global_batch in bar:
            batch = shard_batch(global_batch, self.ranks).to(self.device)
            # a last global batch smaller than world leaves a share without rows; a share without targets has
            # nothing to train either (its loss would be NaN on this process alone): both still join the
            # gradient all-reduce, with weight 0, so every process runs the same collectives
            if self.ranks.distributed and (len(batch.inputs) == 0 or batch.n_targets == 0):
                self._step_without_rows()
                count += 1
                continue
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
                out = self.objective(self.model, batch)
            if not torch.isfinite(out.total):
                raise NonFiniteLossError(
                    f"epoch {epoch}: the loss became {float(out.total.detach())} (parts: {out.parts}); training "
                    f"stopped and the last good checkpoint in {self.ckpt_dir} is kept. Lower train.lr, add "
                    "train.grad_clip, or lengthen the warm-up before the reasoning losses switch on."
                )
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(out.total)
            self.ranks.average_gradients(list(self.model.parameters()), float(batch.n_targets))
            if self.cfg.grad_clip:
                clip_gradients(list(self.model.parameters()), self.cfg.grad_clip)
            self.optimizer.step()
            count += 1
            for key, value in {"loss": float(out.total.detach()), **out.parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        local_batches = count
        if self.ranks.distributed:  # the mean over every process's batches
            sums = self.ranks.sum_floats({**sums, "_count": float(count)}, self.device)
            count = int(sums.pop("_count"))
        stats = {key: value / max(1, count) for key, value in sums.items()}
        stats["train_seconds"] = time.perf_counter() - t0
        stats["batches"] = local_batches
        return stats

    def _step_without_rows(self) -> None:
        """This process's share of a global batch has no rows or no targets: take part in the gradient
        average with weight 0 (the same all-reduce as the others), then step like the others."""
        self.optimizer.zero_grad(set_to_none=True)
        self.ranks.average_gradients(list(self.model.parameters()), 0.0)
        if self.cfg.grad_clip:
            clip_gradients(list(self.model.parameters()), self.cfg.grad_clip)
        self.optimizer.step()

    # ------------------------------------------------------------------------------------------ fit
    def fit(self) -> FitResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "log.jsonl"
        state: dict[str, Any] = {
            "epoch": 0,
            "best_value": -math.inf,
            "best_epoch": -1,
            "bad": 0,
            "best_valid": {},
            "history": [],
        }
        if self.cfg.resume and checkpoint_exists(self.ckpt_dir, "last"):
            info = load_checkpoint(self.ckpt_dir, "last", self.model, self.optimizer)
            state = info["trainer_state"]
            if self.ranks.is_main:
                self._say(f"resuming {self.run_dir} after epoch {state['epoch'] - 1}")
                # A run killed between its checkpoint and its log line (or in the middle of that line) left a
                # log that disagrees with the checkpoint: rewrite it from the checkpoint's history of the epochs.
                atomic_write_text(log_path, "".join(json.dumps(row) + "\n" for row in state["history"]))
        elif log_path.exists() and self.ranks.is_main:
            log_path.unlink()
        stopped = "max_epochs"
        if state.get("stopped") == "early_stop":
            # An early-stopped run stays stopped when train.epochs grows: an uninterrupted run with the larger
            # train.epochs would have stopped at the same epoch too.
            stopped = "early_stop"
            if state["epoch"] < self.cfg.epochs:
                self._say(
                    f"{self.run_dir} stopped early after epoch {state['epoch'] - 1} ({self.cfg.patience} evaluations "
                    "without improvement); more epochs would not train it further"
                )
        epoch = state["epoch"]
        while epoch < self.cfg.epochs and stopped != "early_stop":
            row: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
            if not self.ranks.is_main:  # rank 0 validates and writes; take its state when it is done
                state, stopped = self.ranks.broadcast((state, stopped))
                epoch += 1
                continue
            selectable = epoch >= self.objective.first_selectable_epoch
            if not selectable:
                row["warmup"] = True
            if (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs:
                t0 = time.perf_counter()
                result = evaluate(self.model, self.split, self.split.valid, self.eval_cfg)
                valid = result.metrics(self.eval_cfg.ks)
                row["valid"] = valid
                # every reasoning step on its own and their mean: which step the checkpoint's metric comes from
                steps = step_metrics(result, self.eval_cfg.ks)
                if steps:
                    row["valid_steps"] = steps
                row["eval_seconds"] = time.perf_counter() - t0
                value = valid.get(self.cfg.valid_metric)
                if value is None:
                    raise ThinkrecError(
                        f"train.valid_metric {self.cfg.valid_metric!r} is not computed; choose one of "
                        f"{sorted(valid)} (eval.ks sets the K values)"
                    )
                if not selectable:  # a warm-up epoch: neither a candidate for the best nor a bad evaluation
                    pass
                elif value > state["best_value"]:
                    state.update(best_value=value, best_epoch=epoch, bad=0, best_valid=valid)
                    save_checkpoint(
                        self.ckpt_dir, "best", self.model, {**self.run_info, "epoch": epoch, "valid": valid}
                    )
                else:
                    state["bad"] += 1
                if state["bad"] >= self.cfg.patience:
                    stopped = "early_stop"
            state["history"].append(row)
            state["epoch"] = epoch + 1
            state["stopped"] = stopped
            save_checkpoint(
                self.ckpt_dir, "last", self.model, {**self.run_info, "trainer_state": state}, self.optimizer
            )
            with log_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            # after the checkpoint, like the log line: a resumed run logs its last epoch again (see trackers)
            self.trackers.log_metrics(epoch_metrics(row), epoch)
            self._report(row, state)
            self.ranks.broadcast((state, stopped))
            epoch += 1
        if checkpoint_exists(self.ckpt_dir, "best"):
            load_checkpoint(self.ckpt_dir, "best", self.model)
        if self.ranks.is_main:
            plot_curves(state["history"], self.run_dir / "curve.png", self.cfg.valid_metric, state["best_epoch"])
        return FitResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"], stopped)

    def _report(self, row: dict[str, Any], state: dict[str, Any]) -> None:
        text = f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}  {row['train_seconds']:.1f}s"
        if "valid" in row:
            text += f"  valid {self.cfg.valid_metric} {row['valid'][self.cfg.valid_metric]:.4f}"
            text += "  *" if state["best_epoch"] == row["epoch"] else ""
        self._say(text)

    def _say(self, text: str) -> None:
        """A line for the user: between the progress bars when they are drawn, else to this module's logger
        (which the CLI shows on standard error)."""
        if self.progress:
            tqdm.write(text)
        else:
            log.info(text)


def shard_batch(batch: TrainBatch, ranks: Ranks) -> TrainBatch:
    """This process's rows of a global batch (``rank::world``: the rows are sorted by length, so every share
    gets long and short ones), trimmed to its longest row (left padding, see :mod:`thinkrec.data.batches`)."""
    if not ranks.distributed:
        return batch
    inputs = batch.inputs[ranks.rank :: ranks.world]
    targets = batch.targets[ranks.rank :: ranks.world]
    used = (inputs != PAD).any(dim=0)  # a target's column always has an input
    first = int(torch.nonzero(used)[0]) if bool(used.any()) else max(0, inputs.shape[1] - 1)
    if batch.mode == "all":
        targets = targets[:, first:]
    return TrainBatch(inputs[:, first:], batch.positions[first:], targets, batch.mode)


# Keys of a log row that are not parts of the training loss.
ROW_KEYS = frozenset({"epoch", "loss", "train_seconds", "batches", "warmup", "valid", "valid_steps", "eval_seconds"})


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The scalars of a ``log.jsonl`` row, as experiment trackers get them: ``train/loss`` and each named part
    of the loss (``train/<part>``), ``valid/<metric>`` (the inference mode in use), ``valid/<step>/<metric>``
    for every reasoning step ``r_0 .. r_K`` and their ``mean``, and ``time/{train,eval,epoch}_seconds``."""
    out: dict[str, float] = {}
    for key, value in row.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and (key == "loss" or key not in ROW_KEYS):
            out[f"train/{key}"] = float(value)
    for name, value in row.get("valid", {}).items():
        out[f"valid/{name}"] = float(value)
    for step, metrics in row.get("valid_steps", {}).items():
        for name, value in metrics.items():
            out[f"valid/{step}/{name}"] = float(value)
    seconds = {key: float(row[f"{key}_seconds"]) for key in ("train", "eval") if f"{key}_seconds" in row}
    for key, value in seconds.items():
        out[f"time/{key}_seconds"] = value
    if seconds:
        out["time/epoch_seconds"] = sum(seconds.values())
    return out


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str, best_epoch: int | None = None) -> None:
    """Training loss (total and each named part) and the validation metric per epoch (of the inference mode
    in use and, for reasoning runs, of every step r_0..r_K alone and of their mean), saved as a PNG
    (atomically). Warm-up epochs are shaded and the best epoch is marked: the checkpoint a run reports."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from thinkrec.storage import atomic_write_bytes

    fig, (ax_loss, ax_valid) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    epochs = [row["epoch"] for row in history]
    ax_loss.plot(epochs, [row["loss"] for row in history], color="black", marker=".", label="loss (total)")
    parts = sorted({key for row in history for key, value in row.items() if key not in ROW_KEYS})
    for i, part in enumerate(parts):
        points = [(row["epoch"], row[part]) for row in history if isinstance(row.get(part), int | float)]
        if points:
            ax_loss.plot(*zip(*points, strict=True), color=f"C{i}", linestyle="--", marker=".", label=part)
    ax_loss.set_ylabel("training loss")
    valid = [(row["epoch"], row["valid"][metric]) for row in history if "valid" in row]
    if valid:
        ax_valid.plot(*zip(*valid, strict=True), color="black", marker="o", label=f"{metric} (inference mode)")
    names = sorted({name for row in history for name in row.get("valid_steps", {})}, key=_step_order)
    for i, name in enumerate(names):
        points = [
            (row["epoch"], row["valid_steps"][name][metric]) for row in history if name in row.get("valid_steps", {})
        ]
        style = ":" if name == "mean" else "-"
        ax_valid.plot(*zip(*points, strict=True), color=f"C{i}", linestyle=style, marker=".", label=name)
    ax_valid.set_ylabel(f"validation {metric}")
    ax_valid.set_xlabel("epoch")
    ax_valid.xaxis.set_major_locator(MaxNLocator(integer=True))
    warmup = [row["epoch"] for row in history if row.get("warmup")]
    for ax in (ax_loss, ax_valid):
        if warmup:
            ax.axvspan(min(warmup) - 0.5, max(warmup) + 0.5, color="0.85", label="warm-up (never selected)")
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch, color="tab:red", linestyle="-.", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.legend(fontsize=7, ncol=2)
    ax_loss.set_title("training curve")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _step_order(name: str) -> tuple[int, int]:
    """r_0, r_1, ..., then mean."""
    return (1, 0) if name == "mean" else (0, int(name.removeprefix("r_")))
