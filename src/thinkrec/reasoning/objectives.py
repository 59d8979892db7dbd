"""ReaRec's training objectives, ERL and PRL, as engine :class:`~thinkrec.train.objectives.Objective` s.

Both work on the engine's two sample modes. In ``all`` mode (the default, fast path) every position of a
left-padded window that has a target is a history prefix; the items are encoded once and all those
prefixes reason in the same extend passes (:meth:`LatentReasoner.prefixes`). In ``last`` mode each row is
one prefix. Either way a batch becomes ``M`` prefixes with states ``[M, K+1, d]`` and 0-based targets.

Warm-up: for the first ``warmup_epochs`` epochs (told by the Trainer through :meth:`start_epoch`) the loss
is the plain backbone loss, cross-entropy on ``r_0`` at temperature ``tau``, and no reasoning is run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.errors import ThinkrecError
from thinkrec.models.base import Encoded, LossOutput
from thinkrec.models.model import SeqRecModel
from thinkrec.reasoning.config import ReasoningConfig
from thinkrec.reasoning.losses import info_nce, pairwise_kl, per_step_cross_entropy, progressive_temperatures
from thinkrec.reasoning.reasoner import LatentReasoner, Perturb
from thinkrec.seed import Seeds
from thinkrec.train.losses import softmax_cross_entropy


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
        columns = torch.full((b, 1), w - 1, dtype=torch.long)
        valid = torch.ones(b, 1, dtype=torch.bool)
        return PrefixBatch(encoded, columns, batch.targets[:, None] - 1, valid, [RowGroup(None, encoded, columns)])
    if not model.backbone.causal:
        raise ThinkrecError(
            "all-prefix training needs a causal backbone (each position sees only earlier items); "
            "use train.sample_mode=last"
        )
    use = batch.targets != IGNORE
    count = use.sum(1)
    t = max(1, int(count.max()))
    columns = torch.argsort((~use).to(torch.int8), dim=1, stable=True)[:, :t]
    valid = torch.arange(t)[None, :] < count[:, None]
    targets = torch.where(valid, batch.targets.gather(1, columns) - 1, 0)
    split = split_rows(count)
    groups = (
        [RowGroup(None, encoded, columns)]
        if split is None
        else [RowGroup(rows, select_rows(encoded, rows), columns[rows, : int(count[rows].max())]) for rows in split]
    )
    return PrefixBatch(encoded, columns, targets, valid, groups)


def reasoner_of(model: SeqRecModel) -> LatentReasoner:
    if not isinstance(model.reasoner, LatentReasoner):
        raise ThinkrecError("a reasoning objective needs a model with a LatentReasoner (reasoning.kind)")
    return model.reasoner


class ReasoningObjective(ABC):
    """What ERL and PRL share: warm-up, prefix states, scoring at the reasoning temperature."""

    name = "reasoning"

    def __init__(self, cfg: ReasoningConfig, tau: float, seeds: Seeds) -> None:
        self.cfg = cfg
        self.tau = tau
        self.seeds = seeds
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch (0-based)."""
        self.epoch = epoch

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.cfg.warmup_epochs

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        prefixes = prefix_batch(model, batch)
        if self.warming_up:
            return self.warmup_loss(model, prefixes)
        return self.reasoning_loss(model, prefixes)

    def warmup_loss(self, model: SeqRecModel, prefixes: PrefixBatch) -> LossOutput:
        """Cross-entropy of ``r_0`` (the plain backbone) at temperature ``tau``."""
        r0 = prefixes.encoded.at(prefixes.columns)
        loss = self.cross_entropy(
            model, r0[prefixes.valid], model.item_vectors(), prefixes.targets[prefixes.valid], self.tau
        )
        return LossOutput(loss, {"ce_r0": float(loss.detach())})

    def states(self, model: SeqRecModel, prefixes: PrefixBatch, perturb: Perturb | None = None) -> torch.Tensor:
        """Reasoning states ``[B, T, K+1, d]`` of every prefix slot (K = the trained steps); slots without a
        trained prefix are zero when the rows reason in groups."""
        reasoner, backbone = reasoner_of(model), model.cached_backbone
        if len(prefixes.groups) == 1:
            return reasoner.prefixes(backbone, prefixes.encoded, prefixes.columns, None, perturb)
        b, t = prefixes.columns.shape
        out = prefixes.encoded.hidden.new_zeros(b, t, reasoner.steps + 1, prefixes.encoded.hidden.shape[-1])
        for group in prefixes.groups:
            out[group.rows, : group.columns.shape[1]] = reasoner.prefixes(
                backbone, group.encoded, group.columns, None, perturb
            )
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


class EnsembleReasoningLoss(ReasoningObjective):
    """ERL: ``CE(mean(r_0..r_K) . E / tau) - lambda * pairwise_kl(p_0..p_K)``.

    ``p_k = softmax(r_k . E / tau)``; the KL direction and gradient are documented in
    :func:`~thinkrec.reasoning.losses.pairwise_kl` (all ordered pairs, gradient through the first argument
    only). Subtracting it lowers the loss when the steps disagree more.
    """

    name = "erl"

    def reasoning_loss(self, model: SeqRecModel, prefixes: PrefixBatch) -> LossOutput:
        states = self.states(model, prefixes)[prefixes.valid]  # [M, K+1, d]
        # one item table for both terms: a computed table (text items) costs a pass of its encoder, and its
        # dropout is then drawn once per batch, as for every other loss
        table = model.item_vectors()
        ce = self.cross_entropy(model, states.mean(dim=1), table, prefixes.targets[prefixes.valid], self.tau)
        users, items = self.prepared(model, states, table)
        kl = pairwise_kl(users, items, self.tau)
        total = ce - self.cfg.erl_lambda * kl
        return LossOutput(total, {"ce_mean": float(ce.detach()), "kl": float(kl.detach())})


class ProgressiveReasoningLoss(ReasoningObjective):
    """PRL: ``CE(r_K, tau) + sum_{k<K} CE(r_k, tau * alpha^(K-k)) + w * RCL``.

    RCL (reasoning-aware contrastive learning): a noisy view reasons from the SAME item pass (item keys and
    values are computed once) with Gaussian noise (std ``noise_std``, from a generator derived from the root
    seed and the epoch) added to every reasoning input ``z_k``; InfoNCE at temperature ``tau`` pulls each
    noisy step state ``k = 1..K`` towards the clean state of the same prefix. Negatives are the same step of
    the other rows of the batch: in ``last`` mode the other prefixes of the batch, in ``all`` mode the other
    rows' prefixes in the same prefix slot (one prefix per sequence, as in a ``last``-mode batch, and
    ``B x B`` similarities per slot instead of ``M x M`` over all prefixes).
    """

    name = "prl"

    def __init__(self, cfg: ReasoningConfig, tau: float, seeds: Seeds) -> None:
        super().__init__(cfg, tau, seeds)
        self.temperatures = progressive_temperatures(cfg.steps, tau, cfg.prl_alpha)
        self.generator = torch.Generator()
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        # Re-derived per epoch, so a resumed run draws the same noise as an uninterrupted one.
        self.generator.manual_seed(self.seeds.torch_seed(f"reasoning-noise/{epoch}"))

    def noise(self, z: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(z.shape, generator=self.generator, dtype=torch.float32).to(z.device, z.dtype)
        return z + self.cfg.noise_std * eps

    def reasoning_loss(self, model: SeqRecModel, prefixes: PrefixBatch) -> LossOutput:
        valid = prefixes.valid
        clean = self.states(model, prefixes)  # [B, T, K+1, d]
        users, items = self.prepared(model, clean[valid], model.item_vectors())
        per_step = per_step_cross_entropy(users, items, prefixes.targets[valid], self.temperatures)
        ce_last, ce_steps = per_step[-1], per_step[:-1].sum()
        total = ce_last + ce_steps
        parts = {"ce_last": float(ce_last.detach()), "ce_steps": float(ce_steps.detach())}
        if self.cfg.rcl_weight > 0:
            noisy = self.states(model, prefixes, self.noise)
            groups_valid = valid.T.repeat_interleave(self.cfg.steps, dim=0)  # [T*K, B], slot-major
            anchors, candidates = self.by_step_slot(noisy[:, :, 1:]), self.by_step_slot(clean[:, :, 1:])
            rcl = info_nce(anchors, candidates, groups_valid, self.tau, self.cfg.rcl_similarity)
            total = total + self.cfg.rcl_weight * rcl
            parts["rcl"] = float(rcl.detach())
        return LossOutput(total, parts)

    @staticmethod
    def by_step_slot(states: torch.Tensor) -> torch.Tensor:
        """``[B, T, K, d] -> [T*K, B, d]``: one InfoNCE group per (prefix slot, step) across the rows."""
        b, t, k, d = states.shape
        return states.permute(1, 2, 0, 3).reshape(t * k, b, d)


def build_reasoning_objective(cfg: ReasoningConfig, tau: float, seed: int) -> ReasoningObjective:
    """The objective ``cfg.kind`` names (``erl`` or ``prl``)."""
    if cfg.kind == "erl":
        return EnsembleReasoningLoss(cfg, tau, Seeds(seed))
    if cfg.kind == "prl":
        return ProgressiveReasoningLoss(cfg, tau, Seeds(seed))
    raise ValueError(f"reasoning.kind {cfg.kind!r} has no reasoning objective")
