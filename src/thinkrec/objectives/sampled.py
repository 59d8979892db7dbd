"""Sampled-softmax cross-entropy: the target against a few negatives, shared by the batch or drawn per target.

Three ways to draw the negatives (``train.negatives``):

- ``uniform``: ``n_negatives`` items drawn uniformly from the catalogue (with replacement);
- ``popularity``: ``n_negatives`` items drawn in proportion to their count in the training split;
- ``in_batch``: the batch's own targets (every trained position's, duplicates kept), or ``n_negatives`` of
  them drawn uniformly among the positions when the batch has more (an all-positions batch can hold tens of
  thousands). Each is a draw from the items' empirical frequency in training, at no sampling cost.

With ``train.logq`` the logit of every candidate, the target's included, is corrected by the log of its
sampling probability ``Q``: ``s - log Q`` (Bengio & Senécal 2008; Yi et al. 2019, "Sampling-bias-corrected
neural modeling", eq. 3, where ``Q`` of an in-batch item is its empirical frequency). Without it the
popular items, drawn more often as negatives, are pushed down more than their share of the full softmax.
For uniform negatives ``Q`` is the same for every item, so the correction changes nothing. A negative equal
to a row's target (an accidental hit) is masked out in every mode.

``train.negatives_per``: ``batch`` draws one set for the whole batch (one ``[M, k]`` product against ``k``
item vectors: cheap); ``target`` draws ``n_negatives`` for every trained position (``[M, k]`` gathered item
vectors), as RecTools' SASRec and the eSASRec benchmark do, so every batch pushes down most of the
catalogue instead of ``k`` items. Uniform and popularity draws only; in-batch negatives are the batch's own.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch.nn import functional as F

from thinkrec.data.batches import TrainBatch
from thinkrec.errors import ConfigError
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext
from thinkrec.objectives.cross_entropy import next_item_states
from thinkrec.seed import Seeds

NegativeMode = Literal["uniform", "popularity", "in_batch"]
NEGATIVE_MODES: tuple[str, ...] = get_args(NegativeMode)
NegativesPer = Literal["batch", "target"]


def corrected_sampled_loss(
    users: torch.Tensor,
    targets: torch.Tensor,
    model: SeqRecModel,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each row's target against ``negatives`` (0-based item columns): ``[k]`` shared by
    the rows, or ``[M, k]``, one set per row.

    ``log_q`` (``[n_items]``, log sampling probabilities) subtracts ``log_q[item]`` from every candidate's
    logit, the target's included. Negatives equal to a row's target get a logit of ``-inf``.
    """
    # one read of the rows the loss needs (a sparse-gradient lookup under train.item_updates='touched')
    rows = model.item_rows(torch.cat([targets, negatives.reshape(-1)]))
    pos = model.scorer.rowwise(users, rows[: len(targets)])[:, None]
    drawn = rows[len(targets) :].view(*negatives.shape, -1)
    if negatives.dim() == 1:
        neg = model.scorer(users, drawn)
        negatives = negatives[None, :]
    else:
        prepared, vectors = model.scorer.prepare(users, drawn)
        neg = torch.einsum("md,mkd->mk", prepared, vectors) / model.scorer.temperature
    if log_q is not None:
        pos = pos - log_q[targets][:, None]
        neg = neg - log_q[negatives]
    neg = neg.masked_fill(negatives == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device))


class SampledSoftmax(Objective):
    """Next-item cross-entropy over the target and ``n_negatives`` shared negatives (huge catalogues)."""

    name = "sampled"

    def __init__(
        self,
        n_negatives: int = 256,
        generator: torch.Generator | None = None,
        negatives: NegativeMode = "uniform",
        logq: bool = False,
        item_counts: np.ndarray | None = None,
        per: NegativesPer = "batch",
        seeds: Seeds | None = None,
    ) -> None:
        if negatives not in NEGATIVE_MODES:
            raise ConfigError(f"train.negatives {negatives!r}: choose one of {', '.join(NEGATIVE_MODES)}")
        if per == "target" and negatives == "in_batch":
            raise ConfigError("train.negatives_per='target' draws per target; in-batch negatives are the batch's own")
        self.per = per
        self.n_negatives = n_negatives
        # with seeds, every epoch draws from its own stream (negatives/<epoch>, set by start_epoch): a resumed
        # run draws what an uninterrupted one would have
        self.seeds = seeds
        self.generator = generator if seeds is None else seeds.torch_generator("negatives/0")
        self.negatives = negatives
        self.logq = logq
        self.probs: torch.Tensor | None = None  # sampling probability of every item (CPU, float64)
        if negatives == "popularity" or (logq and negatives == "in_batch"):
            if item_counts is None or not np.asarray(item_counts).sum() > 0:
                raise ConfigError(f"train.negatives={negatives} needs the items' training counts (none given)")
            counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
            self.probs = counts / counts.sum()
        self._log_q: dict[torch.device, torch.Tensor] = {}

    def log_q(self, n_items: int, device: torch.device) -> torch.Tensor | None:
        """``log Q`` of every item on ``device`` (``None`` without correction or when ``Q`` is uniform)."""
        if not self.logq or self.negatives == "uniform" or self.probs is None:
            return None
        if device not in self._log_q:
            # An item never seen in training is never a target or an in-batch negative; the floor keeps its
            # log finite without moving any other item's.
            floor = 0.5 / float(self.probs.numel())
            probs = self.probs.clamp_min(min(floor, float(self.probs[self.probs > 0].min())))
            self._log_q[device] = probs.log().to(device=device, dtype=torch.float32)
        table = self._log_q[device]
        if table.numel() != n_items:
            raise ConfigError(f"item counts cover {table.numel()} items, the model {n_items}")
        return table

    def start_epoch(self, epoch: int) -> None:
        if self.seeds is not None:
            self.generator = self.seeds.torch_generator(f"negatives/{epoch}")

    def draw(self, targets: torch.Tensor, n_items: int) -> torch.Tensor:
        """The negatives (0-based item columns, on the targets' device): ``[k]`` shared by the batch, or
        ``[M, k]`` for the ``M`` targets with ``per = "target"``."""
        shape = (self.n_negatives,) if self.per == "batch" else (len(targets), self.n_negatives)
        if self.negatives == "uniform":
            drawn = torch.randint(0, n_items, shape, generator=self.generator)
        elif self.negatives == "popularity":
            assert self.probs is not None
            total = int(np.prod(shape))
            drawn = torch.multinomial(self.probs, total, replacement=True, generator=self.generator).view(shape)
        else:
            if len(targets) <= self.n_negatives:
                return targets
            pick = torch.randperm(len(targets), generator=self.generator)[: self.n_negatives]
            return targets[pick.to(targets.device)]
        return drawn.to(targets.device)

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        users, targets = next_item_states(model, batch)
        n_items = model.item_vectors().shape[0]
        negatives = self.draw(targets, n_items)
        loss = corrected_sampled_loss(users, targets, model, negatives, self.log_q(n_items, users.device))
        return LossOutput(loss, {"ce": float(loss.detach())})

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> SampledSoftmax:
        """Reads ``ctx.options``: ``negatives`` (a :data:`NegativeMode`), ``logq`` (bool), ``negatives_per``
        (``batch`` or ``target``) and ``item_counts`` (the training split's count of every item, ``[n_items]``)."""
        return cls(
            ctx.n_negatives,
            negatives=ctx.options.get("negatives", "uniform"),
            logq=bool(ctx.options.get("logq", False)),
            item_counts=ctx.options.get("item_counts"),
            per=ctx.options.get("negatives_per", "batch"),
            seeds=ctx.seeds,
        )
