"""Sampled-softmax cross-entropy: the target against negatives drawn uniformly and shared by the batch."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from thinkrec.data.batches import TrainBatch
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext
from thinkrec.objectives.cross_entropy import next_item_states


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
    negatives = torch.randint(0, items.shape[0], (n_negatives,), generator=generator).to(items.device)
    pos = model.scorer.rowwise(users, items[targets])[:, None]
    neg = model.scorer(users, items[negatives])
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device))


class SampledSoftmax(Objective):
    """Next-item cross-entropy over the target and ``n_negatives`` uniform negatives (huge catalogues)."""

    name = "sampled"

    def __init__(self, n_negatives: int = 256, generator: torch.Generator | None = None) -> None:
        self.n_negatives = n_negatives
        self.generator = generator

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        users, targets = next_item_states(model, batch)
        loss = sampled_softmax_loss(users, targets, model, self.n_negatives, self.generator)
        return LossOutput(loss, {"ce": float(loss.detach())})

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> SampledSoftmax:
        return cls(ctx.n_negatives, ctx.seeds.torch_generator("negatives"))
