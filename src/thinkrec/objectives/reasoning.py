"""What ReaRec's objectives (ERL, PRL) share: a batch as history prefixes, warm-up, scoring at ``tau``.

Both work on the engine's two sample modes. In ``all`` mode (the default, fast path) every position of a
left-padded window that has a target is a history prefix; the items are encoded once and all those
prefixes reason in the same extend passes (:meth:`LatentReasoner.prefixes`). In ``last`` mode each row is
one prefix. Either way a batch becomes ``M`` prefixes with states ``[M, K+1, d]`` and 0-based targets.

Warm-up: for the first ``warmup_epochs`` epochs (told by the Trainer through :meth:`start_epoch`) the loss
is the plain backbone loss, cross-entropy on ``r_0`` at temperature ``tau``, and no reasoning is run
(``warmup_trains = "backbone"``); with ``warmup_trains = "reasoning"`` the objective's own loss runs from the
first epoch and only what an objective gates on :attr:`ReasoningObjective.warming_up` waits (PRL's noisy
view and contrastive term).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TypeVar

import torch

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.errors import ThinkrecError
from thinkrec.losses import softmax_cross_entropy
from thinkrec.models.base import Encoded
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext
from thinkrec.reasoning.config import LatentReasoningConfig
from thinkrec.reasoning.reasoner import LatentReasoner, Perturb
from thinkrec.seed import Seeds


@dataclass
class RowGroup:
    """Rows that reason together: ``rows`` of the batch (None = all), their encoding and prefix columns."""

    rows: torch.Tensor | None
    encoded: Encoded
    columns: torch.Tensor  # int64 [B_g, T_g]


@dataclass
class PrefixBatch:
    """A batch as history prefixes: prefix ``(b, i)`` ends at item column ``columns[b, i]``."""

    encoded: Encoded  # the items' pass, with its key/value cache
    columns: torch.Tensor  # int64 [B, T]
    targets: torch.Tensor  # int64 [B, T], 0-based item column (0 where not valid)
    valid: torch.Tensor  # bool [B, T]
    groups: list[RowGroup]  # how the rows reason (see split_rows)
    batch: TrainBatch  # what was encoded (an objective may encode it again, e.g. with other dropout masks)


def split_rows(counts: torch.Tensor, keep: float = 0.9) -> list[torch.Tensor] | None:
    """Rows in two groups by their number of trained prefixes, if that cuts the reasoning slots
    (``rows x max count`` per group) to at most ``keep`` of one group's; else None.

    Reasoning costs one token per prefix slot, and a row's slots are padded to the batch's largest count;
    windows that train only their last ``stride`` targets next to full windows would waste up to ~40%.
    """
    b = len(counts)
    if b < 2:
        return None
    order = torch.argsort(counts, stable=True)
    ordered = counts[order]
    cut = torch.arange(1, b)
    cost = cut * ordered[cut - 1] + (b - cut) * ordered[-1]
    if float(cost.min()) > keep * b * float(ordered[-1]):
        return None
    best = int(cost.argmin()) + 1
    return [order[:best], order[best:]]


def select_rows(encoded: Encoded, rows: torch.Tensor) -> Encoded:
    """The rows ``rows`` of an encoded batch (hidden states, key/value cache, key padding)."""
    assert encoded.cache is not None and encoded.key_padding is not None
    cache = [(k[rows], v[rows]) for k, v in encoded.cache]
    return Encoded(encoded.hidden[rows], cache, encoded.key_padding[rows])


def prefix_batch(model: SeqRecModel, batch: TrainBatch) -> PrefixBatch:
    """Encode the items once and list the batch's trained prefixes (valid ones first in each row)."""
    b, w = batch.inputs.shape
    # one prefix per row: the final block computes only the last column (keys/values of all columns)
    encoded = model.backbone(batch.inputs, batch.positions, use_cache=True, last_only=batch.mode == "last")
    if batch.mode == "last":
        device = batch.inputs.device
        columns = torch.full((b, 1), w - 1, dtype=torch.long, device=device)
        valid = torch.ones(b, 1, dtype=torch.bool, device=device)
        return PrefixBatch(
            encoded, columns, batch.targets[:, None] - 1, valid, [RowGroup(None, encoded, columns)], batch
        )
    if not model.backbone.causal:
        raise ThinkrecError(
            "all-prefix training needs a causal backbone (each position sees only earlier items); "
            "use train.sample_mode=last"
        )
    use = batch.targets != IGNORE
    count = use.sum(1)
    t = max(1, int(count.max()))
    columns = torch.argsort((~use).to(torch.int8), dim=1, stable=True)[:, :t]
    valid = torch.arange(t, device=count.device)[None, :] < count[:, None]
    targets = torch.where(valid, batch.targets.gather(1, columns) - 1, 0)
    split = split_rows(count)
    groups = (
        [RowGroup(None, encoded, columns)]
        if split is None
        else [RowGroup(rows, select_rows(encoded, rows), columns[rows, : int(count[rows].max())]) for rows in split]
    )
    return PrefixBatch(encoded, columns, targets, valid, groups, batch)


Settings = TypeVar("Settings", bound=LatentReasoningConfig)


def settings_of(ctx: ObjectiveContext, cls: type[Settings]) -> Settings:
    """The context's reasoning section, which must be of class ``cls`` (the objective's own kind)."""
    if not isinstance(ctx.reasoning, cls):
        raise ThinkrecError(f"this objective needs reasoning settings of kind {cls.model_fields['kind'].default!r}")
    return ctx.reasoning


def reasoner_of(model: SeqRecModel) -> LatentReasoner:
    if not isinstance(model.reasoner, LatentReasoner):
        raise ThinkrecError("a reasoning objective needs a model with a LatentReasoner (reasoning.kind)")
    return model.reasoner


class ReasoningObjective(Objective):
    """What ERL and PRL share: warm-up, prefix states, scoring at the reasoning temperature."""

    name = "reasoning"

    def __init__(self, cfg: LatentReasoningConfig, tau: float, seeds: Seeds) -> None:
        self.cfg = cfg
        self.tau = tau
        self.seeds = seeds
        self.epoch = 0
        self.depth = cfg.steps  # the depth the current batch reasons (train_depth = "uniform": drawn per batch)
        self.depth_generator = torch.Generator()
        self.depth_generator.manual_seed(seeds.torch_seed("reasoning-depth/0"))

    def start_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch (0-based)."""
        self.epoch = epoch
        # re-derived per epoch (a resumed run draws the depths of an uninterrupted one); the same on every
        # process of a data-parallel run, which all see every global batch
        self.depth_generator.manual_seed(self.seeds.torch_seed(f"reasoning-depth/{epoch}"))

    def draw_depth(self) -> int:
        """The next batch's reasoning depth: ``steps``, or uniform on 1..steps with ``train_depth = "uniform"``."""
        if self.cfg.train_depth == "fixed":
            return self.cfg.steps
        return int(torch.randint(1, self.cfg.steps + 1, (1,), generator=self.depth_generator))

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    @property
    def first_selectable_epoch(self) -> int:
        """Warm-up epochs train the plain backbone: a reasoning run's best checkpoint comes after them."""
        return self.cfg.warmup_epochs

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        prefixes = prefix_batch(model, batch)
        if self.warming_up and self.cfg.warmup_trains == "backbone":
            return self.warmup_loss(model, prefixes)
        self.depth = self.draw_depth()
        return self.reasoning_loss(model, prefixes)

    def warmup_loss(self, model: SeqRecModel, prefixes: PrefixBatch) -> LossOutput:
        """Cross-entropy of ``r_0`` (the plain backbone) at temperature ``tau``."""
        r0 = prefixes.encoded.at(prefixes.columns)
        loss = self.cross_entropy(
            model, r0[prefixes.valid], model.item_vectors(), prefixes.targets[prefixes.valid], self.tau
        )
        return LossOutput(loss, {"ce_r0": float(loss.detach())})

    def states(
        self,
        model: SeqRecModel,
        prefixes: PrefixBatch,
        perturb: Perturb | None = None,
        feed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reasoning states ``[B, T, K+1, d]`` of every prefix slot (K = :attr:`depth`, the batch's depth);
        slots without a trained prefix are zero when the rows reason in groups. ``perturb`` and ``feed``
        (``[B, T, K, d]``) as in :meth:`LatentReasoner.prefixes`."""
        reasoner, backbone, k = reasoner_of(model), model.cached_backbone, self.depth
        if len(prefixes.groups) == 1:
            return reasoner.prefixes(backbone, prefixes.encoded, prefixes.columns, k, perturb, feed)
        b, t = prefixes.columns.shape
        out = prefixes.encoded.hidden.new_zeros(b, t, k + 1, prefixes.encoded.hidden.shape[-1])
        for group in prefixes.groups:
            width = group.columns.shape[1]
            rows = group.rows if group.rows is not None else slice(None)
            part = None if feed is None else feed[rows, :width]
            out[rows, :width] = reasoner.prefixes(backbone, group.encoded, group.columns, k, perturb, part)
        return out

    @staticmethod
    def prepared(model: SeqRecModel, states: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``[M, S, d]`` and item vectors ``items [N, d]`` as the scorer compares them (normalised for
        cosine)."""
        m, s, d = states.shape
        users, prepared = model.scorer.prepare(states.reshape(m * s, d), items)
        return users.view(m, s, d), prepared

    @staticmethod
    def cross_entropy(
        model: SeqRecModel, users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, tau: float
    ) -> torch.Tensor:
        """Full-softmax cross-entropy of user vectors ``[M, d]`` over item vectors ``items [N, d]`` at
        temperature ``tau`` (chunked)."""
        prepared, vectors = model.scorer.prepare(users, items)
        return softmax_cross_entropy(prepared, vectors, targets, tau)

    @abstractmethod
    def reasoning_loss(self, model: SeqRecModel, prefixes: PrefixBatch) -> LossOutput:
        """The objective's loss once the warm-up is over."""
