"""GRU4Rec (Hidasi et al., ICLR 2016; the next-item variant of Hidasi & Karatzoglou, CIKM 2018).

A stack of GRU layers over the item embeddings: ``x_t = Dropout(LN(E[i_t]))``, ``h^l_t = GRU_l(h^{l-1}_t,
h^l_{t-1})`` with ``h^0_t = x_t``, output ``LN(h^L_t)``, scored against the (tied) item table. There are
no position embeddings (order is in the recurrence). Left padding is skipped exactly: every row is run
from the zero state over its real items only (the rows are packed), so a padded column's state is zero
and a real column's state does not depend on how much padding precedes it.

**What a reasoning step is for a GRU.** ReaRec feeds ``z_k = r_(k-1) + RPE[k]`` back into the encoder as
one more input token. For a recurrent encoder that means one more recurrent step: ``z_k`` (through the
same input LayerNorm + dropout as an item) enters layer 1 with the *cached* hidden states of the prefix's
last column as the previous state, layer ``l`` takes layer ``l-1``'s new state as input, and ``r_k`` is
the (normalised) top-layer state. The "cache" of this backbone is therefore the per-layer hidden state
after every column, not keys/values; it is kept in :class:`~thinkrec.models.base.Encoded`'s ``cache`` as
one ``(states [B, S, d], states)`` pair per layer (the KVCache slot shape, the same tensor twice), and
:meth:`GRU4Rec.extend` grows it by the new tokens' states -- so
:class:`~thinkrec.reasoning.reasoner.LatentReasoner` works unchanged.

The predecessor of a new token is the **latest column it may attend to** under ``extend``'s mask: the
last cached column by default, the prefix's own last item column / own previous reasoning token under the
reasoner's all-prefix mask (:func:`~thinkrec.reasoning.reasoner.prefix_mask`). So reasoning works in the
``all`` sample mode too: every prefix of a window continues from its own column's states, in one batched
GRU step per reasoning step (tested against reasoning on the truncated sequence).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from thinkrec.models.base import Encoded
from thinkrec.models.dropout import Dropout
from thinkrec.models.dropout import dropout as drop


class GRU4RecConfig(BaseModel):
    """GRU4Rec backbone settings (RecBole names in brackets)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["gru4rec"] = "gru4rec"
    hidden: int = Field(64, description="embedding and GRU hidden size [embedding_size, hidden_size]", ge=1)
    layers: int = Field(1, description="stacked GRU layers [num_layers]", ge=1)
    dropout: float = Field(0.2, description="dropout on the inputs and between layers [dropout_prob]", ge=0, lt=1)
    max_len: int = Field(50, description="maximum history length [MAX_ITEM_LIST_LENGTH]", ge=1)
    scorer: Literal["dot", "cosine"] = Field("dot", description="user-item similarity")
    temperature: float = Field(1.0, description="logits are similarity / temperature", gt=0)


class GRU4Rec(nn.Module):
    """Recurrent sequential encoder whose "cache" is the per-layer hidden state after every column."""

    causal = True

    def __init__(self, n_items: int, cfg: GRU4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_size = cfg.hidden
        self.max_len = cfg.max_len
        self.item_embedding = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.input_norm = nn.LayerNorm(cfg.hidden)
        self.input_dropout = Dropout(cfg.dropout)
        self.grus = nn.ModuleList(nn.GRU(cfg.hidden, cfg.hidden, batch_first=True) for _ in range(cfg.layers))
        self.between = Dropout(cfg.dropout)
        self.final_norm = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def input_tokens(self, vectors: torch.Tensor, dropout: float | None = None) -> torch.Tensor:
        """Normalise and drop out input vectors (item embeddings, or reasoning inputs); ``dropout`` replaces
        the input dropout probability (None: ``model.dropout``)."""
        p = self.input_dropout.p if dropout is None else dropout
        return drop(self.input_norm(vectors), p, self.training)

    def forward(
        self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False, last_only: bool = False
    ) -> Encoded:
        """``inputs``: int64 ``[B, W]`` left-padded item ids; ``positions`` is unused (no position table);
        ``last_only`` is accepted for the protocol (a recurrent pass computes every column anyway).

        Every row runs from the zero state over its real items; padded columns get state 0."""
        pad = inputs == 0
        w = inputs.shape[1]
        lengths = (~pad).sum(1)
        shift = w - lengths  # leading padding of each row
        cols = torch.arange(w, device=inputs.device)
        to_right = (cols[None, :] + shift[:, None]) % w  # right-aligned column t reads left column t+shift
        to_left = (cols[None, :] - shift[:, None]) % w
        x = self.input_tokens(self.item_embedding(inputs))
        x = x.gather(1, to_right[:, :, None].expand(-1, -1, x.shape[-1]))
        states = []
        for i, gru in enumerate(self.grus):
            if i:
                x = self.between(x)
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = gru(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=w)
            states.append(x.gather(1, to_left[:, :, None].expand(-1, -1, x.shape[-1])).masked_fill(pad[..., None], 0))
        hidden = self.final_norm(states[-1])
        cache = [(s, s) for s in states] if use_cache else None
        return Encoded(hidden, cache, pad)

    def step(self, tokens: torch.Tensor, previous: list[torch.Tensor]) -> list[torch.Tensor]:
        """One recurrent step of every layer: ``tokens [N, d]`` with previous per-layer states ``[N, d]``;
        returns the new per-layer states."""
        x = tokens
        new = []
        for i, (gru, h) in enumerate(zip(self.grus, previous, strict=True)):
            if i:
                x = self.between(x)
            out, _ = gru(x[:, None], h[None].contiguous())
            x = out[:, 0]
            new.append(x)
        return new

    def extend(self, tokens: torch.Tensor, encoded: Encoded, extra_mask: torch.Tensor | None = None) -> Encoded:
        """Run new input vectors ``tokens [B, T, d]`` (already through :meth:`input_tokens`) as further
        recurrent steps. Token ``i`` continues from the latest column it may attend to -- under the default
        mask (every real cached column, causal over the new tokens) the previous new token, or the last
        cached column for the first; ``extra_mask`` (bool ``[B|1, T, S+T]``) restricts that like
        :meth:`~thinkrec.models.sasrec.SASRec.extend`. A token that may see no column starts from zero."""
        assert encoded.cache is not None and encoded.key_padding is not None
        b, t, d = tokens.shape
        past = [layer[0] for layer in encoded.cache]  # per layer [B, S, d]
        s = past[0].shape[1]
        cols = torch.arange(s + t, device=tokens.device)
        mask = torch.cat(
            [
                (~encoded.key_padding)[:, None, :].expand(b, t, s),
                torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()[None].expand(b, t, t),
            ],
            dim=2,
        )
        if extra_mask is not None:
            mask = mask & extra_mask
        own = cols[None, None, :] == (s + torch.arange(t, device=tokens.device))[None, :, None]
        seen = mask & ~own  # columns a token may see, other than itself
        latest = torch.where(seen, cols[None, None, :], -1).amax(dim=2)  # [B, T], -1 = nothing seen
        states = [torch.cat([p, p.new_zeros(b, t, d)], dim=1) for p in past]
        zero = torch.zeros(b, 1, d, dtype=tokens.dtype, device=tokens.device)
        if bool((latest < s).all()):
            groups = [torch.arange(t, device=tokens.device)]  # no token waits for another: one batched step
        else:
            groups = [torch.tensor([i], device=tokens.device) for i in range(t)]
        for group in groups:
            index = latest[:, group]  # [B, G]
            previous = [
                torch.cat([layer, zero], dim=1).gather(
                    1, torch.where(index < 0, s + t, index)[:, :, None].expand(-1, -1, d)
                )
                for layer in states
            ]
            g = len(group)
            new = self.step(tokens[:, group].reshape(b * g, d), [p.reshape(b * g, d) for p in previous])
            for layer, state in zip(states, new, strict=True):
                layer[:, s + group] = state.view(b, g, d)
        new_states = [layer[:, s:] for layer in states]
        cache = [(layer, layer) for layer in states]
        padding = torch.cat([encoded.key_padding, torch.zeros(b, t, dtype=torch.bool, device=tokens.device)], 1)
        return Encoded(self.final_norm(new_states[-1]), cache, padding)
