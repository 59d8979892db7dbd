"""ReaRec's progressive reasoning learning (PRL)."""

from __future__ import annotations

import torch

from thinkrec.losses import info_nce, per_step_cross_entropy, progressive_temperatures
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.base import LossOutput, ObjectiveContext
from thinkrec.objectives.reasoning import PrefixBatch, ReasoningObjective, prefix_batch, settings_of
from thinkrec.reasoning.config import PRLConfig
from thinkrec.seed import Seeds


class ProgressiveReasoningLoss(ReasoningObjective):
    """PRL: ``CE(r_K, tau) + agg_{k<K} CE(r_k, tau * alpha^(K-k)) + w * RCL``, ``agg`` the sum (the paper) or
    the mean (the research code) over the early steps (``step_ce``).

    RCL (reasoning-aware contrastive learning): a noisy view of the reasoning, with Gaussian noise (std
    ``noise_std``, from a generator derived from the root seed and the epoch) added to every reasoning input
    ``z_k``; InfoNCE at temperature ``tau`` pulls each noisy step state ``k = 1..K`` towards the clean state
    of the same prefix. How the noisy view is made (``rcl_view``):

    - ``shared``: it reasons from the SAME item pass as the clean view (item keys and values computed once)
      and feeds back its own noisy chain, ``z_k = r~_(k-1) + RPE[k] + noise``;
    - ``reencode`` (the research code): the items are encoded again (in training, with their own dropout
      masks) and step ``k``'s input is the CLEAN previous state, ``z_k = r_(k-1) + RPE[k] + noise``; the
      noisy tokens attend to the second item pass and to the noisy view's own earlier tokens. Gradient
      flows through the clean states into the noisy view, as in the research code.

    With ``warmup_trains = "reasoning"`` the warm-up epochs train the cross-entropies alone (no noisy view),
    as the research code does before its noise starts.

    Negatives are the same step of the other rows of the batch: in ``last`` mode the other prefixes of the
    batch, in ``all`` mode the other rows' prefixes in the same prefix slot (one prefix per sequence, as in
    a ``last``-mode batch, and ``B x B`` similarities per slot instead of ``M x M`` over all prefixes).
    """

    name = "prl"

    def __init__(self, cfg: PRLConfig, tau: float, seeds: Seeds) -> None:
        super().__init__(cfg, tau, seeds)
        self.cfg: PRLConfig = cfg
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
        temperatures = progressive_temperatures(self.depth, self.tau, self.cfg.prl_alpha)
        per_step = per_step_cross_entropy(users, items, prefixes.targets[valid], temperatures)
        early = per_step[:-1]
        ce_last, ce_steps = per_step[-1], early.mean() if self.cfg.step_ce == "mean" else early.sum()
        total = ce_last + ce_steps
        parts = {"ce_last": float(ce_last.detach()), "ce_steps": float(ce_steps.detach())}
        if self.cfg.rcl_weight > 0 and not self.warming_up:  # the noisy view waits for the warm-up's end
            noisy = self.noisy_states(model, prefixes, clean)
            groups_valid = valid.T.repeat_interleave(self.depth, dim=0)  # [T*K, B], slot-major
            anchors, candidates = self.by_step_slot(noisy[:, :, 1:]), self.by_step_slot(clean[:, :, 1:])
            rcl = info_nce(anchors, candidates, groups_valid, self.tau, self.cfg.rcl_similarity)
            total = total + self.cfg.rcl_weight * rcl
            parts["rcl"] = float(rcl.detach())
        return LossOutput(total, parts)

    def noisy_states(self, model: SeqRecModel, prefixes: PrefixBatch, clean: torch.Tensor) -> torch.Tensor:
        """States ``[B, T, K+1, d]`` of the noisy view (``rcl_view``); step 0 is the view's item pass."""
        if self.cfg.rcl_view == "shared":
            return self.states(model, prefixes, self.noise)
        again = prefix_batch(model, prefixes.batch)  # a second item pass: in training, new dropout masks
        return self.states(model, again, self.noise, feed=clean[:, :, :-1])

    @staticmethod
    def by_step_slot(states: torch.Tensor) -> torch.Tensor:
        """``[B, T, K, d] -> [T*K, B, d]``: one InfoNCE group per (prefix slot, step) across the rows."""
        b, t, k, d = states.shape
        return states.permute(1, 2, 0, 3).reshape(t * k, b, d)

    @classmethod
    def from_context(cls, ctx: ObjectiveContext) -> ProgressiveReasoningLoss:
        return cls(settings_of(ctx, PRLConfig), ctx.tau, ctx.seeds)
