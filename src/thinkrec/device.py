"""Which torch device a run uses: one setting (``device``) for training, evaluation, serving and the LLM."""

from __future__ import annotations

from typing import Literal

import torch

from thinkrec.errors import ConfigError

DeviceSetting = Literal["auto", "cpu", "cuda"]


def resolve_device(setting: DeviceSetting | str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error
    (a run that asked for a GPU should not quietly take hours on the CPU)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' but torch sees no CUDA GPU (a CPU-only torch build, or no GPU here); use device=cpu"
            " or device=auto"
        )
    if setting not in ("cpu", "cuda"):
        raise ConfigError(f"device {setting!r}: choose auto, cpu or cuda")
    return torch.device(setting)
