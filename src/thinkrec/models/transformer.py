"""A pre-LayerNorm Transformer block whose attention can reuse a key/value cache."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    """``x + Attn(LN(x))`` then ``+ FFN(LN(.))``; returns the new hidden states and this pass's keys/values."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.ln_attn = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, hidden)
        )
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = attn_dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x``: ``[B, T, d]`` new tokens; ``mask``: bool ``[B|1, 1, T, S]`` (True = may attend), where
        ``S`` = cached length + ``T``; ``past``: cached keys/values ``[B, h, S-T, hd]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(attn.transpose(1, 2).reshape(b, t, d)))
        x = x + self.dropout(self.ffn(self.ln_ffn(x)))
        return x, (k, v)
