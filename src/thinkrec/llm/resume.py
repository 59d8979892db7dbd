"""Resuming an R²ec run after a kill: the training state written every ``recpo.save_every`` steps.

``checkpoints/resume.safetensors`` is one file in the engine's checkpoint format
(:func:`thinkrec.train.checkpoint.save_tensors`: tensors, JSON info and their SHA-256, replaced atomically), so
a kill while it is written leaves the previous state whole, and a damaged file is reported, never loaded. It
holds everything the steps after it depend on:

- tensors: the trainable tensors (``trainable.*``: the LoRA adapters, or every weight under full fine-tuning);
  the cached item table (``item_table``: training refreshes it row by row, so the weights alone cannot
  rebuild it); the best validation weights so far (``best.*``, so ``checkpoints/best.*`` can be rewritten when
  a kill left it ahead of the state); AdamW's moments (``optim.*``); and per process ``r`` its torch random
  state (``rng.torch.r``, ``rng.cuda.r`` on a GPU) and its rollout sampler's (``rng.rollouts.r``);
- info: the config it was trained with and ``llm_state`` (:class:`Progress`): the steps done, the data
  order's generator state and the rest of its current permutation, the learning-rate scheduler's state,
  Python's and NumPy's global random states per process, every log row, the best-validation tracking and the
  seconds spent so far.

Training the same config into the run directory again continues after the saved step as an uninterrupted
run would (bit for bit on the same device with the same thread count). Like the engine's runs
(:func:`thinkrec.runs.resumes`), a state saved under another config is refused, apart from the operational
settings (``model.threads``, ``model.device``, ``recpo.micro_users``, ``recpo.save_every``, ``recpo.resume``,
``run_dir``) and a
larger ``recpo.steps``; ``recpo.resume = false`` starts over instead.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from thinkrec.config.schema import changed_settings
from thinkrec.errors import ThinkrecError
from thinkrec.llm.config import LLMRunConfig
from thinkrec.train.checkpoint import CheckpointError, checkpoint_exists, checkpoint_info, read_tensors, save_tensors

STATE = "resume"  # checkpoints/resume.safetensors
STATE_KEY = "llm_state"  # the key of the info that holds the :class:`Progress`

# What an R²ec run writes apart from config.json (rewritten by every start) and its lock; a run that starts
# over deletes them first, so none of them describes another config (e.g. a best.* of a run before that
# validated, beside a run that does not).
RUN_OUTPUTS = (
    "log.jsonl",
    "reward.png",
    "results.json",
    "checkpoints/best.safetensors",
    "checkpoints/best.json",
    "checkpoints/last.safetensors",
    "checkpoints/last.json",
    f"checkpoints/{STATE}.safetensors",
)


def state_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / f"{STATE}.safetensors"


def _advice(run_dir: Path) -> str:
    return (
        f"delete it to start the run over (or set recpo.resume=false), or train into another run directory; "
        f"{run_dir} keeps the steps it saved only while the file is readable"
    )


@dataclass
class Progress:
    """The JSON part of the resumable state (``info["llm_state"]``)."""

    step: int  # steps done (the state is the one after this step: its log row, evaluation and refresh)
    steps: int  # recpo.steps of the run that saved it
    world: int  # processes of the run: each has its own rollout sampler
    device: str  # the kind of device ("cpu", "cuda"): a generator's state only fits its own kind
    order: list[int]  # the rest of the current permutation of the training examples
    order_rng: dict[str, Any]  # the data order's numpy bit-generator state
    scheduler: dict[str, Any]  # the learning-rate scheduler's state_dict
    log: list[dict[str, Any]]  # the log rows of steps 1 .. step
    best_value: float  # the best validation recpo.select_metric so far (-inf: none)
    best_step: int  # its step (-1: none)
    history: list[dict[str, Any]]  # every validation so far (Selection.history)
    table_seconds: float  # the first item table's build
    train_seconds: float  # the run's seconds so far (table, step-0 validation, steps)
    random: list[dict[str, Any]] = field(default_factory=list)  # per process: python and numpy global states

    @classmethod
    def from_info(cls, info: dict[str, Any], where: Path) -> Progress:
        try:
            return cls(**info[STATE_KEY])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{where}: damaged checkpoint (no readable training state: {exc}); {_advice(where.parents[1])}"
            ) from None


def resume_point(cfg: LLMRunConfig, run_dir: Path, world: int) -> Progress | None:
    """Where training ``cfg`` into ``run_dir`` continues from: the saved :class:`Progress`, or ``None`` to start
    over (no state there, or ``recpo.resume = false``). Reads the state's header only. Raises a
    :class:`ThinkrecError` that says what to do when the state is damaged, was saved under another config, with
    more steps than ``recpo.steps`` or by another number of processes (the kind of device is checked when the
    state loads, :func:`thinkrec.llm.run.restore_training`)."""
    where = state_path(run_dir)
    if not cfg.recpo.resume or not checkpoint_exists(where.parent, STATE):
        return None
    info = checkpoint_info(where.parent, STATE, _advice(run_dir))
    progress = Progress.from_info(info, where)
    try:
        # through the current schema: keys added since (with their defaults) do not block resuming
        previous = LLMRunConfig.model_validate(info.get("config"))
    except ValidationError as exc:
        raise CheckpointError(
            f"{where}: damaged checkpoint (its config does not load: {str(exc).splitlines()[0]}); {_advice(run_dir)}"
        ) from None
    changed = changed_settings(previous, cfg)
    done = progress.step
    if "recpo.steps" in changed and cfg.recpo.steps >= done:
        changed.remove("recpo.steps")  # more steps continue the run (it may have finished: it goes on)
    elif "recpo.steps" in changed:
        raise ThinkrecError(
            f"{run_dir} holds a run that has trained {done} steps, more than recpo.steps={cfg.recpo.steps}; set "
            f"recpo.steps to {done} or more, choose another run directory, or set recpo.resume=false to start over "
            "there"
        )
    if changed:
        raise ThinkrecError(
            f"{run_dir} holds a run with a different config ({', '.join(changed)}); choose another run directory, "
            "or set recpo.resume=false to start over there"
        )
    if progress.world != world:
        raise ThinkrecError(
            f"{run_dir} holds a run trained by {progress.world} process(es), this one has {world}: every process"
            f" samples its own rollouts, so resume it with {progress.world}, or set recpo.resume=false to start over"
        )
    return progress


# ------------------------------------------------------------------------------------------ random streams
def capture_random(generator: torch.Generator) -> dict[str, Any]:
    """This process's random streams: Python's and NumPy's global states (JSON-able) and torch's (CPU, the
    current GPU when the rollouts run on one) and the rollout sampler's, as uint8 tensors."""
    version, words, gauss = random.getstate()
    mt = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    numpy_state = {**mt, "state": {"key": mt["state"]["key"].tolist(), "pos": int(mt["state"]["pos"])}}
    out: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "rollouts": generator.get_state(),
    }
    if generator.device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(generator.device)
    return out


RANDOM_TENSORS = ("torch", "cuda", "rollouts")


def random_tensors(every: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Every process's :func:`capture_random` split into the file's tensors (``rng.<kind>.<rank>``) and the
    JSON part (one dict per rank)."""
    tensors = {
        f"rng.{kind}.{rank}": part[kind] for rank, part in enumerate(every) for kind in RANDOM_TENSORS if kind in part
    }
    plain = [{k: v for k, v in part.items() if k not in RANDOM_TENSORS} for part in every]
    return tensors, plain


def restore_random(progress: Progress, tensors: dict[str, torch.Tensor], rank: int, generator: torch.Generator) -> None:
    """Put process ``rank``'s saved random streams back (see :func:`capture_random`)."""
    plain = progress.random[rank]
    version, words, gauss = plain["python"]
    random.setstate((version, tuple(words), gauss))
    mt = plain["numpy"]
    key = np.asarray(mt["state"]["key"], dtype=np.uint32)
    np.random.set_state({**mt, "state": {"key": key, "pos": mt["state"]["pos"]}})
    torch.set_rng_state(tensors[f"rng.torch.{rank}"])
    generator.set_state(tensors[f"rng.rollouts.{rank}"])
    if generator.device.type == "cuda":
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], generator.device)


# ---------------------------------------------------------------------------------------------- the file
def save_state(
    run_dir: Path,
    config: dict[str, Any],
    progress: Progress,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Write ``checkpoints/resume.safetensors`` (``tensors`` + the optimizer; ``config`` and ``progress`` in
    its info) atomically."""
    save_tensors(state_path(run_dir).parent, STATE, tensors, {"config": config, STATE_KEY: asdict(progress)}, optimizer)


def read_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Progress]:
    """The tensors, info and :class:`Progress` of ``checkpoints/resume.safetensors``, its checksum checked
    (a :class:`CheckpointError` that says what to do when it is damaged)."""
    where = state_path(run_dir)
    tensors, info = read_tensors(where.parent, STATE, _advice(run_dir))
    return tensors, info, Progress.from_info(info, where)


def state_does_not_fit(run_dir: Path, reason: str) -> CheckpointError:
    """The error of a readable state that does not fit the model or optimizer of the run's config."""
    return CheckpointError(
        f"{state_path(run_dir)}: the resumable state does not fit the model of the run's config ({reason});"
        f" {_advice(run_dir)}"
    )
