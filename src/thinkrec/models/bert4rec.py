"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer over the item sequence.

The encoder is SASRec's (item + position embeddings, pre-LN :class:`~thinkrec.models.transformer.Block` s,
a final LayerNorm, output tied to the item table) with one change: every real item column attends to
**every** real item column, earlier and later (only padding keys are masked). So the hidden state of
column ``t`` depends on the whole window, and the model is not ``causal``: the engine's all-prefix
(``all``) sample mode would let a position see its own target and is rejected.

Two ways to train it:

- ``train_objective = "next"`` (the ReaRec authors' choice, and the presets'): next-item cross-entropy in
  the ``last`` sample mode, one history prefix per row, each with its own bidirectional pass; the last
  column's hidden state is the user vector ``r_0``, and nothing is appended to the sequence.
- ``train_objective = "cloze"`` (the original paper's): the cloze objective
  (:mod:`thinkrec.objectives.cloze`) replaces random items by a learned ``[MASK]`` vector (token id
  ``n_items + 1``; a separate parameter, so the item table keeps ``n_items + 1`` rows and the scorer
  never ranks the mask) and predicts them with a full softmax. At inference a ``[MASK]`` is appended
  after the history and its hidden state is the user vector.

Latent reasoning (:class:`~thinkrec.reasoning.reasoner.LatentReasoner`) uses the inherited
:meth:`~thinkrec.models.sasrec.SASRec.extend`: a reasoning token attends to all real item columns (which
were encoded bidirectionally among themselves) and causally to earlier reasoning tokens -- the paper's
"prefix masking". The items' keys/values do not depend on the reasoning tokens, so the cached path equals
recomputing the extended sequence with that mask (tested).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from thinkrec.data.batches import position_ids
from thinkrec.models.base import Encoded
from thinkrec.models.sasrec import SASRec, SASRecConfig


class BERT4RecConfig(SASRecConfig):
    """BERT4Rec backbone settings: SASRec's, plus how it is trained (RecBole names in brackets)."""

    kind: Literal["bert4rec"] = "bert4rec"  # type: ignore[assignment]
    train_objective: Literal["next", "cloze"] = Field(
        "next",
        description=(
            "'next': next-item cross-entropy on the last column, train.sample_mode=last (ReaRec's choice;"
            " needed for reasoning); 'cloze': the original masked-item objective (no reasoning), a [MASK] is"
            " appended at inference"
        ),
    )
    mask_prob: float = Field(0.2, description="cloze: probability that an item is masked [mask_ratio]", gt=0, lt=1)


def position_vectors(backbone: SASRec, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The position embeddings :meth:`SASRec.embed <thinkrec.models.sasrec.SASRec.embed>` adds, for subclasses
    that change the item part: ``positions`` counted from the end, or (``model.positions = "from_start"``,
    where the config has that key) each column's index among its row's non-padding tokens."""
    if getattr(backbone.cfg, "positions", "from_end") == "from_start":
        index = ((inputs != 0).cumsum(dim=1) - 1).clamp(min=0)
        out: torch.Tensor = backbone.position_embedding(index)
        return out
    table: torch.Tensor = backbone.position_embedding(positions)
    return table[None]


class BERT4Rec(SASRec):
    """Bidirectional self-attentive encoder exposing its per-layer key/value cache (prefix masking)."""

    causal = False

    def __init__(self, n_items: int, cfg: BERT4RecConfig) -> None:
        super().__init__(n_items, cfg)
        self.cfg: BERT4RecConfig = cfg
        self.n_items = n_items
        self.mask_id = n_items + 1
        self.mask_embedding = nn.Parameter(torch.empty(cfg.hidden))
        nn.init.normal_(self.mask_embedding, std=0.02)

    def embed(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Item (or ``[MASK]`` for id ``n_items + 1``) + position embeddings, normalised and dropped out."""
        is_mask = inputs == self.mask_id
        items = self.item_embedding(inputs.masked_fill(is_mask, 0)) * self.emb_scale
        items = torch.where(is_mask[..., None], self.mask_embedding.to(items.dtype), items)
        return self.input_tokens(items + position_vectors(self, inputs, positions))

    def append_mask(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` with a ``[MASK]`` column appended (the oldest column dropped if the window would exceed
        ``max_len``), and the position ids of the result."""
        masks = torch.full((inputs.shape[0], 1), self.mask_id, dtype=inputs.dtype, device=inputs.device)
        out = torch.cat([inputs, masks], dim=1)[:, -self.max_len :]
        return out, position_ids(out.shape[1], self.max_len).to(inputs.device)

    def encode_tokens(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> Encoded:
        """Bidirectional pass over ``inputs [B, W]`` as given (ids may include ``[MASK]``)."""
        x, mask, pad = super().prepared(inputs, positions)
        encoded = self.run_blocks(x, mask, None, last_only, use_cache)
        encoded.key_padding = pad
        if not use_cache:
            encoded.cache = None
        return self.keep_cache(encoded, use_cache)

    def prepared(
        self, inputs: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`SASRec.prepared <thinkrec.models.sasrec.SASRec.prepared>` of what :meth:`forward` encodes:
        with a cloze-trained model's ``[MASK]`` column appended."""
        return super().prepared(*self.with_mask(inputs, positions))

    def with_mask(self, inputs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and positions :meth:`forward` encodes: a cloze-trained model appends a ``[MASK]``
        (:meth:`append_mask`), a next-item-trained one takes ``inputs`` as they are."""
        return self.append_mask(inputs) if self.cfg.train_objective == "cloze" else (inputs, positions)

    def attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """Bidirectional: every column sees every real column (and itself); ``[B, 1, W, W]``."""
        w = pad.shape[1]
        eye = torch.eye(w, dtype=torch.bool, device=pad.device)
        return ((~pad[:, None, :]).expand(-1, w, -1) | eye[None])[:, None]

    def forward(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> Encoded:
        """``inputs``: int64 ``[B, W]`` left-padded item ids; ``positions``: int64 ``[W]``.

        A cloze-trained model appends a ``[MASK]`` column (so the last column is the mask's state)."""
        return self.encode_tokens(*self.with_mask(inputs, positions), use_cache, last_only)
