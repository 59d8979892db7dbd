"""Inference runners: user states of many histories from a trained model, on the model's device.

A :class:`Runner` is what evaluation (and any other batch inference) calls. :func:`runner_for` picks one:

- :class:`FoldedRunner` on the CPU for a SASRec-family backbone with a
  :class:`~thinkrec.reasoning.reasoner.LatentReasoner`: the item passes keep a folded cache
  (:mod:`thinkrec.inference.folded`) and the reasoning steps run once over all rows of many passes;
- :class:`PlainRunner` everywhere else (another backbone, a plain model, a GPU): the model's own
  :meth:`~thinkrec.models.model.SeqRecModel.encode`, i.e. the backbone's forward pass and ``extend``.

A backbone that implements only the plain contract gets evaluation and reasoning through the plain runner.
Both runners give the same states up to rounding order (tested).

Halting (:meth:`Runner.encode_halting`): a caller that decides per row, after each step, whether the row
needs another reasoning step (an adaptive-depth selector, :mod:`thinkrec.eval.depth`) passes a :data:`Halt`
callback; the folded runner then runs reasoning step ``k + 1`` only for the rows still running (its cache is
compacted to them), so a row that stopped costs no further step. The plain runner computes every step for
every row (the backbone's own ``extend`` has no per-row cut) and replays the decisions, so its callers see the
same interface and the same decisions. Backbones and reasoners know nothing of halting: the folded runner
does it in the step function it hands the reasoner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from thinkrec.data.batches import position_ids
from thinkrec.inference.folded import FoldedCache, FoldedEncoder, compact, reasoning_cache
from thinkrec.models.model import SeqRecModel
from thinkrec.models.sasrec import SASRec
from thinkrec.reasoning.reasoner import LatentReasoner

# halt(step, rows, states): the rows (indices into the batch) that reached reasoning step ``step`` (0 = the
# backbone's state) and their states r_step [n, d]; returns a bool mask over ``rows`` of those that stop there
# (need no further step), or None for none. Called for every step 0..K; after step K its answer is not read.
Halt = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@dataclass
class Halted:
    """The states of a halting encoding (:meth:`Runner.encode_halting`)."""

    states: torch.Tensor  # [B, K+1, d]; row b's steps after reached[b] are NaN (never computed or not read)
    reached: torch.Tensor  # int64 [B]: the last step each row reached (it stopped there, or K)
    # rows each reasoning step 1..K was computed for (the folded runner: the rows still running; the plain
    # runner: every row)
    step_rows: list[int] = field(default_factory=list)


def replay(states: torch.Tensor, halt: Halt) -> Halted:
    """The decisions of ``halt`` over states ``[B, K+1, d]`` computed for every row (no step is saved)."""
    b, k1 = states.shape[0], states.shape[1]
    active = torch.arange(b, device=states.device)
    reached = torch.full((b,), k1 - 1, dtype=torch.long, device=states.device)
    out = states.clone()
    for k in range(k1):
        stop = halt(k, active, states[active, k]) if len(active) else None
        if k < k1 - 1 and stop is not None and bool(stop.any()):
            reached[active[stop]] = k
            out[active[stop], k + 1 :] = float("nan")
            active = active[~stop]
    return Halted(out, reached, [b] * (k1 - 1))


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

    def encode_halting(self, inputs: torch.Tensor, rows: int, halt: Halt, steps: int | None = None) -> Halted:
        """:meth:`encode_passes` where ``halt`` decides after each step which rows stop: a row that stopped at
        step k gets no step after k (on the folded runner; the plain one computes them and replays)."""
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

    def encode_halting(self, inputs: torch.Tensor, rows: int, halt: Halt, steps: int | None = None) -> Halted:
        return replay(self.encode_passes(inputs, rows, steps), halt)


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

    def encode_halting(self, inputs: torch.Tensor, rows: int, halt: Halt, steps: int | None = None) -> Halted:
        k = self.reasoner.resolve_steps(steps)
        if k == 0:
            return super().encode_halting(inputs, rows, halt, 0)
        max_len = self.backbone.max_len
        blocks = (trimmed(inputs[start : start + rows]) for start in range(0, inputs.shape[0], rows))
        parts = (self.encoder.encode(b, position_ids(b.shape[1], max_len).to(b.device)) for b in blocks)
        cache = reasoning_cache(parts, inputs.shape[0], self.encoder.width(inputs.shape[1]), k)
        b = cache.hidden.shape[0]
        device = cache.hidden.device
        active = torch.arange(b, device=device)
        reached = torch.full((b,), k, dtype=torch.long, device=device)
        step_rows: list[int] = []
        live = cache  # the cache of the active rows only

        def decide(step: int, state: torch.Tensor) -> None:
            """``halt`` on the active rows' states ``[n, d]`` at ``step``; drops the rows that stop."""
            nonlocal active, live
            stop = halt(step, active, state) if len(active) else None
            if step < k and stop is not None and bool(stop.any()):
                reached[active[stop]] = step
                keep = ~stop
                active = active[keep]
                live = compact(live, keep)

        def step(token: torch.Tensor, at: int) -> torch.Tensor:
            out = torch.full_like(token, float("nan"))
            step_rows.append(len(active))
            if len(active):
                state = self.encoder.extend_slot(token[active], live, at)
                out[active] = state
                decide(at, state[:, 0])
            return out

        decide(0, cache.hidden[:, 0])
        states = self.reasoner.unroll(self.backbone, cache.hidden, step, k)
        return Halted(states, reached, step_rows)

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
