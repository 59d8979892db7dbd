"""The model registry: a config ``kind`` maps to a builder. A new backbone is one file plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field
from torch import nn

from thinkrec.models.base import Backbone, Scorer
from thinkrec.models.model import SeqRecModel
from thinkrec.models.sasrec import SASRec, SASRecConfig

BackboneBuilder = Callable[[int, Any], Backbone]

BACKBONES: dict[str, BackboneBuilder] = {
    "sasrec": SASRec,
}

# Discriminated on ``kind``; extend the union when a backbone is added.
ModelConfig = Annotated[SASRecConfig, Field(discriminator="kind")]


def build_model(cfg: SASRecConfig, n_items: int, reasoner: nn.Module | None = None) -> SeqRecModel:
    """Build the model ``cfg.kind`` names for a catalogue of ``n_items`` items."""
    try:
        builder = BACKBONES[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown model kind {cfg.kind!r}; known: {sorted(BACKBONES)}") from None
    return SeqRecModel(builder(n_items, cfg), Scorer(cfg.scorer, cfg.temperature), reasoner)
