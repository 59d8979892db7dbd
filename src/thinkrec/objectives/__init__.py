"""Training objectives: one module per objective behind :class:`Objective`, chosen by name.

``ce`` (full softmax), ``sampled`` (sampled softmax), ``cloze`` (BERT4Rec), ``erl`` and ``prl`` (ReaRec).
A run picks one through ``train.loss``, ``reasoning.kind`` or ``model.train_objective``; see
:mod:`thinkrec.objectives.registry` to add one.
"""

from thinkrec.objectives.base import LossOutput, Objective, ObjectiveContext
from thinkrec.objectives.registry import (
    build_objective,
    loss_names,
    objective_names,
    register_objective,
    unregister_objective,
)

__all__ = [
    "LossOutput",
    "Objective",
    "ObjectiveContext",
    "build_objective",
    "loss_names",
    "objective_names",
    "register_objective",
    "unregister_objective",
]
