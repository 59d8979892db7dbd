"""Training objectives. An objective maps (model, batch) to a :class:`LossOutput` with named parts."""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch.nn import functional as F

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.errors import ThinkrecError
from thinkrec.models.base import LossOutput
from thinkrec.models.model import SeqRecModel
from thinkrec.train.losses import softmax_cross_entropy


class Objective(Protocol):
    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput: ...


def sampled_softmax_loss(
    users: torch.Tensor,
    targets: torch.Tensor,
    model: SeqRecModel,
    n_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy over the target and ``n_negatives`` uniformly sampled items shared by the batch.

    ``targets`` are 0-based item columns. A sampled negative equal to a row's target is masked out.
    """
    items = model.item_vectors()
    negatives = torch.randint(0, items.shape[0], (n_negatives,), generator=generator)
    pos = model.scorer.rowwise(users, items[targets])[:, None]
    neg = model.scorer(users, items[negatives])
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


class CrossEntropy:
    """Next-item cross-entropy: full softmax over the catalogue, or sampled softmax for huge catalogues."""

    def __init__(
        self,
        loss: Literal["ce", "sampled"] = "ce",
        n_negatives: int = 256,
        generator: torch.Generator | None = None,
    ) -> None:
        self.loss = loss
        self.n_negatives = n_negatives
        self.generator = generator

    def user_states(self, model: SeqRecModel, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        users, targets = self.user_states(model, batch)
        if self.loss == "sampled":
            loss = sampled_softmax_loss(users, targets, model, self.n_negatives, self.generator)
        else:
            prepared_users, items = model.scorer.prepare(users, model.item_vectors())
            loss = softmax_cross_entropy(prepared_users, items, targets, model.scorer.temperature)
        return LossOutput(loss, {"ce": float(loss.detach())})
