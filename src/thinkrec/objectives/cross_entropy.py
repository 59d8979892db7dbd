"""Next-item cross-entropy with a full softmax over the catalogue (the engine's default objective)."""

from __future__ import annotations

import torch

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.errors import ThinkrecError
from thinkrec.losses import softmax_cross_entropy
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext


def next_item_states(model: SeqRecModel, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """User vectors ``[M, d]`` and 0-based target columns ``[M]`` of every position with a target."""
    if batch.mode == "all":
        if not model.backbone.causal:
            raise ThinkrecError(
                f"{type(model.backbone).__name__} is not causal: in train.sample_mode='all' a position would "
                "see its own target; use train.sample_mode='last'"
            )
        hidden = model.backbone(batch.inputs, batch.positions).hidden
        use = batch.targets != IGNORE
        return hidden[use], batch.targets[use] - 1
    states = model.encode(batch.inputs, batch.positions, steps=0)
    return states[:, -1], batch.targets - 1


class CrossEntropy(Objective):
    """``CE(softmax(u . E / temperature), target)`` over every trained position, computed in row chunks."""

    name = "ce"

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        users, targets = next_item_states(model, batch)
        prepared_users, items = model.scorer.prepare(users, model.item_vectors())
        loss = softmax_cross_entropy(prepared_users, items, targets, model.scorer.temperature)
        return LossOutput(loss, {"ce": float(loss.detach())})

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> CrossEntropy:
        return cls()
