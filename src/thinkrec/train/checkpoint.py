"""Checkpoints: tensors in safetensors, everything else in JSON, each file written atomically.

A checkpoint ``NAME`` is ``NAME.safetensors`` (model weights, and for resumable checkpoints the optimizer
moments and torch RNG state under ``optim.`` / ``rng.`` prefixes) plus ``NAME.json`` (config, epoch,
metrics, optimizer scalars, numpy generator state). No pickles, so checkpoints load on any future torch.
The JSON file is written last: a checkpoint without its JSON is incomplete and is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from thinkrec.storage import atomic_save_tensors, atomic_write_json


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


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for pid_text, pstate in scalars["state"].items():
        state[int(pid_text)] = {
            k: torch.tensor(v, dtype=torch.float32) if k == "step" else v for k, v in pstate.items()
        }
    for name, value in tensors.items():
        _, pid_text, key = name.split(".", 2)
        state.setdefault(int(pid_text), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(
    directory: Path,
    name: str,
    model: nn.Module,
    info: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write ``name.safetensors`` then ``name.json`` atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = dict(info)
    if optimizer is not None:
        optim_tensors, optim_scalars = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        meta["optimizer"] = optim_scalars
        tensors["rng.torch"] = torch.get_rng_state()
    atomic_save_tensors(directory / f"{name}.safetensors", tensors)
    atomic_write_json(directory / f"{name}.json", meta)


def checkpoint_exists(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").exists() and (directory / f"{name}.safetensors").exists()


def checkpoint_info(directory: Path, name: str) -> dict[str, Any]:
    """The JSON info saved with checkpoint ``name`` (e.g. ``best``: its epoch and validation metrics), without
    loading the weights."""
    info: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    return info


def load_checkpoint(
    directory: Path,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer + torch RNG state if given and saved); returns the JSON info."""
    info = checkpoint_info(directory, name)
    tensors = load_file(str(directory / f"{name}.safetensors"))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optimizer" in info:
        _restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, info["optimizer"])
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
    return info
