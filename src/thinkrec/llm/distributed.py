"""Data-parallel R²ec training across processes started by ``accelerate launch`` (or ``torchrun``).

The process group is set up by accelerate (``PartialState``) from the launcher's environment: the gloo
backend when the model runs on the CPU, NCCL with one GPU per process (accelerate selects the local GPU)
when it runs on CUDA (``model.device``). This module only decides who does what:

- every process holds a full replica and sees the same global batch of users (same seeded order);
- each process runs the rollouts, rewards and losses of its share of the users (``users[rank::world]``);
- gradients are summed over processes before clipping and the optimiser step, so one step equals the
  single-process step on the whole batch (the RecPO loss is a sum over users);
- evaluation samples are split the same way and their ranks gathered back into the original order;
- only the main process writes files; at the end the replicas' weights are compared, and a divergence is
  an error rather than a silently wrong checkpoint.

With one process (no launcher) every method is a no-op, so the CPU path is unchanged. The rank bookkeeping
(``is_main``, ``distributed``, ``barrier``, ``broadcast_params``) is the engine's
(:class:`thinkrec.distributed.Ranks`); only the launch (accelerate) and the R²ec collectives live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from thinkrec.distributed import Ranks, launched
from thinkrec.errors import ThinkrecError

T = TypeVar("T")


@dataclass(frozen=True)
class Replicas(Ranks):
    """This process's place among ``world`` data-parallel replicas."""

    @classmethod
    def detect(cls, cpu: bool = True) -> Replicas:
        """One replica unless a launcher set ``WORLD_SIZE`` > 1; then join its process group via accelerate
        (``cpu``: the gloo backend for a model on the CPU; else NCCL, each process on its local GPU)."""
        if not launched():
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
        return cls(rank=int(state.process_index), world=int(state.num_processes))

    def shard(self, items: Sequence[T]) -> list[T]:
        """This replica's share: every ``world``-th element starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum every parameter's gradient over the replicas (one flat all-reduce; missing grads count 0)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def gather(self, obj: T) -> list[T]:
        """``obj`` of every replica, in rank order (``[obj]`` with one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def unshard(self, parts: list[list[T]]) -> list[T]:
        """Inverse of :meth:`shard`: interleave the replicas' lists (``parts[r]`` from rank ``r``)."""
        total = sum(len(p) for p in parts)
        out: list[Any] = [None] * total
        for r, part in enumerate(parts):
            out[r :: self.world] = part
        return out

    def check_in_sync(self, params: Sequence[torch.Tensor], atol: float = 1e-5) -> None:
        """Raise if the replicas' weights differ (e.g. a process skipped a step)."""
        if not self.distributed:
            return
        with torch.no_grad():
            sums = [float(p.detach().double().abs().sum()) for p in params]
        every = self.gather(sums)
        worst = max(abs(a - b) for other in every[1:] for a, b in zip(every[0], other, strict=True))
        if worst > atol * max(1.0, max(abs(s) for s in every[0])):
            raise ThinkrecError(f"data-parallel replicas diverged (largest weight-sum difference {worst:.3g})")
