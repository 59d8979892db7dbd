"""The narrow interfaces every model part implements.

- A :class:`Backbone` turns a left-padded item sequence into hidden states (its forward pass). A
  :class:`CachedBackbone` can also *extend* an encoded sequence by new input vectors reusing its per-layer
  cache (keys/values, or recurrent states): that is all latent reasoning, training and evaluation need from
  a new backbone. :class:`ChainBackbone` is an optional faster extend for all-prefix training.
- A :class:`SeqRecModel` = backbone + scorer + (optional) reasoner. ``encode`` returns the user states
  ``[B, K+1, d]`` (step 0 = the backbone's last hidden state, steps 1..K = reasoning steps), ``score``
  turns a user vector into logits over the whole catalogue.

What makes inference fast on the CPU for particular backbones (a folded cache for SASRec's family) is not
part of these interfaces: :mod:`thinkrec.inference` builds it from a trained model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from thinkrec.data.split import Split

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [B, heads, T, head_dim]


def tensor_versions(tensors: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """A key that changes when any of ``tensors`` is replaced or modified in place (storage and version
    counter): what inference caches of derived weights are kept under."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


@dataclass
class Encoded:
    """Output of a backbone pass: hidden states of every column and, if asked, the KV cache."""

    hidden: torch.Tensor  # [B, W, d]
    cache: KVCache | None = None
    key_padding: torch.Tensor | None = None  # bool [B, W], True where the column is padding

    @property
    def width(self) -> int:
        """Columns encoded (``hidden`` may hold only the last of them after a ``last_only`` pass)."""
        return int(self.key_padding.shape[1] if self.key_padding is not None else self.hidden.shape[1])

    def at(self, columns: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, d]`` at encoded columns ``columns [B, T]`` (columns count all
        :attr:`width` columns; after a ``last_only`` pass only the last ones are held)."""
        offset = self.width - self.hidden.shape[1]
        index = (columns - offset)[:, :, None].expand(-1, -1, self.hidden.shape[-1])
        return self.hidden.gather(1, index)


@runtime_checkable
class Backbone(Protocol):
    """A sequence encoder over item ids 0..n_items (0 = padding)."""

    hidden_size: int
    max_len: int
    item_embedding: nn.Embedding
    causal: bool  # True if the hidden state of column t depends on columns <= t only (all-prefix training)

    def __call__(
        self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False, last_only: bool = False
    ) -> Encoded:
        """Hidden states of every column (``use_cache``: with the per-layer keys/values); ``last_only``: the
        caller needs only the last column's state, which a backbone may compute alone."""
        ...


@runtime_checkable
class CachedBackbone(Backbone, Protocol):
    """A backbone that can run new input vectors against an encoded sequence's cached keys/values."""

    def input_tokens(self, vectors: torch.Tensor, dropout: float | None = None) -> torch.Tensor:
        """What the backbone does to an input vector before its blocks (e.g. LayerNorm + dropout); ``dropout``
        replaces the backbone's own input dropout probability (None: keep it)."""
        ...

    def extend(self, tokens: torch.Tensor, encoded: Encoded, extra_mask: torch.Tensor | None = None) -> Encoded: ...


@runtime_checkable
class ChainBackbone(CachedBackbone, Protocol):
    """A cached backbone with a fast path for many independent token chains over one encoded sequence.

    Chain ``i`` of row ``b`` attends to the cached columns ``shared_mask[b, i]`` allows and to its own
    earlier tokens only (all-prefix reasoning: one chain per history prefix). The same result as
    :meth:`CachedBackbone.extend` with a block-diagonal mask, without scoring the other chains' tokens.
    """

    def extend_chains(
        self, tokens: torch.Tensor, encoded: Encoded, shared_mask: torch.Tensor, own: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Run one new token per chain ``tokens [B, T, d]``; ``shared_mask`` bool ``[B, T, W]`` over the
        encoded columns; ``own`` the chains' earlier keys/values per layer ``[B, h, T, j, hd]`` (None = no
        earlier token). Returns their hidden states ``[B, T, d]`` and the grown ``own``."""
        ...


@runtime_checkable
class ClosedForm(Protocol):
    """A backbone fit in closed form from the training split (e.g. item counts) instead of by gradient
    steps: a run calls :meth:`fit_from_split` once and runs no training epochs."""

    def fit_from_split(self, split: Split) -> None: ...


@runtime_checkable
class ComputedItems(Protocol):
    """A backbone whose item vectors are computed (e.g. from item text) instead of read from
    ``item_embedding``: the same table feeds its inputs and the scorer."""

    def item_table(self) -> torch.Tensor:
        """Item vectors of all ids ``[n_items + 1, d]`` (row 0 = padding)."""
        ...


class Scorer(nn.Module):
    """Scores user vectors against item vectors: dot product or cosine, divided by a temperature."""

    def __init__(self, kind: str = "dot", temperature: float = 1.0) -> None:
        super().__init__()
        if kind not in ("dot", "cosine"):
            raise ValueError(f"unknown scorer kind {kind!r}; use 'dot' or 'cosine'")
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.kind = kind
        self.temperature = temperature

    def prepare(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors whose dot product (divided by the temperature) is the score."""
        if self.kind == "cosine":
            return nn.functional.normalize(users, dim=-1), nn.functional.normalize(items, dim=-1)
        return users, items

    def forward(self, users: torch.Tensor, items: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """All pairs: ``[B, d] x [N, d] -> [B, N]``."""
        users, items = self.prepare(users, items)
        t = temperature or self.temperature
        # dividing by 1 would be a full extra pass over the [B, N] scores
        return users @ items.T if t == 1.0 else users @ items.T / t

    def rowwise(self, users: torch.Tensor, items: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Matching rows: ``[B, d] x [B, d] -> [B]``."""
        users, items = self.prepare(users, items)
        return (users * items).sum(-1) / (temperature or self.temperature)
