"""A sequential recommender: a backbone, a scorer and, optionally, a latent reasoner."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from thinkrec.models.base import Backbone, Encoded, Scorer


class Reasoner(Protocol):
    """Turns an encoded sequence into user states ``[B, K+1, d]`` (step 0 = last hidden state)."""

    steps: int

    def __call__(self, backbone: Backbone, encoded: Encoded, steps: int | None = None) -> torch.Tensor: ...


class SeqRecModel(nn.Module):
    """Backbone + scorer (+ reasoner). Item ids are 1..n_items; logits columns are items 1..n_items."""

    def __init__(self, backbone: Backbone, scorer: Scorer, reasoner: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone: Backbone = backbone
        self.scorer = scorer
        self.reasoner = reasoner

    @property
    def n_items(self) -> int:
        return self.backbone.item_embedding.num_embeddings - 1

    @property
    def reasoning_steps(self) -> int:
        return 0 if self.reasoner is None else int(getattr(self.reasoner, "steps", 0))

    def item_vectors(self) -> torch.Tensor:
        """Output item vectors ``[n_items, d]`` (tied to the input embedding table, padding row dropped)."""
        weight: torch.Tensor = self.backbone.item_embedding.weight
        return weight[1:]

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """User states ``[B, K+1, d]``: the last hidden state followed by ``K`` reasoning steps."""
        if self.reasoner is None or steps == 0:
            return self.backbone(inputs, positions).hidden[:, -1:]
        encoded = self.backbone(inputs, positions, use_cache=True)
        states: torch.Tensor = self.reasoner(self.backbone, encoded, steps)
        return states

    def user_vector(self, states: torch.Tensor, mode: str = "last", step: int | None = None) -> torch.Tensor:
        """Collapse per-step states ``[B, K+1, d]`` to one user vector: last step, mean of steps, or a step."""
        if mode == "last":
            return states[:, -1]
        if mode == "mean":
            return states.mean(dim=1)
        if mode == "step":
            if step is None or not 0 <= step < states.shape[1]:
                raise ValueError(f"step must be in 0..{states.shape[1] - 1}")
            return states[:, step]
        raise ValueError(f"unknown inference mode {mode!r}; use 'last', 'mean' or 'step'")

    def score(self, users: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Logits ``[B, n_items]`` of user vectors ``[B, d]`` against the whole catalogue."""
        logits: torch.Tensor = self.scorer(users, self.item_vectors(), temperature)
        return logits
