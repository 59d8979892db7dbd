"""ReaRec's ensemble reasoning learning (ERL)."""

from __future__ import annotations

from thinkrec.losses import pairwise_kl
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, ObjectiveContext
from thinkrec.objectives.reasoning import PrefixBatch, ReasoningObjective, settings_of
from thinkrec.reasoning.config import ERLConfig
from thinkrec.seed import Seeds


class EnsembleReasoningLoss(ReasoningObjective):
    """ERL: ``CE(mean(r_0..r_K) . E / tau) - lambda * pairwise_kl(p_0..p_K)``.

    ``p_k = softmax(r_k . E / tau)``; the KL direction and gradient are documented in
    :func:`~thinkrec.losses.pairwise_kl` (all ordered pairs, gradient through the first argument
    only). Subtracting it lowers the loss when the steps disagree more.
    """

    name = "erl"

    def __init__(self, cfg: ERLConfig, tau: float, seeds: Seeds) -> None:
        super().__init__(cfg, tau, seeds)
        self.cfg: ERLConfig = cfg

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

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> EnsembleReasoningLoss:
        return cls(settings_of(ctx, ERLConfig), ctx.tau, ctx.seeds)
