"""Checkpoints: one safetensors file per checkpoint, its JSON info in the file's metadata.

A checkpoint ``NAME`` is ``NAME.safetensors``: the model weights (and for resumable checkpoints the
optimizer moments and torch RNG state under ``optim.`` / ``rng.`` prefixes), with the JSON info (config,
epoch, metrics, optimizer scalars, trainer state) in its header. No pickles, so checkpoints load on any future
torch. One file replaced atomically is one consistent unit: a killed run never leaves the weights of one
epoch beside the info of another. The header also records the epoch and the SHA-256 of the tensors, checked
on load, so a damaged file (truncated, flipped bytes) is reported instead of loading silently.

Checkpoints of earlier thinkrec versions (``NAME.safetensors`` without that metadata beside ``NAME.json``)
still load, unverified.

:func:`save_tensors` / :func:`read_tensors` are the format without a model: any named tensors (and an
optimizer) with their info, e.g. the LLM recommender's resumable training state (:mod:`thinkrec.llm.resume`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from thinkrec.errors import ThinkrecError
from thinkrec.storage import atomic_save_tensors

FORMAT = "thinkrec-checkpoint/1"
_FORMAT_KEY, _INFO_KEY, _SHA_KEY, _EPOCH_KEY = "format", "info", "sha256", "epoch"


class CheckpointError(ThinkrecError):
    """A checkpoint file is missing, damaged or does not fit the model."""


def _what_to_do(name: str) -> str:
    if name == "last":
        return (
            "delete it to start the run over (train again: a run without a 'last' checkpoint starts from epoch 0), "
            "or set train.resume=false"
        )
    if name == "best":
        return "use the 'last' checkpoint instead (--checkpoint last), or delete the run directory and train again"
    return "delete it and train again"


def _damaged(path: Path, name: str, reason: str, advice: str | None = None) -> CheckpointError:
    return CheckpointError(f"{path}: damaged checkpoint ({reason}); {advice or _what_to_do(name)}")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().contiguous().cpu()
        digest.update(f"{key}|{value.dtype}|{list(value.shape)}\n".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _epoch_of(info: dict[str, Any]) -> int | None:
    """The epoch a checkpoint holds: a ``best`` one records it, a ``last`` one the epochs done so far."""
    if "trainer_state" in info:
        return int(info["trainer_state"]["epoch"]) - 1
    return int(info["epoch"]) if "epoch" in info else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        scalars["state"][str(pid)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars["state"][str(pid)][key] = float(value) if isinstance(value, torch.Tensor) else value
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Put the optimizer state a checkpoint holds (``optim.`` tensors, ``info["optimizer"]`` scalars) back into
    ``optimizer``; a no-op for a checkpoint saved without one."""
    if "optimizer" not in info:
        return
    scalars = info["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for pid_text, pstate in scalars["state"].items():
        state[int(pid_text)] = {
            k: torch.tensor(v, dtype=torch.float32) if k == "step" else v for k, v in pstate.items()
        }
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid_text, key = name.split(".", 2)
        state.setdefault(int(pid_text), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_tensors(
    directory: Path,
    name: str,
    tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``name.safetensors``: ``tensors`` (plus ``optimizer``'s moments under ``optim.``) with ``info``
    (plus the optimizer's scalars), the checksum and the epoch in its header, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(info)
    if optimizer is not None:
        optim_tensors, optim_scalars = _optimizer_tensors(optimizer)
        tensors.update({k: v.detach().contiguous().cpu() for k, v in optim_tensors.items()})
        meta["optimizer"] = optim_scalars
    epoch = _epoch_of(meta)
    metadata = {
        _FORMAT_KEY: FORMAT,
        _INFO_KEY: json.dumps(meta, default=str),
        _SHA_KEY: tensors_digest(tensors),
        _EPOCH_KEY: "" if epoch is None else str(epoch),
    }
    path = directory / f"{name}.safetensors"
    atomic_save_tensors(path, tensors, metadata)
    # the JSON file of the earlier two-file format would now describe other weights
    (directory / f"{name}.json").unlink(missing_ok=True)


def save_checkpoint(
    directory: Path,
    name: str,
    model: nn.Module,
    info: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``name.safetensors`` (tensors + ``info`` + checksum + epoch) atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(directory, name, tensors, info, optimizer)


def checkpoint_exists(directory: Path, name: str) -> bool:
    return (directory / f"{name}.safetensors").exists()


def _read_header(directory: Path, name: str, advice: str | None = None) -> tuple[dict[str, Any], dict[str, str] | None]:
    """``(info, metadata)`` of checkpoint ``name`` without loading the weights; ``metadata`` is None for a
    checkpoint of the earlier two-file format. ``advice``: what a damaged file's message tells to do (default:
    the engine's advice for its ``best`` and ``last`` checkpoints)."""
    path = directory / f"{name}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; has training finished an epoch?")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, name, f"not a readable safetensors file: {exc}", advice) from None
    if metadata and metadata.get(_FORMAT_KEY) == FORMAT:
        try:
            info = json.loads(metadata[_INFO_KEY])
            epoch = _epoch_of(info)
        except (KeyError, ValueError, TypeError) as exc:
            raise _damaged(path, name, f"unreadable info in its metadata: {exc}", advice) from None
        if metadata.get(_EPOCH_KEY, "") != ("" if epoch is None else str(epoch)):
            raise _damaged(
                path, name, f"its metadata names epoch {metadata.get(_EPOCH_KEY)!r}, its info {epoch}", advice
            )
        if not isinstance(info, dict):
            raise _damaged(path, name, "its info is not a JSON object", advice)
        return info, metadata
    legacy = directory / f"{name}.json"
    if not legacy.exists():
        raise _damaged(path, name, f"no thinkrec metadata and no {legacy.name} beside it", advice)
    try:
        info = json.loads(legacy.read_text())
    except (OSError, ValueError) as exc:
        raise _damaged(legacy, name, f"unreadable JSON: {exc}", advice) from None
    if not isinstance(info, dict):
        raise _damaged(legacy, name, "not a JSON object", advice)
    return info, None


def checkpoint_info(directory: Path, name: str, advice: str | None = None) -> dict[str, Any]:
    """The JSON info saved with checkpoint ``name`` (e.g. ``best``: its epoch and validation metrics), without
    loading the weights."""
    return _read_header(directory, name, advice)[0]


def read_tensors(
    directory: Path, name: str, advice: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of checkpoint ``name`` and its JSON info, the checksum checked. Raises
    :class:`CheckpointError` (naming the file and, with ``advice``, what to do) when the file is damaged."""
    path = directory / f"{name}.safetensors"
    info, metadata = _read_header(directory, name, advice)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _damaged(path, name, f"unreadable tensors: {exc}", advice) from None
    if metadata is not None and tensors_digest(tensors) != metadata.get(_SHA_KEY):
        raise _damaged(path, name, "its tensors do not match the checksum saved with them", advice)
    return tensors, info


def checkpoint_digest(directory: Path, name: str) -> str | None:
    """The SHA-256 of checkpoint ``name``'s tensors as saved in its header (what identifies its weights), or
    ``None`` for a checkpoint of the earlier two-file format."""
    _, metadata = _read_header(directory, name)
    return None if metadata is None else metadata.get(_SHA_KEY)


def load_checkpoint(
    directory: Path,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer + torch RNG state if given and saved), checking the checksum; returns the
    JSON info. Raises :class:`CheckpointError` (naming the file and what to do) when the file is damaged or
    does not fit ``model``."""
    path = directory / f"{name}.safetensors"
    tensors, info = read_tensors(directory, name)
    try:
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        if optimizer is not None and "optimizer" in info:
            restore_optimizer(optimizer, tensors, info)
            if "rng.torch" in tensors:
                torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: the checkpoint does not fit the model of the run's config ({reason}); was config.json or "
            f"items.parquet replaced? {_what_to_do(name)}"
        ) from None
    return info
