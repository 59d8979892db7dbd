"""Micro-batching of concurrent requests: one model pass answers every request that waited for the last one.

The HTTP endpoints run in the server's thread pool. A request thread calls :meth:`MicroBatcher.submit`; if no
pass is running it becomes the *leader*: it takes every waiting request (up to ``max_batch``), groups them by
what must be equal within one pass (reasoning steps, exclude-seen, depth selector), runs one
:meth:`Recommender.recommend` per group with the largest ``k`` of the group, and hands each request its rows.
Requests that arrive during a pass wait for the next one. The leader keeps leading only until its own request
is answered; then the oldest waiting request takes over, so no thread serves others for long. With a single
client there is never anything to batch and a request costs what it did without the batcher.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from thinkrec.serve.recommender import Recommends, TopK


@dataclass
class Query:
    """One request: a history of internal ids and its options."""

    history: Sequence[int]
    k: int
    steps: int | None
    exclude_seen: bool
    times: Sequence[int] | None = None  # item times then "now", for models whose prompts show them
    depth: str | None = None  # a depth selector name (None: the recommender's default)


@dataclass
class Answer:
    """One request's rows of a batched pass."""

    items: list[tuple[int, float]]
    steps: list[list[tuple[int, float]]]
    text: str | None
    depth: str | None = None  # the depth selector that chose the step
    steps_used: int | None = None  # reasoning steps its choice needed
    step_weights: list[float] | None = None  # the chosen step weights (one-hot: one step)


@dataclass
class _Slot:
    query: Query
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # set (with ``done``) when this waiting request must lead the next pass
    answer: Answer | None = None
    error: Exception | None = None


class MicroBatcher:
    """Batches concurrent :class:`Query` objects into shared model passes (see the module docstring)."""

    def __init__(self, recommender: Recommends, max_batch: int = 64) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._busy = False
        self.passes = 0  # model passes run (for tests and logs)
        self.answered = 0

    def submit(self, query: Query) -> Answer:
        """Answer ``query``, sharing a model pass with concurrent queries; raises what the model raised."""
        slot = _Slot(query)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._busy
            self._busy = True
        while True:
            if not lead:
                slot.done.wait()
                if not slot.lead:
                    break
                slot.done.clear()
                slot.lead = False
            self._run_one_pass()
            if slot.answer is not None or slot.error is not None:
                self._hand_over()
                break
            lead = True
        if slot.error is not None:
            raise slot.error
        assert slot.answer is not None
        return slot.answer

    def _hand_over(self) -> None:
        """After the leader's own answer: let the oldest waiting request lead, or mark the batcher idle."""
        with self._lock:
            if self._waiting:
                nxt = self._waiting[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._busy = False

    def _run_one_pass(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        groups: dict[tuple[int | None, bool, bool, str | None], list[_Slot]] = {}
        for slot in batch:
            q = slot.query
            groups.setdefault((q.steps, q.exclude_seen, q.times is not None, q.depth), []).append(slot)
        for (steps, exclude, timed, depth), slots in groups.items():
            try:
                top = _recommend(
                    self.recommender,
                    [s.query.history for s in slots],
                    max(s.query.k for s in slots),
                    steps,
                    exclude,
                    [s.query.times or [] for s in slots] if timed else None,
                    depth,
                )
            except Exception as exc:  # a bad request must not fail its neighbours
                if len(slots) == 1:
                    slots[0].error = exc
                else:  # find out whose request it was: answer them one by one
                    for s in slots:
                        self._answer_alone(s)
                continue
            for row, s in enumerate(slots):
                s.answer = _rows(top, row, s.query.k)
        with self._lock:
            self.passes += 1
            self.answered += len(batch)
        for slot in batch:
            slot.done.set()

    def _answer_alone(self, slot: _Slot) -> None:
        q = slot.query
        try:
            times = [q.times] if q.times is not None else None
            top = _recommend(self.recommender, [q.history], q.k, q.steps, q.exclude_seen, times, q.depth)
            slot.answer = _rows(top, 0, q.k)
        except Exception as exc:
            slot.error = exc


def _recommend(
    rec: Recommends,
    histories: Sequence[Sequence[int]],
    k: int,
    steps: int | None,
    exclude_seen: bool,
    times: Sequence[Sequence[int]] | None,
    depth: str | None = None,
) -> TopK:
    # times and depth only when given: a recommender that does not use them need not take the arguments
    options: dict[str, Any] = {}
    if times is not None:
        options["times"] = times
    if depth is not None:
        options["depth"] = depth
    return rec.recommend(histories, k, steps, exclude_seen, **options)


def _rows(top: TopK, row: int, k: int) -> Answer:
    return Answer(
        items=top.row(row)[:k],
        steps=[s[:k] for s in top.step_rows(row)],
        text=top.texts[row] if top.texts else None,
        depth=top.depth,
        steps_used=None if top.steps_used is None else int(top.steps_used[row]),
        step_weights=None if top.step_weights is None else [float(w) for w in top.step_weights[row]],
    )
