"""Objectives by name. Adding one = its module plus one line in :data:`BUILTIN`, or
:func:`register_objective` from user code (e.g. a test or a plug-in) before the run is built."""

from __future__ import annotations

from collections.abc import Callable

from thinkrec.errors import ConfigError
from thinkrec.objectives.base import Objective, ObjectiveContext
from thinkrec.objectives.cloze import ClozeObjective
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.objectives.erl import EnsembleReasoningLoss
from thinkrec.objectives.prl import ProgressiveReasoningLoss
from thinkrec.objectives.sampled import SampledSoftmax

ObjectiveFactory = Callable[[ObjectiveContext], Objective]

BUILTIN: dict[str, ObjectiveFactory] = {
    "ce": CrossEntropy.from_context,
    "sampled": SampledSoftmax.from_context,
    "cloze": ClozeObjective.from_context,
    "erl": EnsembleReasoningLoss.from_context,
    "prl": ProgressiveReasoningLoss.from_context,
}
# Chosen by another setting than train.loss: reasoning.kind (erl, prl) or model.train_objective (cloze).
SELECTED_ELSEWHERE = {"erl": "reasoning.kind=erl", "prl": "reasoning.kind=prl", "cloze": "model.train_objective=cloze"}

_registry: dict[str, ObjectiveFactory] = dict(BUILTIN)


def register_objective(name: str, factory: ObjectiveFactory, *, replace: bool = False) -> None:
    """Make ``train.loss = name`` build its objective with ``factory(context)``."""
    if name in _registry and not replace:
        raise ValueError(f"an objective named {name!r} is registered already (pass replace=True to replace it)")
    _registry[name] = factory


def unregister_objective(name: str) -> None:
    """Remove a registered objective (the built-in ones cannot be removed)."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in objective")
    _registry.pop(name, None)


def objective_names() -> list[str]:
    return sorted(_registry)


def loss_names() -> list[str]:
    """The names ``train.loss`` accepts (the others are chosen through :data:`SELECTED_ELSEWHERE`)."""
    return [name for name in objective_names() if name not in SELECTED_ELSEWHERE]


def build_objective(name: str, ctx: ObjectiveContext) -> Objective:
    try:
        factory = _registry[name]
    except KeyError:
        raise ConfigError(f"no objective named {name!r}; registered: {', '.join(objective_names())}") from None
    return factory(ctx)
