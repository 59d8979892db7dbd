"""Inference runners: user states of many histories from a trained model, on the model's device.

A :class:`Runner` is what evaluation (and any other batch inference) calls. :func:`runner_for` picks one:

- :class:`FoldedRunner` on the CPU for a SASRec-family backbone with a
  :class:`~thinkrec.reasoning.reasoner.LatentReasoner`: the item passes keep a folded cache
  (:mod:`thinkrec.inference.folded`) and the reasoning steps run once over all rows of many passes;
- :class:`PlainRunner` everywhere else (another backbone, a plain model, a GPU): the model's own
  :meth:`~thinkrec.models.model.SeqRecModel.encode`, i.e. the backbone's forward pass and ``extend``.

A backbone that implements only the plain contract gets evaluation and reasoning through the plain runner.
Both runners give the same states up to rounding order (tested).
"""

from __future__ import annotations

from typing import Protocol

import torch

from thinkrec.data.batches import position_ids
from thinkrec.inference.folded import FoldedCache, FoldedEncoder, reasoning_cache
from thinkrec.models.model import SeqRecModel
from thinkrec.models.sasrec import SASRec
from thinkrec.reasoning.reasoner import LatentReasoner


class Runner(Protocol):
    """User states of histories, the way a model is run at inference."""

    @property
    def model(self) -> SeqRecModel: ...

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """:meth:`SeqRecModel.encode <thinkrec.models.model.SeqRecModel.encode>`'s states ``[B, K+1, d]``."""
        ...

    def encode_passes(self, inputs: torch.Tensor, rows: int, steps: int | None = None) -> torch.Tensor:
        """:meth:`encode` of many left-padded histories ``inputs [B, W]`` (positions of a ``max_len``-wide
        batch), in passes of ``rows`` rows, each trimmed to its longest row: the item pass streams
        ``rows x W`` activations, so small passes stay in cache."""
        ...


def model_device(model: SeqRecModel) -> torch.device:
    """Where the model's parameters are (what tensors made for it are moved to)."""
    return next(model.parameters()).device


def trimmed(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` without the leading columns that are padding in every row (one column is kept)
    (:func:`~thinkrec.data.batches.trim`, on the tensor's device)."""
    real = (inputs != 0).any(dim=0).nonzero()
    first = int(real[0, 0]) if len(real) else inputs.shape[1] - 1
    return inputs[:, first:]


class PlainRunner:
    """The model's own :meth:`~thinkrec.models.model.SeqRecModel.encode` (forward pass and ``extend``),
    per pass: works for every backbone and device."""

    def __init__(self, model: SeqRecModel) -> None:
        self._model = model

    @property
    def model(self) -> SeqRecModel:
        return self._model

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        return self._model.encode(inputs, positions, steps)

    def encode_passes(self, inputs: torch.Tensor, rows: int, steps: int | None = None) -> torch.Tensor:
        max_len = self._model.backbone.max_len
        states = []
        for start in range(0, inputs.shape[0], rows):
            block = trimmed(inputs[start : start + rows])
            states.append(self.encode(block, position_ids(block.shape[1], max_len).to(block.device), steps))
        return torch.cat(states)


class FoldedRunner(PlainRunner):
    """Reasoning over a folded cache (:mod:`thinkrec.inference.folded`) for a SASRec-family backbone with a
    :class:`~thinkrec.reasoning.reasoner.LatentReasoner`: the item pass keeps every layer's attention inputs
    instead of keys/values, and each reasoning step runs one token per row over them. In
    :meth:`encode_passes` the steps, which add one token per row and so would be dozens of tiny operations
    per pass, run once over all rows, on one cache laid out from the passes. Without reasoning steps it is
    the plain runner (the backbone's last-column pass forms no keys/values either)."""

    def __init__(self, model: SeqRecModel, backbone: SASRec, reasoner: LatentReasoner) -> None:
        super().__init__(model)
        self.backbone = backbone
        self.reasoner = reasoner
        self.encoder = FoldedEncoder(backbone)

    @staticmethod
    def supports(model: SeqRecModel) -> bool:
        return isinstance(model.backbone, SASRec) and isinstance(model.reasoner, LatentReasoner)

    @classmethod
    def from_model(cls, model: SeqRecModel) -> FoldedRunner:
        """The runner of a trained model (:meth:`supports` it)."""
        if not isinstance(model.backbone, SASRec) or not isinstance(model.reasoner, LatentReasoner):
            raise TypeError(
                f"a folded runner needs a SASRec-family backbone and a LatentReasoner, not "
                f"{type(model.backbone).__name__} and {type(model.reasoner).__name__}"
            )
        return cls(model, model.backbone, model.reasoner)

    def encode(self, inputs: torch.Tensor, positions: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        k = self.reasoner.resolve_steps(steps)
        if k == 0:
            return super().encode(inputs, positions, 0)
        part = self.encoder.encode(inputs, positions)
        return self._reason(reasoning_cache([part], part.hidden.shape[0], part.width, k), k)

    def encode_passes(self, inputs: torch.Tensor, rows: int, steps: int | None = None) -> torch.Tensor:
        k = self.reasoner.resolve_steps(steps)
        if k == 0:
            return super().encode_passes(inputs, rows, 0)
        max_len = self.backbone.max_len
        blocks = (trimmed(inputs[start : start + rows]) for start in range(0, inputs.shape[0], rows))
        parts = (self.encoder.encode(b, position_ids(b.shape[1], max_len).to(b.device)) for b in blocks)
        cache = reasoning_cache(parts, inputs.shape[0], self.encoder.width(inputs.shape[1]), k)
        return self._reason(cache, k)

    def _reason(self, cache: FoldedCache, steps: int) -> torch.Tensor:
        """States ``[B, K+1, d]``: the cache's last-column states and ``steps`` reasoning steps over it."""
        return self.reasoner.unroll(
            self.backbone, cache.hidden, lambda token, step: self.encoder.extend_slot(token, cache, step), steps
        )


def runner_for(model: SeqRecModel, device: torch.device | str | None = None) -> Runner:
    """The runner for a trained model on ``device`` (``None`` or ``"auto"``: where its parameters are): the
    folded runner on the CPU where it :meth:`~FoldedRunner.supports` the model (its kernels are chosen for
    CPUs), the plain one elsewhere. The runner does not move the model: ``device`` names where it is."""
    where = model_device(model) if device is None or device == "auto" else torch.device(device)
    if where.type == "cpu" and FoldedRunner.supports(model):
        return FoldedRunner.from_model(model)
    return PlainRunner(model)
