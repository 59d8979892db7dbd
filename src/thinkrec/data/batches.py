"""Vectorised construction of model inputs from a :class:`~thinkrec.data.split.Split`.

All sequences are **left-padded** to a common width so the most recent item is always in the last
column; position ids count backwards from the end (the last item has position ``max_len - 1``), so a
batch can be trimmed to its longest row without changing any row's positions.

Two training sample modes:

- ``all``: classic SASRec, every position of a training sequence predicts the next item. Sequences longer
  than ``max_len + 1`` are cut into windows ending every ``stride`` targets; each target is trained exactly
  once (the windows overlap only as context), so an epoch covers every next-item target of every training
  sequence.
- ``last``: one sample per history prefix with its next item as the only target (what ReaRec trains on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from thinkrec.data.dataset import PAD, IntArray, SequenceDataset
from thinkrec.data.split import EvalSamples, Split

IGNORE = -100


def gather_histories(
    ds: SequenceDataset, users: IntArray, ends: IntArray, max_len: int, keep: np.ndarray | None = None
) -> IntArray:
    """The last ``max_len`` items before index ``ends[i]`` of user ``users[i]``, left-padded with PAD.

    ``keep`` (bool over item ids) optionally removes items from the histories (e.g. items unseen in
    training); the remaining items are packed to the right so the newest stays in the last column.
    """
    cols = np.arange(max_len)
    if keep is not None:
        # Take a wider window, drop unwanted items, then pack right (stable within the row).
        wide = gather_histories(ds, users, ends, max_len * 2)
        drop = (wide == PAD) | ~keep[wide]
        order = np.argsort(~drop, axis=1, kind="stable")  # dropped first, kept in original order after
        packed = np.take_along_axis(np.where(drop, PAD, wide), order, axis=1)
        return packed[:, -max_len:]
    ends = np.asarray(ends, dtype=np.int64)
    starts = ds.offsets[users]
    idx = (starts + ends)[:, None] - max_len + cols[None, :]
    valid = cols[None, :] >= (max_len - np.minimum(ends, max_len))[:, None]
    return np.where(valid, ds.items[np.where(valid, idx, 0)], PAD)


def position_ids(width: int, max_len: int) -> torch.Tensor:
    """Position ids of the last ``width`` columns of a ``max_len``-wide left-padded batch."""
    return torch.arange(max_len - width, max_len)


def trim(inputs: IntArray, *others: IntArray) -> tuple[IntArray, ...]:
    """Drop leading columns that are padding in every row."""
    nonpad = (inputs != PAD).any(axis=0)
    first = int(np.argmax(nonpad)) if nonpad.any() else inputs.shape[1] - 1
    return (inputs[:, first:], *(o[:, first:] for o in others))


@dataclass
class TrainBatch:
    """One training batch. ``targets`` is ``[B, W]`` (``all`` mode, IGNORE where no loss) or ``[B]``."""

    inputs: torch.Tensor  # int64 [B, W], left-padded
    positions: torch.Tensor  # int64 [W]
    targets: torch.Tensor
    mode: Literal["all", "last"]

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device) -> TrainBatch:
        """The batch on ``device`` (itself when it is there already)."""
        if self.inputs.device == device:
            return self
        return TrainBatch(self.inputs.to(device), self.positions.to(device), self.targets.to(device), self.mode)


class TrainSampler:
    """Builds the epoch's training samples once and serves shuffled, length-bucketed batches.

    Samples are fixed per split (built in ``__init__``); only their order changes between epochs, drawn from
    the generator passed to :meth:`batches`. Batches are bucketed by length (sorted within blocks of
    ``bucket_batches`` batches) so little time is spent on padding, then the batch order is shuffled.
    """

    def __init__(
        self,
        split: Split,
        max_len: int,
        mode: Literal["all", "last"] = "all",
        stride: int | None = None,
        bucket_batches: int = 64,
    ) -> None:
        self.split = split
        self.ds = split.dataset
        self.max_len = max_len
        self.mode = mode
        self.stride = stride or max_len
        if not 1 <= self.stride <= max_len:
            raise ValueError("stride must be in [1, max_len]")
        self.bucket_batches = bucket_batches
        if mode == "all":
            self.users, self.ends, self.loss_from = self._windows()
        else:
            self.users, self.ends = self._prefixes()
            self.loss_from = self.ends
        self.lengths = np.minimum(self.ends - (1 if mode == "all" else 0), max_len)

    def _windows(self) -> tuple[IntArray, IntArray, IntArray]:
        """Windows ``(user, end, loss_from)``: targets ``end-max_len .. end-1``, loss on ``>= loss_from``."""
        n = self.split.train_lengths
        users_with = np.flatnonzero(n >= 2)
        n = n[users_with]
        L, s = self.max_len, self.stride
        n_windows = 1 + np.maximum(0, -(-(n - (L + 1)) // s))
        users = np.repeat(users_with, n_windows)
        k = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
        ends = np.repeat(n, n_windows) - k * s
        last = k == np.repeat(n_windows - 1, n_windows)
        loss_from = np.where(last, 1, ends - s)
        return users, ends, loss_from

    def _prefixes(self) -> tuple[IntArray, IntArray]:
        n = self.split.train_lengths
        counts = np.maximum(n - 1, 0)
        users = np.repeat(np.arange(len(n)), counts)
        ends = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        return users, ends

    @property
    def n_samples(self) -> int:
        return len(self.users)

    @property
    def n_targets(self) -> int:
        if self.mode == "last":
            return self.n_samples
        return int((self.ends - np.maximum(self.loss_from, 1)).sum())

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n_samples // batch_size)

    def batch(self, index: IntArray) -> TrainBatch:
        users, ends = self.users[index], self.ends[index]
        if self.mode == "last":
            inputs = gather_histories(self.ds, users, ends, self.max_len)
            (inputs,) = trim(inputs)
            return TrainBatch(
                torch.from_numpy(inputs),
                position_ids(inputs.shape[1], self.max_len),
                torch.from_numpy(self.ds.items[self.ds.offsets[users] + ends]),
                "last",
            )
        inputs = gather_histories(self.ds, users, ends - 1, self.max_len)
        targets = gather_histories(self.ds, users, ends, self.max_len)
        target_index = ends[:, None] - self.max_len + np.arange(self.max_len)[None, :]
        use = (inputs != PAD) & (target_index >= self.loss_from[index][:, None])
        targets = np.where(use, targets, IGNORE)
        inputs, targets = trim(inputs, targets)
        return TrainBatch(
            torch.from_numpy(inputs),
            position_ids(inputs.shape[1], self.max_len),
            torch.from_numpy(targets),
            "all",
        )

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[TrainBatch]:
        order = rng.permutation(self.n_samples)
        block = batch_size * self.bucket_batches
        for start in range(0, len(order), block):
            chunk = order[start : start + block]
            order[start : start + block] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        starts = np.arange(0, len(order), batch_size)
        for start in rng.permutation(starts):
            yield self.batch(order[start : start + batch_size])


def eval_histories(split: Split, samples: EvalSamples, max_len: int) -> IntArray:
    """Left-padded histories of evaluation samples (items unseen in training removed if configured)."""
    return gather_histories(split.dataset, samples.users, samples.positions, max_len, keep=split.history_keep)
