"""A Transformer block (pre- or post-LayerNorm) whose attention can reuse a key/value cache."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from thinkrec.models.dropout import Dropout, dropout
from thinkrec.models.fused import linear


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """Scaled dot-product attention (``mask`` True = may attend) with dropout ``p`` on the weights when
    ``training``: the fused kernel without dropout, else the weights are formed and dropped with the cheap
    :func:`~thinkrec.models.dropout.dropout` (what the kernel's dropout path would materialise anyway).
    bf16 inference also forms the weights: on these short sequences torch's fused CPU kernel takes 1.4-1.7x
    the time of two batched products and a float32 softmax in bf16 (in float32 it is the faster one;
    ``benchmarks/attention_speed.py``)."""
    dropping = training and p > 0.0
    if not dropping and (q.dtype != torch.bfloat16 or torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return formed_attention(q, k, v, mask, p if dropping else 0.0)


def formed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float = 0.0
) -> torch.Tensor:
    """Attention with its weights formed explicitly (two batched products and a softmax), dropped with
    probability ``p``. The softmax is taken in float32: for bf16 inputs more precise and, on this CPU, twice
    as fast as in bf16."""
    scores = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    probs = torch.softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1, dtype=torch.float32)
    out: torch.Tensor = (dropout(probs, p) if p > 0.0 else probs).to(v.dtype) @ v
    return out


class Block(nn.Module):
    """Pre-LN ``x + Attn(LN(x))`` then ``+ FFN(LN(.))`` (default), or post-LN ``LN(x + Attn(x))`` then
    ``LN(. + FFN(.))`` (the original Transformer, RecBole's SASRec); returns the new hidden states and this
    pass's keys/values."""

    def __init__(
        self, hidden: int, heads: int, ffn: int, dropout: float, attn_dropout: float, post_norm: bool = False
    ) -> None:
        super().__init__()
        self.post_norm = post_norm
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.ln_attn = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), Dropout(dropout), nn.Linear(ffn, hidden))
        self.dropout = Dropout(dropout)
        self.attn_dropout = attn_dropout

    def _attn_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention projects: ``x`` itself (post-LN) or ``LN(x)`` (pre-LN)."""
        return x if self.post_norm else self.ln_attn(x)

    def _project(self, h: torch.Tensor, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of the query/key/value projection (rows: queries, keys, values, ``d`` each) of
        ``h [B, T, d]``, split into heads: ``[n, B, h, T, hd]`` for ``n = len(rows) / d``."""
        b, t, _ = h.shape
        out = linear(h, self.qkv.weight[rows], self.qkv.bias[rows])
        return out.view(b, t, -1, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, h, T, hd]`` of new tokens ``x [B, T, d]``."""
        q, k, v = self._project(self._attn_input(x), slice(None))
        return q, k, v

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """``self.ffn(x)`` (Linear, GELU, Dropout, Linear), with the bias and GELU fused at inference."""
        first, act, drop, second = (
            cast(nn.Linear, self.ffn[0]),
            cast(nn.GELU, self.ffn[1]),
            self.ffn[2],
            cast(nn.Linear, self.ffn[3]),
        )
        return linear(drop(linear(x, first.weight, first.bias, act.approximate)), second.weight, second.bias)

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection of the attention ``[B, h, T, hd]`` + residual, then the feed-forward sub-layer."""
        b, t, d = x.shape
        x = x + self.dropout(linear(attn.transpose(1, 2).reshape(b, t, d), self.out.weight, self.out.bias))
        if self.post_norm:
            x = self.ln_attn(x)
            post: torch.Tensor = self.ln_ffn(x + self.dropout(self._ffn(x)))
            return post
        out: torch.Tensor = x + self.dropout(self._ffn(self.ln_ffn(x)))
        return out

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x``: ``[B, T, d]`` new tokens; ``mask``: bool ``[B|1, 1, T, S]`` (True = may attend), where
        ``S`` = cached length + ``T``; ``past``: cached keys/values ``[B, h, S-T, hd]``."""
        q, k, v = self._qkv(x)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        attn = attend(q, k, v, mask, self.attn_dropout, self.training)
        return self._finish(x, attn), (k, v)

    def forward_last(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` (no cache) when only the last column's output is needed: keys and values are
        computed for every column, but only the last column is projected to a query and attends, and only it
        goes through the output projection and the feed-forward sub-layer. Returns ``[B, 1, d]`` and the
        full keys/values."""
        d = x.shape[-1]
        h = self._attn_input(x)
        k, v = self._project(h, slice(d, None))
        (q,) = self._project(h[:, -1:], slice(0, d))
        attn = attend(q, k, v, mask[..., -1:, :], self.attn_dropout, self.training)
        return self._finish(x[:, -1:], attn), (k, v)

    def forward_chains(
        self,
        x: torch.Tensor,
        shared: tuple[torch.Tensor, torch.Tensor],
        shared_mask: torch.Tensor,
        own: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention for ``T`` independent token chains that share one cached prefix.

        Token ``i`` of ``x [B, T, d]`` attends to the shared cached keys/values ``[B, h, W, hd]`` where
        ``shared_mask [B, 1, T, W]`` allows it, to its OWN chain's earlier keys/values ``own [B, h, T, j, hd]``
        (``j >= 0``) and to itself -- never to another chain. This equals :meth:`forward` with the shared
        columns, every chain's earlier tokens and a block-diagonal mask, but costs ``T x (W + j + 1)`` scores
        instead of ``T x (W + (j + 1) T)``. Returns the new hidden states and the chains' keys/values grown by
        this token, ``[B, h, T, j+1, hd]``.
        """
        q, k, v = self._qkv(x)
        keys = torch.cat([own[0], k[:, :, :, None]], dim=3)  # [B, h, T, j+1, hd]
        values = torch.cat([own[1], v[:, :, :, None]], dim=3)
        scale = self.head_dim**-0.5
        shared_scores = (q @ shared[0].transpose(-1, -2) * scale).masked_fill(~shared_mask, float("-inf"))
        own_scores = torch.einsum("bhtd,bhtjd->bhtj", q, keys) * scale
        w = shared_scores.shape[-1]
        probs = torch.softmax(torch.cat([shared_scores, own_scores], dim=-1), dim=-1)
        probs = dropout(probs, self.attn_dropout, self.training)
        attn = probs[..., :w] @ shared[1] + torch.einsum("bhtj,bhtjd->bhtd", probs[..., w:], values)
        return self._finish(x, attn), (keys, values)
