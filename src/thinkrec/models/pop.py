"""The most-popular baseline: every user gets the items ranked by their number of interactions in training.

It is a backbone like the others so that it runs under the same protocol (the same evaluator, history
masking, checkpoints, ``load_run``, ``recommend`` and ``serve``): the user state is the constant ``[1.0]``
and every item's one-dimensional vector is its place in the popularity order (``n_items`` for the most
popular item down to 1), so the dot product ranks by training count, ties broken by the lower item id
first, exactly and deterministically (no two items share a score). The counts themselves are kept in the
checkpoint beside the order.

It has no gradient training: it is fit in closed form from the split (:meth:`Popularity.fit_from_split`,
the :class:`~thinkrec.models.base.ClosedForm` capability the run asks for instead of running epochs).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from thinkrec.data.split import Split
from thinkrec.models.base import Encoded, Scorer
from thinkrec.models.model import SeqRecModel


class PopConfig(BaseModel):
    """The most-popular baseline: no trainable settings; ``max_len`` is the history window masked by
    ``eval.mask_history`` (as for the sequential models)."""

    model_config = ConfigDict(extra="forbid")

    # read by the run config's validation: this model cannot take latent reasoning
    no_reasoning: ClassVar[str] = "a popularity ranking has no hidden state to reason over"

    kind: Literal["pop"] = "pop"
    max_len: int = Field(50, description="history window (what eval.mask_history masks)", ge=1)
    scorer: Literal["dot"] = Field("dot", description="fixed: the score is the item's place in the popularity order")
    temperature: float = Field(1.0, description="unused (kept for the shared scorer)", gt=0)


def popularity_order(counts: torch.Tensor) -> torch.Tensor:
    """Scores ``[n_items]`` that rank by ``counts`` descending, ties by the lower item id first: the most
    popular item scores ``n_items``, the least popular 1 (exact in float32 up to 2**24 items)."""
    n = counts.numel()
    order = torch.sort(counts, descending=True, stable=True).indices  # stable: equal counts keep id order
    scores = torch.empty(n, dtype=torch.float32, device=counts.device)
    scores[order] = torch.arange(n, 0, -1, dtype=torch.float32, device=counts.device)
    return scores


class Popularity(nn.Module):
    """A constant user state against each item's place in the training popularity order."""

    causal = True
    hidden_size = 1
    counts: torch.Tensor  # [n_items] training interactions of every item (a buffer: saved in checkpoints)

    def __init__(self, n_items: int, cfg: PopConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        # column 0 of row i+1: item i+1's score (row 0 = padding); set by fit_from_split, never by a gradient
        self.item_embedding = nn.Embedding(n_items + 1, 1, padding_idx=0)
        self.item_embedding.weight.requires_grad_(False)
        with torch.no_grad():
            self.item_embedding.weight.zero_()
        self.register_buffer("counts", torch.zeros(n_items, dtype=torch.int64))

    def fit_from_split(self, split: Split) -> None:
        """Count every item's training interactions and order the items by them (closed form)."""
        counts = torch.from_numpy(split.item_counts()).to(self.item_embedding.weight.device)
        n_items = self.item_embedding.num_embeddings - 1
        if counts.numel() != n_items:
            raise ValueError(f"the split has {counts.numel()} items, the model {n_items}")
        with torch.no_grad():
            self.counts.copy_(counts)
            self.item_embedding.weight[1:, 0] = popularity_order(counts)

    def forward(
        self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False, last_only: bool = False
    ) -> Encoded:
        """The same state ``[1.0]`` for every column of every history: the ranking ignores the history
        (the evaluator and the recommender still mask it when asked)."""
        hidden = torch.ones(*inputs.shape, 1, dtype=self.item_embedding.weight.dtype, device=inputs.device)
        return Encoded(hidden, None, inputs == 0)


def popularity_model(split: Split, max_len: int) -> SeqRecModel:
    """The most-popular model of ``split``, fit (``max_len``: the history window masked in evaluation)."""
    backbone = Popularity(split.dataset.n_items, PopConfig(max_len=max_len))
    backbone.fit_from_split(split)
    return SeqRecModel(backbone, Scorer("dot"))
