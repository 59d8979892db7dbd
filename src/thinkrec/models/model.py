"""A sequential recommender: a backbone, a scorer and, optionally, a latent reasoner."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from thinkrec.errors import ThinkrecError
from thinkrec.models.base import Backbone, CachedBackbone, ComputedItems, Encoded, Scorer


class Reasoner(Protocol):
    """Turns an encoded sequence into user states ``[B, K+1, d]`` (step 0 = last hidden state).

    ``steps`` is the K used by default, ``max_steps`` the largest K it can run.
    """

    @property
    def steps(self) -> int: ...
    @property
    def max_steps(self) -> int: ...

    def __call__(self, backbone: CachedBackbone, encoded: Encoded, steps: int | None = None) -> torch.Tensor: ...


class SeqRecModel(nn.Module):
    """Backbone + scorer (+ reasoner). Item ids are 1..n_items; logits columns are items 1..n_items."""

    def __init__(self, backbone: Backbone, scorer: Scorer, reasoner: Reasoner | None = None) -> None:
        super().__init__()
        if reasoner is not None and not isinstance(backbone, CachedBackbone):
            raise TypeError(f"{type(backbone).__name__} has no key/value cache (extend); it cannot reason")
        self.backbone: Backbone = backbone
        self.scorer = scorer
        self.reasoner: Reasoner | None = reasoner

    @property
    def n_items(self) -> int:
        return self.backbone.item_embedding.num_embeddings - 1

    @property
    def reasoning_steps(self) -> int:
        return 0 if self.reasoner is None else self.reasoner.steps

    @property
    def cached_backbone(self) -> CachedBackbone:
        """The backbone as a :class:`CachedBackbone` (what reasoning needs)."""
        if not isinstance(self.backbone, CachedBackbone):
            raise TypeError(f"{type(self.backbone).__name__} has no key/value cache (extend)")
        return self.backbone

    def item_vectors(self) -> torch.Tensor:
        """Output item vectors ``[n_items, d]`` (tied to the input embedding table, a separate output table, or the
        backbone's computed :class:`ComputedItems` table; padding row dropped)."""
        if isinstance(self.backbone, ComputedItems):
            return self.backbone.item_table()[1:]
        output = getattr(self.backbone, "output_embedding", None)  # SASRec with tie_embeddings=false
        if isinstance(output, nn.Embedding):
            untied: torch.Tensor = output.weight[1:]
            return untied
        weight: torch.Tensor = self.backbone.item_embedding.weight
        return weight[1:]

    def item_rows(self, columns: torch.Tensor) -> torch.Tensor:
        """Output vectors of the items at 0-based ``columns`` (any shape ``S``): ``[*S, d]``, equal to
        ``item_vectors()[columns]``. After :meth:`sparse_item_gradients` an id table is read by a lookup
        whose gradient is sparse (only these rows), instead of through the whole table, unless the lookup
        reads more rows than the table holds (per-target negatives on a small catalogue): a sparse gradient
        of that many rows costs more than the dense one (either way the optimiser updates only non-zero rows)."""
        if not isinstance(self.backbone, ComputedItems):
            output = getattr(self.backbone, "output_embedding", None)
            table = output if isinstance(output, nn.Embedding) else self.backbone.item_embedding
            if table.sparse and columns.numel() < table.num_embeddings:
                return F.embedding(columns + 1, table.weight, sparse=True)
        return self.item_vectors()[columns]

    def sparse_item_gradients(self, enabled: bool = True) -> list[torch.Tensor]:
        """Make the item-id tables (input, and output when untied) produce sparse gradients, so that an
        optimiser can update only the rows a batch touched; returns those tables' weights (none when the
        backbone has no trainable id table). A speed setting of training only: outputs are unchanged."""
        tables = [
            module
            for module in (self.backbone.item_embedding, getattr(self.backbone, "output_embedding", None))
            if isinstance(module, nn.Embedding) and module.weight.numel() and module.weight.requires_grad
        ]
        for module in tables:
            module.sparse = enabled  # item_rows reads the flag too
        return [module.weight for module in tables]

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """User states ``[B, K+1, d]``: the last hidden state followed by ``K`` reasoning steps
        (``steps`` overrides the reasoner's K; plain models only allow ``K = 0``). The plain path, through
        the backbone's forward pass and ``extend``; :mod:`thinkrec.inference` runs faster ones at inference."""
        if self.reasoner is None and steps:
            raise ThinkrecError(f"this model has no reasoner; it cannot reason for {steps} steps")
        if self.reasoner is None or steps == 0:
            # Only the newest column's state is needed: the final block computes it alone, without keys/values.
            return self.backbone(inputs, positions, last_only=True).hidden[:, -1:]
        backbone = self.cached_backbone
        return self.reasoner(backbone, backbone(inputs, positions, use_cache=True, last_only=True), steps)

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
