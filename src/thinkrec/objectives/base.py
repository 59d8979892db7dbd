"""What every training objective is: a callable from (model, batch) to a loss with named parts.

An objective is built from an :class:`ObjectiveContext` (the settings it may read) by a factory that is
registered under a name in :mod:`thinkrec.objectives.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from thinkrec.data.batches import TrainBatch
from thinkrec.models.model import SeqRecModel
from thinkrec.reasoning.config import LatentReasoningConfig, ReasoningConfig
from thinkrec.seed import Seeds


@dataclass
class LossOutput:
    """A scalar loss to minimise and its named parts (every part is logged)."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectiveContext:
    """The settings an objective is built from (a run's config, reduced to what objectives may read)."""

    model: BaseModel  # the backbone's config section (``model.*``)
    reasoning: ReasoningConfig
    seed: int  # the run's root seed: every random draw of an objective derives from it
    n_negatives: int = 256  # sampled objectives: negatives per batch
    options: dict[str, Any] = field(default_factory=dict)  # extra settings a registered objective may read

    @property
    def seeds(self) -> Seeds:
        return Seeds(self.seed)

    @property
    def temperature(self) -> float:
        """The backbone's scoring temperature (``model.temperature``; 1 when the backbone has none)."""
        return float(getattr(self.model, "temperature", 1.0))

    @property
    def tau(self) -> float:
        """The reasoning objectives' temperature: ``reasoning.tau``, else the backbone's."""
        tau = self.reasoning.tau if isinstance(self.reasoning, LatentReasoningConfig) else None
        return tau or self.temperature


class Objective(ABC):
    """A training objective. Subclasses implement :meth:`__call__`; the two hooks are optional."""

    name: str = "objective"

    @abstractmethod
    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        """The loss of one batch (in train mode, with gradients)."""

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called by the trainer before each epoch (0-based): reseed per-epoch randomness, switch phases."""

    @property
    def first_selectable_epoch(self) -> int:
        """The first epoch whose checkpoint may be chosen as the run's best (a warm-up that does not train
        the final objective is never selectable)."""
        return 0
