"""Train / validation / test splits that never leak a target into training.

Both protocols keep, for every user, a *prefix* of the chronological sequence as training data, and turn
later interactions into evaluation samples ``(user, position)``: the target is ``sequence[position]`` and
the history is everything before it (``sequence[:position]``), truncated to the model's maximum length
when batches are built.

- **Leave-one-out** (``kind = "loo"``): the last item is the test target, the second-to-last the
  validation target, the rest is training. Users with fewer than 3 interactions are training-only.
- **Global time** (``kind = "time"``): two cut points ``t_valid <= t_test``. Interactions before
  ``t_valid`` are training; every interaction in ``[t_valid, t_test)`` is a validation sample and every one
  at or after ``t_test`` a test sample, each with all of the user's earlier items (training, validation and
  earlier test items) as history. Cut points are absolute timestamps or quantiles of the time span (the
  ReaRec authors' 80% / 90%). Samples whose target never occurs in training are dropped, and so are samples
  with no history; both counts are reported in the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from thinkrec.data.dataset import IntArray, SequenceDataset
from thinkrec.errors import ConfigError

Window = Literal["valid", "test"]


class SplitConfig(BaseModel):
    """How interactions are divided into training, validation and test."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["loo", "time"] = Field("loo", description="leave-one-out ('loo') or global time ('time')")
    valid_cut: float | None = Field(
        None, description="time split: start of the validation window (quantile in [0,1] or timestamp)"
    )
    test_cut: float | None = Field(
        None, description="time split: start of the test window (quantile in [0,1] or timestamp)"
    )
    cut_unit: Literal["quantile", "timestamp", "interactions"] = Field(
        "quantile",
        description=(
            "time split: whether cuts are fractions of the time span ('quantile'), timestamps, or fractions of"
            " the interactions in time order ('interactions': 0.8 = the time before which 80% of all"
            " interactions happened, an 80/10/10 split as in the Amazon Reviews 2023 benchmark ReaRec uses)"
        ),
    )
    drop_unseen_history: bool = Field(
        True, description="time split: remove items never seen in training from evaluation histories"
    )

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.kind == "time":
            if self.valid_cut is None or self.test_cut is None:
                raise ValueError("a time split needs split.valid_cut and split.test_cut (e.g. 0.8 and 0.9)")
            if self.valid_cut > self.test_cut:
                raise ValueError("split.valid_cut must not be after split.test_cut")
            if self.cut_unit != "timestamp" and not (0.0 <= self.valid_cut <= self.test_cut <= 1.0):
                raise ValueError("quantile cuts must lie in [0, 1]")
        return self


@dataclass(frozen=True)
class EvalSamples:
    """Evaluation samples: the target of sample ``i`` is item ``positions[i]`` of user ``users[i]``."""

    users: IntArray
    positions: IntArray
    targets: IntArray

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, index: IntArray | slice) -> EvalSamples:
        return EvalSamples(self.users[index], self.positions[index], self.targets[index])


@dataclass(frozen=True)
class Split:
    """A dataset divided into a training prefix per user and validation / test samples."""

    dataset: SequenceDataset
    train_lengths: IntArray
    valid: EvalSamples
    test: EvalSamples
    known_items: np.ndarray  # bool[n_items + 1]; True for items seen in training (index 0 = padding)
    protocol: dict[str, Any]
    history_keep: np.ndarray | None = None  # bool[n_items + 1]; items allowed in evaluation histories
    # time split: each window's samples whose target never occurs in training (with a history). They are
    # not in ``valid`` / ``test`` (an ID model cannot rank them); cold-start analyses score them apart.
    unseen_targets: dict[Window, EvalSamples] = field(default_factory=dict)

    @property
    def n_train_interactions(self) -> int:
        return int(self.train_lengths.sum())

    def samples(self, which: Window) -> EvalSamples:
        return self.valid if which == "valid" else self.test

    def item_counts(self) -> IntArray:
        """How often every item (0-based column, ``[n_items]``) occurs in the users' training prefixes: what
        popularity baselines, popularity negatives and their log-Q corrections read."""
        return train_item_counts(self.dataset, self.train_lengths)


def train_item_counts(ds: SequenceDataset, train_lengths: IntArray) -> IntArray:
    """Interactions per item (0-based column, ``[n_items]``) in the users' first ``train_lengths`` items."""
    # +1 where a user's training prefix starts, -1 where it ends: the running sum marks training rows (one
    # byte a row, for logs of tens of millions of rows)
    edges = np.zeros(len(ds.items) + 1, dtype=np.int8)
    np.add.at(edges, ds.offsets[:-1], 1)
    np.add.at(edges, ds.offsets[:-1] + train_lengths, -1)
    in_train = np.cumsum(edges[:-1], dtype=np.int8).astype(bool)
    return np.bincount(ds.items[in_train] - 1, minlength=ds.n_items).astype(np.int64)


def _known_items(ds: SequenceDataset, train_lengths: IntArray) -> np.ndarray:
    """Items that occur in some user's training prefix (``[n_items + 1]``, index 0 = padding)."""
    known = np.zeros(ds.n_items + 1, dtype=bool)
    known[1:] = train_item_counts(ds, train_lengths) > 0
    return known


def _samples_from_mask(ds: SequenceDataset, mask: np.ndarray) -> EvalSamples:
    index = np.flatnonzero(mask)
    users = ds.user_index[index]
    positions = index - ds.offsets[users]
    return EvalSamples(users=users, positions=positions, targets=ds.items[index])


def leave_one_out(ds: SequenceDataset) -> Split:
    lengths = ds.lengths
    has_eval = lengths >= 3
    train_lengths = np.where(has_eval, lengths - 2, lengths)
    users = np.flatnonzero(has_eval)
    valid_pos = lengths[users] - 2
    test_pos = lengths[users] - 1
    valid = EvalSamples(users, valid_pos, ds.items[ds.offsets[users] + valid_pos])
    test = EvalSamples(users, test_pos, ds.items[ds.offsets[users] + test_pos])
    protocol = {
        "split": "leave-one-out",
        "valid": "second-to-last item of each user with >= 3 interactions",
        "test": "last item of each user with >= 3 interactions (history includes the validation item)",
        "training_only_users": int((~has_eval).sum()),
        "n_valid": len(valid),
        "n_test": len(test),
    }
    return Split(ds, train_lengths, valid, test, _known_items(ds, train_lengths), protocol)


def time_cut_points(ds: SequenceDataset, cfg: SplitConfig) -> tuple[int, int]:
    assert cfg.valid_cut is not None and cfg.test_cut is not None
    if cfg.cut_unit == "timestamp":
        return int(cfg.valid_cut), int(cfg.test_cut)
    if cfg.cut_unit == "interactions":
        cuts = np.quantile(ds.timestamps, [cfg.valid_cut, cfg.test_cut], method="higher")
        return int(cuts[0]), int(cuts[1])
    t_min, t_max = int(ds.timestamps.min()), int(ds.timestamps.max())
    span = t_max - t_min
    return t_min + round(cfg.valid_cut * span), t_min + round(cfg.test_cut * span)


def global_time(ds: SequenceDataset, cfg: SplitConfig) -> Split:
    t_valid, t_test = time_cut_points(ds, cfg)
    ts = ds.timestamps
    starts = np.repeat(ds.offsets[:-1], ds.lengths)
    pos_in_user = np.arange(ds.n_interactions) - starts
    # Sequences are chronological, so "before t_valid" is a prefix of every user's sequence.
    train_lengths = np.bincount(ds.user_index[ts < t_valid], minlength=ds.n_users).astype(np.int64)
    known = _known_items(ds, train_lengths)
    base: dict[Window, np.ndarray] = {"valid": (ts >= t_valid) & (ts < t_test), "test": ts >= t_test}
    counts: dict[str, Any] = {}
    samples: dict[str, EvalSamples] = {}
    unseen_targets: dict[Window, EvalSamples] = {}
    for which, in_window in base.items():
        unseen = in_window & ~known[ds.items]
        no_history = in_window & (pos_in_user == 0)
        keep = in_window & ~unseen & ~no_history
        samples[which] = _samples_from_mask(ds, keep)
        unseen_targets[which] = _samples_from_mask(ds, unseen & ~no_history)
        counts[which] = {
            "in_window": int(in_window.sum()),
            "dropped_unseen_target": int(unseen.sum()),
            "dropped_no_history": int((no_history & ~unseen).sum()),
            "kept": int(keep.sum()),
        }
    if len(samples["test"]) == 0 or len(samples["valid"]) == 0:
        raise ConfigError(
            f"the time split ({cfg.valid_cut}, {cfg.test_cut} as {cfg.cut_unit}) leaves no "
            f"{'test' if len(samples['test']) == 0 else 'validation'} samples; move the cut points"
        )
    protocol = {
        "split": "global-time",
        "cut_unit": cfg.cut_unit,
        "valid_cut": cfg.valid_cut,
        "test_cut": cfg.test_cut,
        "t_valid": t_valid,
        "t_test": t_test,
        "history": "all of the user's earlier interactions"
        + (" (items unseen in training removed)" if cfg.drop_unseen_history else ""),
        "samples": counts,
        "n_valid": len(samples["valid"]),
        "n_test": len(samples["test"]),
    }
    keep = known if cfg.drop_unseen_history else None
    return Split(ds, train_lengths, samples["valid"], samples["test"], known, protocol, keep, unseen_targets)


def make_split(ds: SequenceDataset, cfg: SplitConfig) -> Split:
    """Split ``ds`` as ``cfg`` says."""
    if cfg.kind == "loo":
        return leave_one_out(ds)
    return global_time(ds, cfg)
