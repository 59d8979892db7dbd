"""The model registry: a config ``kind`` maps to a builder. A new backbone is one file plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from thinkrec.models.base import Backbone, Scorer
from thinkrec.models.bert4rec import BERT4Rec, BERT4RecConfig
from thinkrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from thinkrec.models.model import Reasoner, SeqRecModel
from thinkrec.models.pop import PopConfig, Popularity
from thinkrec.models.sasrec import SASRec, SASRecConfig
from thinkrec.models.text_items import MoRecConfig, TextSASRec, UniSRecConfig

BackboneBuilder = Callable[[int, Any], Backbone]

BACKBONES: dict[str, BackboneBuilder] = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
    "unisrec": TextSASRec,
    "morec": TextSASRec,
    "pop": Popularity,
}

# Discriminated on ``kind``; extend the union when a backbone is added.
ModelConfig = Annotated[
    SASRecConfig | BERT4RecConfig | GRU4RecConfig | UniSRecConfig | MoRecConfig | PopConfig, Field(discriminator="kind")
]


def build_model(cfg: ModelConfig, n_items: int, reasoner: Reasoner | None = None) -> SeqRecModel:
    """Build the model ``cfg.kind`` names for a catalogue of ``n_items`` items."""
    try:
        builder = BACKBONES[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown model kind {cfg.kind!r}; known: {sorted(BACKBONES)}") from None
    return SeqRecModel(builder(n_items, cfg), Scorer(cfg.scorer, cfg.temperature), reasoner)
