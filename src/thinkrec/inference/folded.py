"""A folded cache for SASRec's family at inference: attention inputs instead of keys/values.

One reasoning chain per history (inference) needs no per-chain bookkeeping, and a reasoning token can attend
to the item columns without their keys/values ever being formed: with the key and value projections folded
into the token's query and output (:meth:`FoldedBlock.extend_slot`), a layer keeps only its attention
inputs ``[B, W, d]``. :class:`FoldedEncoder` runs a trained backbone's blocks that way
(:meth:`FoldedEncoder.encode`, the last-column pass), :func:`reasoning_cache` lays out the passes of
consecutive groups of rows with room for the K tokens, and :meth:`FoldedEncoder.extend_slot` runs one token
per row over it. Everything here reads the trained :class:`~thinkrec.models.transformer.Block` s' parameters;
the backbone's own forward pass and ``extend`` (the plain path) do not depend on it, and the results equal
theirs up to rounding order (tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch

from thinkrec.data.batches import position_ids
from thinkrec.models.base import tensor_versions
from thinkrec.models.dropout import dropout
from thinkrec.models.fused import linear
from thinkrec.models.sasrec import SASRec
from thinkrec.models.transformer import Block, attend

FoldedWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class FoldedPass:
    """A last-column pass: the last column's state and every layer's attention inputs."""

    hidden: torch.Tensor  # [B, 1, d]
    inputs: list[torch.Tensor]  # per layer [B, W, d]
    key_padding: torch.Tensor  # bool [B, W]

    @property
    def width(self) -> int:
        return int(self.key_padding.shape[1])


@dataclass
class FoldedCache:
    """Folded passes laid out for reasoning (:func:`reasoning_cache`): every layer's attention inputs with
    room for ``slots`` reasoning tokens after the ``width`` item columns."""

    hidden: torch.Tensor  # [B, 1, d]: the last item column's state
    rooms: list[torch.Tensor]  # per layer [B, W + slots, d]
    key_padding: torch.Tensor  # bool [B, W]
    attn_bias: torch.Tensor  # [B, 1, W + slots]: 0 where a token may attend, -inf at padding
    slots: int

    @property
    def width(self) -> int:
        return int(self.key_padding.shape[1])


class FoldedBlock:
    """A trained :class:`~thinkrec.models.transformer.Block`'s inference over attention inputs instead of
    keys/values; it keeps the block's combined reasoning weights (:meth:`weights`) between steps."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self._kept: tuple[tuple[tuple[int, int], ...], FoldedWeights] | None = None

    def forward_inputs(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's forward pass without a cache, returning the attention inputs ``[B, T, d]`` (what a
        folded cache keeps) in place of the keys/values."""
        block = self.block
        q, k, v, h = block._qkv_inputs(x)
        return block._finish(x, attend(q, k, v, mask, block.attn_dropout, block.training)), h

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last column's output ``[B, 1, d]`` and the attention inputs ``[B, W, d]``
        (:meth:`~thinkrec.models.transformer.Block.forward_last_folded`)."""
        return self.block.forward_last_folded(x, mask)

    def extend_slot(self, x: torch.Tensor, inputs: torch.Tensor, column: int, bias: torch.Tensor) -> torch.Tensor:
        """One new token per row ``x [B, 1, d]`` over a folded cache: ``inputs [B, S, d]`` holds the attention
        inputs of the earlier columns (items, then earlier reasoning tokens) and has room at ``column``, where
        this token's own input is written. The token attends to columns ``<= column`` through the folded
        projections; ``bias [B, 1, column + 1]`` is 0 where it may attend and -inf where not. Per head
        ``h``, with this token's input ``u`` and the columns' inputs ``h_j``:

        - scores: ``(W_q u + b_q) . (W_k h_j + b_k) / sqrt(hd) = u^T A h_j + c . h_j`` + a term that is the
          same for every column (a softmax ignores it), ``A = W_q^T W_k / sqrt(hd)``, ``c = W_k^T b_q /
          sqrt(hd)``: one product of ``u`` with ``[A | c]`` for all heads, then one batched product over
          the columns;
        - output: ``W_o [.. W_v (sum_j p_j h_j) + b_v ..] + b_o`` (the weights ``p`` sum to one) is one
          product with ``W_o W_v`` per head stacked, bias ``W_o b_v + b_o``.

        So a step costs one pass over the cache for the scores and one for the mix, and no per-head
        reshaping. Attention dropout (a block in training mode) takes the unfolded-weight formulas
        (:meth:`~thinkrec.models.transformer.Block.folded_mix`). Returns the token's output ``[B, 1, d]``."""
        block = self.block
        b, _, d = x.shape
        heads = block.heads
        h = block._attn_input(x)
        inputs[:, column] = h[:, 0]
        seen = inputs[:, : column + 1]
        query, query_bias, mix, mix_bias = self.weights()
        folded = linear(block._query_input(x, h)[:, 0], query, query_bias).view(b, heads, d)
        scores = torch.baddbmm(bias, folded, seen.transpose(1, 2))  # [B, heads, column + 1]
        probs = torch.softmax(scores, dim=-1)
        if block.training and block.attn_dropout > 0.0:
            attn = block.folded_mix(dropout(probs, block.attn_dropout, True)[:, :, None], seen)
            return block._finish(x, attn)
        mixed = torch.bmm(probs, seen).view(b, 1, heads * d)
        return block._residual(x, linear(mixed, mix, mix_bias))

    def weights(self) -> FoldedWeights:
        """The combined weights of :meth:`extend_slot`: ``[heads * d, d]`` query-to-key-space weight and its
        bias ``[heads * d]`` (scaled by ``1/sqrt(hd)``), ``[d, heads * d]`` value-and-output weight and its
        bias ``[d]``, in the parameters' precision (also under autocast, which casts them where they are
        used). Without autograd they are kept until a parameter changes (tensor versions), so the steps of an
        evaluation form them once."""
        block = self.block
        params = (block.qkv.weight, block.qkv.bias, block.out.weight, block.out.bias)
        key = tensor_versions(params)
        kept = self._kept
        if kept is not None and kept[0] == key and not torch.is_grad_enabled():
            return kept[1]
        d, heads, hd = block.qkv.in_features, block.heads, block.head_dim
        w_q, w_k, w_v = block.qkv.weight.view(3, heads, hd, d).unbind(0)
        b_q, _, b_v = block.qkv.bias.view(3, heads, hd).unbind(0)
        scale = hd**-0.5
        with torch.autocast(block.qkv.weight.device.type, enabled=False):  # in the parameters' precision
            query = torch.einsum("hcd,hce->hed", w_q, w_k).reshape(heads * d, d) * scale
            query_bias = torch.einsum("hc,hce->he", b_q, w_k).reshape(heads * d) * scale
            mix = torch.einsum("ohc,hcd->ohd", block.out.weight.view(d, heads, hd), w_v).reshape(d, heads * d)
            mix_bias = block.out.weight @ b_v.reshape(d) + block.out.bias
        weights = (query, query_bias, mix, mix_bias)
        if not torch.is_grad_enabled():
            self._kept = (key, weights)
        return weights


class FoldedEncoder:
    """A trained SASRec-family backbone's blocks run over folded caches (SASRec, BERT4Rec, the text
    backbones: whatever :meth:`~thinkrec.models.sasrec.SASRec.prepared` feeds the blocks)."""

    def __init__(self, backbone: SASRec) -> None:
        self.backbone = backbone
        self.blocks = [FoldedBlock(cast(Block, block)) for block in backbone.blocks]

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor) -> FoldedPass:
        """The last-column pass (as the backbone's ``last_only`` one) keeping every layer's attention inputs
        ``[B, W, d]`` instead of keys/values. Reasoning tokens attend to them through folded projections
        (:meth:`FoldedBlock.extend_slot`), ``O(W d)`` per token and head, so no layer projects keys/values
        for reasoning and the pass costs what the plain last-column pass does."""
        x, mask, pad = self.backbone.prepared(inputs, positions)
        layers = []
        for i, block in enumerate(self.blocks):
            x, h = block.forward_last(x, mask) if i == len(self.blocks) - 1 else block.forward_inputs(x, mask)
            layers.append(h)
        return FoldedPass(self.backbone.final_norm(x), layers, pad)

    def width(self, width: int) -> int:
        """Columns :meth:`encode` encodes for histories ``width`` columns wide: the backbone's own
        preparation of no rows tells (e.g. one more for a cloze-trained BERT4Rec's ``[MASK]``)."""
        device = self.backbone.item_embedding.weight.device
        empty = torch.zeros(0, width, dtype=torch.long, device=device)
        _, _, pad = self.backbone.prepared(empty, position_ids(width, self.backbone.max_len).to(device))
        return int(pad.shape[1])

    def extend_slot(self, tokens: torch.Tensor, cache: FoldedCache, step: int) -> torch.Tensor:
        """Run reasoning token ``step`` (1..``cache.slots``) of each row, ``tokens [B, 1, d]``, after the
        encoded columns and tokens ``1..step-1``. The token is written into the cache's room, so one cache
        serves one chain at a time. Returns its hidden state ``[B, 1, d]``."""
        if not 1 <= step <= cache.slots:
            raise ValueError(f"reasoning step {step} needs a reasoning_cache with room for it ({cache.slots})")
        column = cache.width + step - 1
        bias = cache.attn_bias[..., : column + 1]
        x = tokens
        for block, room in zip(self.blocks, cache.rooms, strict=True):
            x = block.extend_slot(x, room, column, bias)
        out: torch.Tensor = self.backbone.final_norm(x)
        return out


def reasoning_cache(parts: Iterable[FoldedPass], rows: int, width: int, slots: int) -> FoldedCache:
    """One folded cache of ``rows`` rows and ``width`` columns with room for ``slots`` reasoning tokens,
    from the folded passes ``parts`` (:meth:`FoldedEncoder.encode`) over consecutive groups of rows, each
    left-padded to ``width`` (the added padding columns hold zeros: they are masked, but ``0 x NaN`` would be
    NaN). Each part is copied in as it comes, so a generator of passes keeps one pass's activations alive at a
    time and the passes reuse the same (cache-hot) memory."""
    rooms: list[torch.Tensor] = []
    hidden: torch.Tensor | None = None
    pad: torch.Tensor | None = None
    start = 0
    for part in parts:
        end, w = start + part.hidden.shape[0], part.width
        if end > rows or w > width:
            raise ValueError(f"a pass of {end - start} rows x {w} columns does not fit a {rows} x {width} cache")
        if hidden is None:
            hidden = part.hidden.new_empty(rows, 1, part.hidden.shape[-1])
            rooms = [h.new_empty(rows, width + slots, h.shape[-1]) for h in part.inputs]
            pad = torch.ones(rows, width, dtype=torch.bool, device=part.hidden.device)
        assert pad is not None
        hidden[start:end] = part.hidden[:, -1:]
        pad[start:end, width - w :] = part.key_padding
        for room, h in zip(rooms, part.inputs, strict=True):
            room[start:end, width - w : width] = h
            room[start:end, : width - w] = 0
        start = end
    if hidden is None or pad is None or start != rows:
        raise ValueError(f"the passes cover {start} rows of the cache's {rows}")
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    bias = torch.where(pad, torch.full((), float("-inf"), dtype=hidden.dtype, device=hidden.device), zero)
    bias = torch.cat([bias, bias.new_zeros(rows, slots)], dim=1)[:, None]
    return FoldedCache(hidden, rooms, pad, bias, slots)


def compact(cache: FoldedCache, keep: torch.Tensor) -> FoldedCache:
    """The rows ``keep`` (a bool mask) of a folded cache, copied out: later reasoning steps of those rows run
    over them alone (halting: rows that stopped are not run further)."""
    return FoldedCache(
        cache.hidden[keep],
        [room[keep] for room in cache.rooms],
        cache.key_padding[keep],
        cache.attn_bias[keep],
        cache.slots,
    )
