"""Row-parallel inference: the same numbers as one worker, the caller's modes in every worker, threads restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from thinkrec.data.split import leave_one_out
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.parallel import SERIAL, Rows, resolve_workers, row_workers, worker_pool
from thinkrec.reasoning.reasoner import LatentReasoner

from helpers import random_dataset


def _model(n_items: int, steps: int) -> SeqRecModel:
    torch.manual_seed(3)
    model = build_model(SASRecConfig(hidden=16, layers=2, heads=2, max_len=12), n_items)
    with torch.no_grad():  # weights large enough that ranks spread out
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name:
                p.normal_(0.0, 0.3)
    if steps:
        model.reasoner = LatentReasoner(16, steps)
        with torch.no_grad():
            model.reasoner.rpe.normal_(0.0, 1.0)
    return model


def test_a_runner_with_several_workers_needs_a_pool_and_one_worker_changes_nothing() -> None:
    with pytest.raises(ValueError, match="thread pool"):
        Rows(2)
    before = torch.get_num_threads()
    with row_workers(1) as rows:
        assert rows is SERIAL and torch.get_num_threads() == before
        assert rows.map(lambda i: threading.current_thread() is threading.main_thread(), [1, 2]) == [True, True]


def test_workers_map_in_order_with_the_callers_modes_and_threads_are_restored() -> None:
    before = torch.get_num_threads()
    seen: list[tuple[bool, bool, int, threading.Thread]] = []
    lock = threading.Lock()

    def probe(i: int) -> int:
        with lock:
            grad, autocast = torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")
            seen.append((grad, autocast, torch.get_num_threads(), threading.current_thread()))
        return i * i

    with row_workers(2) as rows, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert rows.map(probe, range(6)) == [0, 1, 4, 9, 16, 25]
    assert torch.get_num_threads() == before
    assert len(seen) == 6
    assert all(not grad and autocast and threads == 1 for grad, autocast, threads, _ in seen)
    assert all(thread.name.startswith("thinkrec-rows") for *_, thread in seen)  # not in the caller's thread
    both = threading.Barrier(2, timeout=10)

    def meet(_: int) -> threading.Thread:  # holds its thread until the other arrives: two threads exist now
        both.wait()
        return threading.current_thread()

    with row_workers(2) as rows:
        first_threads = set(rows.map(meet, range(2)))
    assert len(first_threads) == 2
    with row_workers(2) as rows:  # grad mode follows the caller (here: enabled)
        seen.clear()
        rows.map(probe, range(6))
        assert all(grad and not autocast for grad, autocast, *_ in seen)
    # the same worker threads serve the next runner, and still run torch on one thread each
    assert {thread for *_, thread in seen} <= first_threads
    assert all(threads == 1 for _, _, threads, _ in seen)
    assert resolve_workers(0) == torch.get_num_threads() and resolve_workers(1) == 1


def test_worker_pools_are_kept_per_count_and_made_again_after_a_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = worker_pool(2)
    assert worker_pool(2) is pool and worker_pool(3) is not pool
    monkeypatch.setattr("thinkrec.parallel.os.getpid", lambda: -1)  # as in a forked child
    child = worker_pool(2)
    assert child is not pool and worker_pool(2) is child
    child.shutdown(wait=False)


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("chunk", [40, 10])
def test_evaluation_with_several_workers_gives_the_ranks_of_one(steps: int, chunk: int) -> None:
    ds = random_dataset(n_users=90, n_items=60, seed=11)
    split = leave_one_out(ds)
    model = _model(ds.n_items, steps)
    # passes of 3-4 rows of different widths, history masked; chunks of 40 samples: each chunk is cut into
    # pieces of whole passes; of 10 (more chunks than twice the workers): the workers take whole chunks
    cfg = dict(batch_size=chunk, encode_tokens=40, mask_history=True)
    one = evaluate(model, split, split.test, EvalConfig(workers=1, **cfg))
    many = evaluate(model, split, split.test, EvalConfig(workers=3, **cfg))
    np.testing.assert_array_equal(one.step_ranks, many.step_ranks)
    if steps:
        assert one.mean_ranks is not None and many.mean_ranks is not None
        np.testing.assert_array_equal(one.mean_ranks, many.mean_ranks)
    assert len(np.unique(one.ranks)) > 10  # the ranks are spread: a wrong row order would show
