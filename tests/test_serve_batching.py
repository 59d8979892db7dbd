"""Micro-batching: concurrent requests share model passes and get exactly their one-at-a-time answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from test_serve_common import make_run
from thinkrec.serve.batching import Answer, MicroBatcher, Query
from thinkrec.serve.recommender import Recommender, TopK


class Slow:
    """Wraps a recommender; every pass sleeps so that concurrent requests pile up behind it."""

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.vocabulary = inner.vocabulary
        self.max_len = inner.max_len
        self.reasoning_steps = inner.reasoning_steps
        self.max_reasoning_steps = inner.max_reasoning_steps
        self.batch_sizes: list[int] = []

    def describe(self) -> dict[str, object]:
        return self.inner.describe()

    def search(self, query: str, limit: int = 20) -> list[int]:
        return self.inner.search(query, limit)

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        steps: int | None = None,
        exclude_seen: bool = False,
        per_step: bool = True,
    ) -> TopK:
        self.batch_sizes.append(len(histories))
        time.sleep(0.05)
        return self.inner.recommend(histories, k, steps, exclude_seen, per_step)


@pytest.mark.parametrize("reasoning", [None, "prl"])
def test_concurrent_requests_share_passes_and_get_their_own_answers(tmp_path: Path, reasoning: str | None) -> None:
    rec = Recommender.from_run(make_run(tmp_path / "run", reasoning))
    slow = Slow(rec)
    batcher = MicroBatcher(slow)
    queries = [
        Query([1 + (i * 7) % 50, 2 + i % 40, 3 + (i * 3) % 30], k=3 + i % 5, steps=None, exclude_seen=i % 3 == 0)
        for i in range(24)
    ]
    answers: dict[int, object] = {}

    def ask(i: int) -> None:
        answers[i] = batcher.submit(queries[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == len(queries)
    assert max(slow.batch_sizes) > 1 and batcher.passes < len(queries)  # batching happened
    assert batcher.answered == len(queries)
    for i, q in enumerate(queries):
        alone = rec.recommend([q.history], q.k, q.steps, q.exclude_seen)
        got = answers[i]
        assert isinstance(got, Answer)
        assert [item for item, _ in got.items] == [item for item, _ in alone.row(0)]
        assert [s for _, s in got.items] == pytest.approx([s for _, s in alone.row(0)], rel=1e-5, abs=1e-5)
        assert [[i for i, _ in row] for row in got.steps] == [[i for i, _ in row] for row in alone.step_rows(0)]
        assert len(got.steps) == (3 if reasoning else 0)


def test_a_failing_request_does_not_fail_its_neighbours(tmp_path: Path) -> None:
    rec = Recommender.from_run(make_run(tmp_path / "run"))
    slow = Slow(rec)
    batcher = MicroBatcher(slow)
    results: dict[int, object] = {}

    def ask(i: int, history: list[int]) -> None:
        try:
            results[i] = batcher.submit(Query(history, 5, None, False))
        except ValueError as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i, [999] if i == 3 else [1, 2 + i])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert isinstance(results[3], ValueError) and "outside" in str(results[3])
    assert all(not isinstance(results[i], Exception) for i in range(8) if i != 3)
    assert not batcher._busy and not batcher._waiting  # idle again, nobody left behind
