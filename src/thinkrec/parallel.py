"""Row-parallel inference: independent pieces of rows run concurrently, one intra-op thread each.

torch parallelises each operation over its intra-op threads, which pays for large products but not for the
many small operations of a 64-wide SASRec pass (a LayerNorm or a softmax of a few hundred kilobytes, tiny
batched products), nor for the Python between operations, so a second thread speeds an evaluation up far
less than twofold. A :class:`Rows` runner instead hands independent pieces of rows to as many
Python threads as torch has intra-op threads, and lets every operation run on one thread; torch releases the
GIL inside its kernels, so the threads overlap. Moving torch between one thread and several costs time of
its own, so :func:`row_workers` keeps it on one thread for as long as the runner is open. The worker threads
are made once per process (and number of workers) and kept: a new thread's first torch operation sets up
that thread's state, a cost worth avoiding on every evaluation. A thread takes torch's thread count when
it first runs an operation, inside a runner, so the kept workers stay on one thread each.

The evaluator (:func:`~thinkrec.eval.evaluator.evaluate`) uses workers on the CPU only (a GPU spreads
each operation over all rows itself). It hands out (:meth:`Rows.waves`) whole chunks of samples when there
are at least two per worker, else pieces of a chunk cut at its encoder-pass boundaries that keep the
chunk's width. Either way every pass, and every reasoning cache's width, is the one a serial run uses, and
every operation treats rows independently, so results do not depend on the number of workers
(``tests/test_parallel.py``). Each worker runs with the caller's gradient and (CPU) autocast mode (both are
thread-local in torch).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


class Rows:
    """Maps a function over independent pieces of rows: in order, on ``workers`` threads (1 = here).

    Made by :func:`row_workers`, which runs torch on one thread per operation while it is open."""

    def __init__(self, workers: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        if workers > 1 and pool is None:
            raise ValueError("a Rows runner with several workers needs a thread pool (use row_workers)")
        self.workers = max(1, workers)
        self._pool = pool

    def map(self, fn: Callable[[T], R], pieces: Sequence[T]) -> list[R]:
        """``[fn(p) for p in pieces]``, the pieces run concurrently when there are several workers."""
        if self._pool is None or self.workers == 1 or len(pieces) < 2:
            return [fn(p) for p in pieces]
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")

        def call(piece: T) -> R:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype, enabled=autocast):
                return fn(piece)

        return list(self._pool.map(call, pieces))

    def waves(self, fn: Callable[[T], object], pieces: Iterable[T], size: int) -> None:
        """``fn`` over every piece, in waves of ``size`` pieces (one :meth:`map` each): the pieces are drawn
        from ``pieces`` one wave at a time, so a lazy stream keeps only a wave's pieces alive."""
        stream = iter(pieces)
        for wave in iter(lambda: list(islice(stream, size)), []):
            self.map(fn, wave)


SERIAL = Rows(1)


def resolve_workers(workers: int) -> int:
    """``0`` = one worker per intra-op thread torch uses (``torch.get_num_threads()``)."""
    return torch.get_num_threads() if workers <= 0 else workers


_pools: dict[int, tuple[int, ThreadPoolExecutor]] = {}
_pools_lock = threading.Lock()


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of ``workers`` threads, made on first use and kept (made again in a child process
    after a fork, which inherits none of the parent's threads)."""
    pid = os.getpid()
    with _pools_lock:
        held = _pools.get(workers)
        if held is None or held[0] != pid:
            held = (pid, ThreadPoolExecutor(workers, thread_name_prefix=f"thinkrec-rows{workers}"))
            _pools[workers] = held
        return held[1]


@contextmanager
def row_workers(workers: int) -> Iterator[Rows]:
    """A :class:`Rows` runner with ``workers`` threads (:func:`worker_pool`), while torch runs each operation
    on one thread (its intra-op thread count is restored afterwards). With one worker nothing changes."""
    if workers <= 1:
        yield SERIAL
        return
    pool = worker_pool(workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Rows(workers, pool)
    finally:
        torch.set_num_threads(threads)
