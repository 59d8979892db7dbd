"""A Transformer block (pre-, post- or query-LayerNorm) whose attention can reuse a key/value cache."""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from thinkrec.models.dropout import Dropout, dropout
from thinkrec.models.fused import linear


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """Scaled dot-product attention (``mask`` True = may attend) with dropout ``p`` on the weights when
    ``training``. With gradients and no dropout: torch's fused kernel. With dropout the weights are formed
    (:func:`formed_attention`) and dropped with the cheap :func:`~thinkrec.models.dropout.dropout`, which
    the kernel's dropout path would materialise anyway. At inference the formed weights are the faster
    path on these short sequences, except for a single float32 query per row, where the fused kernel is
    faster (whole-evaluation A/Bs in docs/benchmarks/speed.md). Off the CPU these choices do not apply:
    the fused kernel always runs, dropping the weights itself."""
    dropping = training and p > 0.0
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if dropping else 0.0)
    one_fp32_query = q.dtype == torch.float32 and q.shape[-2] == 1
    if not dropping and (torch.is_grad_enabled() or one_fp32_query):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return formed_attention(q, k, v, mask, p if dropping else 0.0)


def formed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float = 0.0
) -> torch.Tensor:
    """Attention with its weights formed explicitly, dropped with probability ``p``: per head, one batched
    product adds the scaled scores to an additive 0 / -inf mask (formed once and shared by the heads),
    a softmax, and a product with the values. Each head's ``[B, T, hd]`` query/key/value is a strided view
    of the projection, which the batched product reads in place; a product over the ``[B, heads]`` batch
    would first copy all three into a head-major layout, and its output back (measured in
    ``docs/benchmarks/speed.md``). Returns ``[B, heads, T, hd]``, a view of a ``[B, T, heads, hd]`` tensor,
    so merging the heads afterwards is free. The softmax is taken in float32: for bf16 inputs more precise,
    and on the CPU faster than in bf16."""
    b, heads, t, hd = q.shape
    blocked = torch.full((), float("-inf"), dtype=q.dtype, device=q.device)
    bias = torch.where(mask[:, 0], torch.zeros((), dtype=q.dtype, device=q.device), blocked)  # [B|1, T, S]
    out = v.new_empty(b, t, heads, hd)
    for head in range(heads):
        scores = torch.baddbmm(bias, q[:, head], k[:, head].transpose(1, 2), alpha=hd**-0.5)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out[:, :, head] = (dropout(probs, p) if p > 0.0 else probs).to(v.dtype) @ v[:, head]
    return out.transpose(1, 2)


Norm = Literal["pre", "post", "query"]
Activation = Literal["gelu", "relu"]


class Block(nn.Module):
    """A Transformer block with one of three LayerNorm placements (``norm``):

    - ``pre`` (default): ``x + Attn(LN(x))`` then ``+ FFN(LN(.))``;
    - ``post``: ``LN(x + Attn(x))`` then ``LN(. + FFN(.))`` (the original Transformer, RecBole's SASRec);
    - ``query``: the original SASRec's (Kang & McAuley's code, RecTools): the LayerNorm feeds the attention's
      queries only (keys and values read ``x``), the residual is added to the normalised queries,
      ``h = LN(x) + Attn(LN(x), x, x)`` (the attention output not dropped, only its weights); then
      ``f + FFN(f)`` with ``f = LN(h)``.

    Returns the new hidden states and this pass's keys/values. The keys'/values' input of a pass
    (:meth:`_attn_input`) is what a folded inference cache keeps."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        ffn: int,
        dropout: float,
        attn_dropout: float,
        norm: Norm = "pre",
        ffn_dropout: bool = True,
        activation: Activation = "gelu",
    ) -> None:
        super().__init__()
        if norm not in ("pre", "post", "query"):
            raise ValueError(f"unknown LayerNorm placement {norm!r}: pre, post or query")
        self.norm = norm
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.ln_attn = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ln_ffn = nn.LayerNorm(hidden)
        # ffn_dropout off keeps a p = 0 module in place (an identity), so the parameter names do not change
        inner = Dropout(dropout if ffn_dropout else 0.0)
        act: nn.Module = {"gelu": nn.GELU, "relu": nn.ReLU}[activation]()
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), act, inner, nn.Linear(ffn, hidden))
        self.dropout = Dropout(dropout)
        self.attn_dropout = attn_dropout

    def _attn_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the keys and values are projected from: ``LN(x)`` (pre) or ``x`` itself (post, query)."""
        return self.ln_attn(x) if self.norm == "pre" else x

    def _query_input(self, x: torch.Tensor, kv_input: torch.Tensor) -> torch.Tensor:
        """What the queries of ``x`` are projected from, given its keys'/values' input ``kv_input``."""
        return self.ln_attn(x) if self.norm == "query" else kv_input

    def _project(self, h: torch.Tensor, rows: slice) -> torch.Tensor:
        """Rows ``rows`` of the query/key/value projection (rows: queries, keys, values, ``d`` each) of
        ``h [B, T, d]``, split into heads: ``[n, B, h, T, hd]`` for ``n = len(rows) / d``."""
        b, t, _ = h.shape
        out = linear(h, self.qkv.weight[rows], self.qkv.bias[rows])
        return out.view(b, t, -1, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _qkv_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, h, T, hd]`` of new tokens ``x [B, T, d]``, and the keys'/values'
        input ``[B, T, d]``."""
        h = self._attn_input(x)
        if self.norm != "query":
            q, k, v = self._project(h, slice(None))
            return q, k, v, h
        d = x.shape[-1]
        (q,) = self._project(self._query_input(x, h), slice(0, d))
        k, v = self._project(h, slice(d, None))
        return q, k, v, h

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, h, T, hd]`` of new tokens ``x [B, T, d]``."""
        q, k, v, _ = self._qkv_inputs(x)
        return q, k, v

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """``self.ffn(x)`` (Linear, activation, Dropout, Linear), with the bias and GELU fused at inference."""
        first, act, drop, second = (
            cast(nn.Linear, self.ffn[0]),
            self.ffn[1],
            self.ffn[2],
            cast(nn.Linear, self.ffn[3]),
        )
        if isinstance(act, nn.GELU):
            inner = linear(x, first.weight, first.bias, act.approximate)
        else:
            inner = act(linear(x, first.weight, first.bias))
        return linear(drop(inner), second.weight, second.bias)

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection of the attention ``[B, h, T, hd]`` + residual, then the feed-forward sub-layer."""
        b, t, d = x.shape
        return self._residual(x, linear(attn.transpose(1, 2).reshape(b, t, d), self.out.weight, self.out.bias))

    def _residual(self, x: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """``x`` (``LN(x)`` with query norm) + the projected attention output, then the feed-forward sub-layer
        (norms as configured)."""
        if self.norm == "post":
            x = self.ln_attn(x + self.dropout(projected))
            post: torch.Tensor = self.ln_ffn(x + self.dropout(self._ffn(x)))
            return post
        if self.norm == "query":
            # no dropout on the attention output here: the original code drops the attention weights only
            f: torch.Tensor = self.ln_ffn(self.ln_attn(x) + projected)
            query: torch.Tensor = f + self.dropout(self._ffn(f))
            return query
        x = x + self.dropout(projected)
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
        (q,) = self._project(self._query_input(x[:, -1:], h[:, -1:]), slice(0, d))
        attn = attend(q, k, v, mask[..., -1:, :], self.attn_dropout, self.training)
        return self._finish(x[:, -1:], attn), (k, v)

    def forward_last_folded(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_last`'s ``[B, 1, d]`` output without forming keys/values: the key and value
        projections are folded into the last column's query and attention output (:meth:`folded_scores`,
        :meth:`folded_mix`), which costs ``O(W d)`` per row and head instead of the ``O(W d^2)`` of
        projecting every column -- the same numbers up to rounding order. Returns the output and the
        attention inputs ``[B, W, d]`` (what the inference runner's folded cache keeps in place of keys/values,
        :mod:`thinkrec.inference.folded`)."""
        h = self._attn_input(x)
        (q,) = self._project(self._query_input(x[:, -1:], h[:, -1:]), slice(0, x.shape[-1]))  # [B, heads, 1, hd]
        scores = self.folded_scores(q, h).masked_fill_(~mask[..., -1:, :], float("-inf"))
        probs = dropout(torch.softmax(scores, dim=-1), self.attn_dropout, self.training)
        return self._finish(x[:, -1:], self.folded_mix(probs, h)), h

    def folded_scores(self, q: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Scaled attention scores ``[B, heads, T, W]`` of queries ``q [B, heads, T, hd]`` against the keys
        of attention inputs ``inputs [B, W, d]``, without projecting the keys: per head (``W_k``: its
        ``[hd, d]`` rows of the projection), ``q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k``."""
        b, heads, t, hd = q.shape
        d = inputs.shape[-1]
        w_k = self.qkv.weight[d : 2 * d].view(heads, hd, d)
        b_k = self.qkv.bias[d : 2 * d].view(heads, 1, hd)
        folded = torch.einsum("bhtc,hcd->bhtd", q, w_k).reshape(b, heads * t, d)
        scores = torch.bmm(folded, inputs.transpose(1, 2)).view(b, heads, t, -1)
        return scores.add_((q * b_k).sum(-1, keepdim=True)).mul_(hd**-0.5)

    def folded_mix(self, probs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``probs [B, heads, T, W]`` applied to the values of attention inputs ``inputs [B, W, d]``
        (``[B, heads, T, hd]``) without projecting the values: ``sum_j a_j (W_v h_j + b_v) = W_v (sum_j a_j
        h_j) + b_v sum_j a_j`` (with attention dropout the weights need not sum to one)."""
        b, heads, t, w = probs.shape
        d = inputs.shape[-1]
        mixed = torch.bmm(probs.reshape(b, heads * t, w), inputs).view(b, heads, t, d)
        w_v = self.qkv.weight[2 * d :].view(heads, self.head_dim, d)
        b_v = self.qkv.bias[2 * d :].view(heads, 1, self.head_dim)
        return torch.einsum("bhtd,hcd->bhtc", mixed, w_v) + probs.sum(-1, keepdim=True) * b_v

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
        own_part = torch.einsum("bhtj,bhtjd->bhtd", probs[..., w:], values)
        attn = probs[..., :w] @ shared[1] + own_part
        return self._finish(x, attn), (keys, values)
