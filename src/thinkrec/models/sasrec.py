"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the item sequence.

Item + learned position embeddings, a stack of blocks with causal self-attention (pre-LN with a final
LayerNorm by default; post-LN, or the original code's query-only LayerNorm, by ``model.norm``); the output
embeddings are tied to the item table. Padding keys are masked; every position may attend to itself so padded
rows stay finite.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from thinkrec.models.base import Encoded, KVCache
from thinkrec.models.dropout import Dropout
from thinkrec.models.dropout import dropout as drop
from thinkrec.models.transformer import Block


class SASRecConfig(BaseModel):
    """SASRec backbone settings (RecBole names in brackets)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sasrec"] = "sasrec"
    hidden: int = Field(64, description="embedding and hidden size [hidden_size]", ge=1)
    layers: int = Field(2, description="number of Transformer blocks [n_layers]", ge=1)
    heads: int = Field(2, description="attention heads per block [n_heads]", ge=1)
    ffn: int | None = Field(None, description="feed-forward inner size; default 4 x hidden [inner_size]")
    dropout: float = Field(
        0.2,
        description="dropout on block outputs (hidden), and on the input embeddings unless model.input_dropout",
        ge=0,
        lt=1,
    )
    attn_dropout: float = Field(0.2, description="dropout on attention weights", ge=0, lt=1)
    input_dropout: float | None = Field(
        None,
        description=(
            "dropout on the input tokens after the input LayerNorm (item + position embeddings; also the"
            " fed-back reasoning tokens unless reasoning.feedback_dropout); default: model.dropout. The"
            " ReaRec research code uses 0.2 here and 0.5 on hidden and attention"
        ),
        ge=0,
        lt=1,
    )
    ffn_dropout: bool = Field(
        True,
        description=(
            "dropout (model.dropout) between the feed-forward sub-layer's two linear maps, as RecBole;"
            " false: none there (the ReaRec research code)"
        ),
    )
    max_len: int = Field(50, description="maximum history length [MAX_ITEM_LIST_LENGTH]", ge=1)
    scale_embeddings: bool = Field(False, description="multiply item embeddings by sqrt(hidden)")
    positions: Literal["from_end", "from_start"] = Field(
        "from_end",
        description=(
            "position ids: 'from_end' = the newest item always has the last position (original SASRec); "
            "'from_start' = the oldest item of the window has position 0 (RecBole)"
        ),
    )
    norm: Literal["pre", "post", "query"] = Field(
        "pre",
        description=(
            "LayerNorm placement: 'pre' = before each sub-layer plus a final LayerNorm; "
            "'post' = after each residual sum, no final LayerNorm (original Transformer, RecBole); "
            "'query' = on the attention's queries only, the residual added to them, and before the "
            "feed-forward sub-layer, whose residual is added to its normalised input, plus a final LayerNorm "
            "(the original SASRec code, RecTools)"
        ),
    )
    activation: Literal["gelu", "relu"] = Field(
        "gelu", description="feed-forward activation (RecBole: gelu; the original SASRec, RecTools: relu)"
    )
    input_norm: bool = Field(
        True,
        description=(
            "LayerNorm on the input tokens (item + position embeddings, fed-back reasoning tokens) before "
            "their dropout (RecBole); false: none (the original SASRec, RecTools), so reasoning."
            "normalise_feedback then only drops the fed-back tokens out"
        ),
    )
    init: Literal["normal", "xavier"] = Field(
        "normal",
        description=(
            "weight initialisation: 'normal' = N(0, 0.02) for every linear map and embedding (RecBole); "
            "'xavier' = Xavier-normal for every weight matrix and embedding table of the SASRec backbone (RecTools);"
            " biases zero. Parameters a subclass adds (BERT4Rec's mask token, the text adapters) and the reasoning"
            " position embeddings keep their own initialisation"
        ),
    )
    tie_embeddings: bool = Field(
        True,
        description=(
            "score items with the input embedding table (tied, as SASRec and RecBole); false = a separate "
            "output table (then an item's own input does not score it highly by construction)"
        ),
    )
    scorer: Literal["dot", "cosine"] = Field("dot", description="user-item similarity")
    temperature: float = Field(1.0, description="logits are similarity / temperature", gt=0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> SASRecConfig:
        if self.hidden % self.heads:
            raise ValueError(
                f"model.heads ({self.heads}) must divide model.hidden ({self.hidden}): each head gets hidden / heads"
                " dimensions"
            )
        return self


class SASRec(nn.Module):
    """Causal self-attentive sequential encoder exposing its per-layer key/value cache."""

    causal = True

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_size = cfg.hidden
        self.max_len = cfg.max_len
        self.item_embedding = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden)
        self.input_norm: nn.Module = nn.LayerNorm(cfg.hidden) if cfg.input_norm else nn.Identity()
        self.input_dropout = Dropout(cfg.dropout if cfg.input_dropout is None else cfg.input_dropout)
        self.blocks = nn.ModuleList(
            Block(
                cfg.hidden,
                cfg.heads,
                cfg.ffn or 4 * cfg.hidden,
                cfg.dropout,
                cfg.attn_dropout,
                cfg.norm,
                ffn_dropout=cfg.ffn_dropout,
                activation=cfg.activation,
            )
            for _ in range(cfg.layers)
        )
        self.final_norm: nn.Module = nn.Identity() if cfg.norm == "post" else nn.LayerNorm(cfg.hidden)
        self.output_embedding: nn.Embedding | None = (
            None if cfg.tie_embeddings else nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        )
        self.emb_scale = math.sqrt(cfg.hidden) if cfg.scale_embeddings else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        def weight_init(weight: torch.Tensor) -> None:
            if self.cfg.init == "xavier":
                nn.init.xavier_normal_(weight)
            else:
                nn.init.normal_(weight, std=0.02)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                weight_init(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                weight_init(module.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            if self.output_embedding is not None:
                self.output_embedding.weight[0].zero_()

    def input_tokens(self, vectors: torch.Tensor, dropout: float | None = None) -> torch.Tensor:
        """Normalise and drop out input vectors (item + position embeddings, or reasoning inputs); ``dropout``
        replaces the input dropout probability (None: ``model.input_dropout``)."""
        p = self.input_dropout.p if dropout is None else dropout
        return drop(self.input_norm(vectors), p, self.training)

    def embed(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        items = self.item_embedding(inputs)
        if self.emb_scale != 1.0:  # (a multiplication by one would still be a pass over the batch)
            items = items * self.emb_scale
        if self.cfg.positions == "from_start":
            # index of each item among the row's real items: independent of padding and trimming
            pos = ((inputs != 0).cumsum(dim=1) - 1).clamp(min=0)
            x = items + self.position_embedding(pos)
        else:
            x = items + self.position_embedding(positions)[None]
        return self.input_tokens(x)

    def attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """May-attend mask ``[B, 1, W, W]`` of the item columns (``pad [B, W]``: padding): causal, padding keys
        masked, every column may attend to itself (so padded rows stay finite)."""
        w = pad.shape[1]
        eye = torch.eye(w, dtype=torch.bool, device=pad.device)
        causal = torch.ones(w, w, dtype=torch.bool, device=pad.device).tril()
        return ((causal[None] & ~pad[:, None, :]) | eye[None])[:, None]

    def prepared(
        self, inputs: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the blocks run on for item ids ``inputs [B, W]``: the input tokens ``[B, W', d]``, their
        may-attend mask ``[B, 1, W', W']`` and key padding ``[B, W']`` (``W' = W``; a subclass may add
        columns, as a cloze-trained BERT4Rec its ``[MASK]``)."""
        pad = inputs == 0
        return self.embed(inputs, positions), self.attention_mask(pad), pad

    def forward(
        self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False, last_only: bool = False
    ) -> Encoded:
        """``inputs``: int64 ``[B, W]`` left-padded item ids; ``positions``: int64 ``[W]``. With ``last_only``
        the final block computes only the last column (``hidden`` is ``[B, 1, d]``)."""
        x, mask, pad = self.prepared(inputs, positions)
        encoded = self.run_blocks(x, mask, None, last_only, use_cache)
        encoded.key_padding = pad
        return self.keep_cache(encoded, use_cache)

    @staticmethod
    def keep_cache(encoded: Encoded, use_cache: bool) -> Encoded:
        """Store the keys/values contiguously when they will be reused (each reasoning step reads them)."""
        if use_cache and encoded.cache is not None:
            encoded.cache = [(k.contiguous(), v.contiguous()) for k, v in encoded.cache]
        return encoded

    def run_blocks(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None,
        last_only: bool = False,
        with_cache: bool = True,
    ) -> Encoded:
        """The blocks over ``x``; ``last_only``: the final block computes the last column only, without
        forming its keys/values when ``with_cache`` is off (the returned cache is then ``None``)."""
        cache = []
        for i, block in enumerate(self.blocks):
            if last_only and past is None and i == len(self.blocks) - 1:
                if not with_cache:
                    x, _ = cast(Block, block).forward_last_folded(x, mask)
                    return Encoded(self.final_norm(x), None)
                x, kv = cast(Block, block).forward_last(x, mask)
            else:
                x, kv = block(x, mask, None if past is None else past[i])
            cache.append(kv)
        return Encoded(self.final_norm(x), cache)

    def extend(self, tokens: torch.Tensor, encoded: Encoded, extra_mask: torch.Tensor | None = None) -> Encoded:
        """Run new input vectors ``tokens [B, T, d]`` (already normalised by :meth:`input_tokens`) after the
        cached sequence. They attend to every real cached column and causally to each other; ``extra_mask``
        (bool ``[B|1, T, S]``) can restrict that further. Returns their hidden states and the grown cache."""
        assert encoded.cache is not None and encoded.key_padding is not None
        b, t, _ = tokens.shape
        past_pad = encoded.key_padding
        s_past = past_pad.shape[1]
        new = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        mask = torch.cat([(~past_pad)[:, None, :].expand(b, t, s_past), new[None].expand(b, t, t)], dim=2)
        if extra_mask is not None:
            mask = mask & extra_mask
        out = self.run_blocks(tokens, mask[:, None], encoded.cache)
        out.key_padding = torch.cat([past_pad, torch.zeros(b, t, dtype=torch.bool, device=tokens.device)], 1)
        return out

    def extend_chains(
        self, tokens: torch.Tensor, encoded: Encoded, shared_mask: torch.Tensor, own: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """One new token per chain ``tokens [B, T, d]``, attending to the encoded columns ``shared_mask
        [B, T, W]`` allows and to its own chain's earlier tokens ``own`` (see
        :class:`~thinkrec.models.base.ChainBackbone`). Returns their hidden states and the grown ``own``."""
        assert encoded.cache is not None
        b, t, _ = tokens.shape
        if own is None:
            heads = self.cfg.heads
            empty = tokens.new_zeros(b, heads, t, 0, self.hidden_size // heads)
            own = [(empty, empty)] * len(self.blocks)
        x, grown = tokens, []
        for block, shared, chain in zip(self.blocks, encoded.cache, own, strict=True):
            x, kv = cast(Block, block).forward_chains(x, shared, shared_mask[:, None], chain)
            grown.append(kv)
        return self.final_norm(x), grown
