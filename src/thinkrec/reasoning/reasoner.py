"""K-step latent reasoning (ReaRec) on any backbone with a key/value cache.

For a history prefix, ``r_0`` is the backbone's hidden state at the prefix's last column. For k = 1..K the
input token ``z_k = r_(k-1) + RPE[k]`` (optionally perturbed -- PRL's noisy view -- and optionally passed
through the backbone's input LayerNorm + dropout) is run as ONE new token through ``backbone.extend``: it
attends to the cached keys/values of the prefix's real item columns and of its own earlier reasoning
tokens, and its output is ``r_k``. The reasoning position embeddings (RPE, ``max_steps x d``) are the only
parameters.

Many prefixes of one left-padded sequence can reason in the same pass (all-prefix training): the token of
the prefix ending at column ``t`` may see item columns ``<= t`` and its own chain only. :func:`prefix_mask`
states that as a restriction of ``extend``'s default mask (every real cached column, causal over the new
tokens), so it works with any :class:`~thinkrec.models.base.CachedBackbone`. A backbone that also
implements :class:`~thinkrec.models.base.ChainBackbone` (SASRec) runs the same computation without scoring
the other prefixes' reasoning tokens (step ``k`` costs ``T x (W + k)`` attention scores, not
``T x (W + k T)``). One prefix per row (``last`` sample mode) is the special case "the last column only".
:meth:`LatentReasoner.unroll` runs the same steps with a caller's step function, one chain per row: an
inference runner's own cache (:mod:`thinkrec.inference`) uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from thinkrec.errors import ThinkrecError
from thinkrec.models.base import CachedBackbone, ChainBackbone, Encoded

Perturb = Callable[[torch.Tensor], torch.Tensor]


def prefix_item_mask(columns: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
    """Item columns ``[B, T, W]`` the prefix ending at ``columns[b, i]`` may see: real ones ``<= columns[b, i]``.

    ``columns [B, T]`` are the last item columns of the ``T`` reasoning prefixes of each row and
    ``key_padding [B, W]`` marks padded item columns.
    """
    cols = torch.arange(key_padding.shape[1], device=columns.device)
    return (cols[None, None, :] <= columns[:, :, None]) & ~key_padding[:, None, :]


def prefix_mask(columns: torch.Tensor, key_padding: torch.Tensor, step: int) -> torch.Tensor:
    """May-attend mask ``[B, T, W + step*T]`` of the step-``step`` reasoning tokens in a plain KV cache.

    The cache holds the ``W`` item columns followed by one block of ``T`` tokens per step 1..step (the last
    block is the new one); token ``i`` may attend to its :func:`prefix_item_mask` columns and to token ``i``
    of every step block (its own chain, itself last).
    """
    b, t = columns.shape
    own = torch.eye(t, dtype=torch.bool, device=columns.device).expand(b, t, t)
    return torch.cat([prefix_item_mask(columns, key_padding), *([own] * step)], dim=2)


class LatentReasoner(nn.Module):
    """Holds the reasoning position embeddings and runs K reasoning steps (K <= ``max_steps``)."""

    def __init__(
        self,
        hidden: int,
        steps: int,
        max_steps: int | None = None,
        normalise_feedback: bool = True,
        feedback_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.max_steps = max_steps if max_steps is not None else steps
        if not 0 <= steps <= self.max_steps:
            raise ValueError(f"steps must be in 0..max_steps ({self.max_steps})")
        self.normalise_feedback = normalise_feedback
        self.feedback_dropout = feedback_dropout  # None: the backbone's input dropout, as for an item token
        self.rpe = nn.Parameter(torch.empty(self.max_steps, hidden))
        nn.init.normal_(self.rpe, std=0.02)

    def resolve_steps(self, steps: int | None) -> int:
        """``steps`` or the trained K; raises if it exceeds the position table."""
        k = self.steps if steps is None else steps
        if not 0 <= k <= self.max_steps:
            raise ThinkrecError(
                f"cannot reason for {k} steps: this model has reasoning position embeddings for 0..{self.max_steps}"
                " (set reasoning.max_steps when training to allow more)"
            )
        return k

    def forward(
        self,
        backbone: CachedBackbone,
        encoded: Encoded,
        steps: int | None = None,
        perturb: Perturb | None = None,
    ) -> torch.Tensor:
        """States ``[B, K+1, d]`` of the prefix ending at the last column of each row."""
        b = encoded.hidden.shape[0]
        last = torch.full((b, 1), encoded.width - 1, dtype=torch.long, device=encoded.hidden.device)
        return self.prefixes(backbone, encoded, last, steps, perturb)[:, 0]

    def unroll(
        self,
        backbone: CachedBackbone,
        first: torch.Tensor,
        step: Callable[[torch.Tensor, int], torch.Tensor],
        steps: int | None = None,
        perturb: Perturb | None = None,
    ) -> torch.Tensor:
        """States ``[B, K+1, d]`` of one chain per row from its first state ``first [B, 1, d]``:
        ``step(token, k)`` runs the input token ``[B, 1, d]`` of step ``k`` (1-based) over the caller's cache
        of the items and the earlier tokens and returns its state ``r_k``."""
        r = first
        states = [r]
        for k in range(1, self.resolve_steps(steps) + 1):
            r = step(self._token(backbone, r, k, perturb), k)
            states.append(r)
        return torch.cat(states, dim=1)

    def _token(self, backbone: CachedBackbone, r: torch.Tensor, k: int, perturb: Perturb | None) -> torch.Tensor:
        """Input token of step ``k`` from the previous state ``r``: ``r + RPE[k]``, perturbed, then normalised
        and dropped out (``feedback_dropout``) when ``normalise_feedback``."""
        z = r + self.rpe[k - 1]
        if perturb is not None:
            z = perturb(z)
        if not self.normalise_feedback:
            return z
        if self.feedback_dropout is None:  # the backbone's own input dropout (works with any backbone)
            return backbone.input_tokens(z)
        return backbone.input_tokens(z, self.feedback_dropout)

    def prefixes(
        self,
        backbone: CachedBackbone,
        encoded: Encoded,
        columns: torch.Tensor,
        steps: int | None = None,
        perturb: Perturb | None = None,
        feed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """States ``[B, T, K+1, d]`` of the prefixes ending at item columns ``columns [B, T]`` of each row.

        ``encoded`` is the backbone's pass over the items (with its cache and key padding); it is not
        modified, so several branches (e.g. PRL's clean and noisy views) can reason from one item pass.
        ``perturb`` is applied to every input ``z_k`` before normalisation. ``feed [B, T, >= K, d]``, if
        given, replaces the chain's own previous states in the inputs: ``z_k = feed[:, :, k-1] + RPE[k]``
        (PRL's re-encoded view feeds back the clean view's states); the chain still attends to its own
        earlier tokens.
        """
        k_total = self.resolve_steps(steps)
        if encoded.cache is None or encoded.key_padding is None:
            raise ValueError("reasoning needs the backbone's key/value cache and key padding")
        r = encoded.at(columns)
        states = [r]
        items = prefix_item_mask(columns, encoded.key_padding)
        grown, own = encoded, None
        chains = isinstance(backbone, ChainBackbone)  # a runtime-checkable Protocol: check once, not per step
        for k in range(1, k_total + 1):
            tokens = self._token(backbone, r if feed is None else feed[:, :, k - 1], k, perturb)
            if chains:
                r, own = cast(ChainBackbone, backbone).extend_chains(tokens, encoded, items, own)
            else:
                grown = backbone.extend(tokens, grown, prefix_mask(columns, encoded.key_padding, k))
                r = grown.hidden
            states.append(r)
        return torch.stack(states, dim=2)
