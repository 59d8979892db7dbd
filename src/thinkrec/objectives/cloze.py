"""BERT4Rec's cloze objective: predict randomly masked items of the window with a full softmax."""

from __future__ import annotations

import torch

from thinkrec.data.batches import IGNORE, TrainBatch, position_ids
from thinkrec.errors import ThinkrecError
from thinkrec.losses import softmax_cross_entropy
from thinkrec.models.bert4rec import BERT4Rec
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext
from thinkrec.seed import Seeds


def cloze_mask(inputs: torch.Tensor, mask_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which real items of ``inputs [B, W]`` (0 = padding) to mask: each with probability ``mask_prob``;
    a row that drew none has its last item masked, so every row with an item trains."""
    real = inputs != 0
    draw = torch.rand(inputs.shape, generator=generator) < mask_prob  # on the CPU: the generator's device
    chosen = draw.to(real.device) & real
    empty = ~chosen.any(dim=1) & real[:, -1]
    chosen[:, -1] |= empty
    return chosen


class ClozeObjective(Objective):
    """BERT4Rec's masked-item objective: mask items with probability ``mask_prob`` (replaced by ``[MASK]``),
    predict each masked item with a full softmax over the catalogue (chunked
    :func:`~thinkrec.losses.softmax_cross_entropy`), loss = mean over masked positions.

    A batch's training sequences are its windows: in ``all`` mode the inputs plus the last target (the
    oldest column dropped to stay within ``max_len``), in ``last`` mode the history plus its target. The
    masks are drawn from a generator derived from the root seed and the epoch (resumable).
    """

    name = "cloze"

    def __init__(self, mask_prob: float, seeds: Seeds) -> None:
        self.mask_prob = mask_prob
        self.seeds = seeds
        self.generator = torch.Generator()
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch (0-based)."""
        self.generator.manual_seed(self.seeds.torch_seed(f"cloze-mask/{epoch}"))

    @staticmethod
    def sequences(batch: TrainBatch, max_len: int) -> torch.Tensor:
        """The full item windows ``[B, <= max_len]`` of a batch (history followed by its newest target)."""
        last = batch.targets[:, -1:] if batch.mode == "all" else batch.targets[:, None]
        if bool((last == IGNORE).any()):
            raise ThinkrecError("cloze training needs every window's newest target")
        return torch.cat([batch.inputs, last], dim=1)[:, -max_len:]

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        backbone = model.backbone
        if not isinstance(backbone, BERT4Rec):
            raise ThinkrecError("the cloze objective needs a BERT4Rec backbone")
        seq = self.sequences(batch, backbone.max_len)
        chosen = cloze_mask(seq, self.mask_prob, self.generator)
        masked = seq.masked_fill(chosen, backbone.mask_id)
        hidden = backbone.encode_tokens(masked, position_ids(seq.shape[1], backbone.max_len)).hidden
        users, items = model.scorer.prepare(hidden[chosen], model.item_vectors())
        loss = softmax_cross_entropy(users, items, seq[chosen] - 1, model.scorer.temperature)
        return LossOutput(loss, {"cloze": float(loss.detach()), "masked": float(chosen.sum())})

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> ClozeObjective:
        return cls(float(getattr(ctx.model, "mask_prob", 0.2)), ctx.seeds)
