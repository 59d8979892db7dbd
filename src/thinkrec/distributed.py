"""Data-parallel engine training across processes started by ``torchrun`` (PyTorch's process groups).

``torchrun --nproc_per_node N -m thinkrec.cli.main train PRESET`` starts N copies of the command with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`join` makes each one a member of the process group
(gloo for CPU training, NCCL for CUDA, one GPU per process: ``cuda:LOCAL_RANK``). Who does what:

- every process holds a full replica, built from the same seed (and copied from rank 0 to be sure);
- every process draws the same epoch order of global batches (``train.batch_size`` samples) and trains on
  its share of each: rows ``rank::world``, so each process's batch holds ``batch_size / world`` samples;
- gradients are summed over processes, each weighted by its number of trained targets, and divided by the
  total, so a step is the single-process step on the whole global batch whenever the objective is a mean
  over targets (every built-in one is; dropout masks and in-batch negatives differ per process);
- rank 0 validates, writes checkpoints, the log and the results; the others wait for it and take its
  decisions (best epoch, early stop) from it.

Without a launcher (``WORLD_SIZE`` unset or 1) :data:`SINGLE` stands for the one process and every helper
is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` data-parallel processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` in every process (any picklable object)."""
        if not self.distributed:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def broadcast_params(self, params: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values into every process (start from identical weights)."""
        if self.distributed:
            with torch.no_grad():
                for p in params:
                    dist.broadcast(p.data, src=0)

    def average_gradients(self, params: Sequence[torch.Tensor], weight: float) -> float:
        """Replace every gradient by the ``weight``-weighted mean over the processes (one flat all-reduce).
        A parameter without a gradient counts as zero, and stays without one when no process has one (so
        the optimiser skips it, as in one process). Returns the total weight (e.g. the global targets)."""
        if not self.distributed:
            return weight
        device = params[0].device
        # a sparse gradient (train.item_updates='touched') travels dense: its untouched rows stay zero
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.to_dense() for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params], device=device)
        flat = torch.cat([*(g.reshape(-1) * weight for g in grads), has, torch.tensor([weight], device=device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        total = float(flat[-1])
        present = flat[-1 - len(params) : -1] > 0
        flat = flat[: -1 - len(params)] / max(total, 1e-12)
        offset = 0
        for p, keep in zip(params, present.tolist(), strict=True):
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone() if keep else None
            offset += n
        return total

    def sum_floats(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Every key's sum over the processes; a key some process lacks counts as 0 there (a process whose
        shares were all empty trained no batch, so it has no loss parts). One gather of the dicts: an
        all-reduce of each process's own keys would mismatch in size when the key sets differ. (``device`` is
        unused: the gather places its buffers on the group's device itself.)"""
        if not self.distributed:
            return values
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, values)
        keys = sorted({key for part in gathered for key in part})
        return {key: sum(float(part.get(key, 0.0)) for part in gathered) for key in keys}


SINGLE = Ranks()


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> Ranks:
    """This process's :class:`Ranks`, joining the launcher's process group (once) when there is one.

    ``device`` is where the model trains: NCCL for CUDA (and this process's GPU becomes
    ``cuda:LOCAL_RANK``), gloo for the CPU."""
    if not launched():
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        # torch.distributed.nn.functional binds the default group into its functions' default arguments when
        # it is first imported, and torch imports it lazily (torch._dynamo does, on the first optimiser). Were
        # it imported after the group exists, it would keep the group alive past destroy_process_group (see
        # leave), and gloo's threads would be torn down at interpreter exit: "terminate called without an
        # active exception" (SIGABRT) now and then. Imported before, its defaults stay None.
        importlib.import_module("torch.distributed.nn.functional")
        # the other processes wait while rank 0 validates a big catalogue: allow hours, not the default 30 min
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def leave() -> None:
    """Leave the process group at the end of a distributed run (every process must call it: it waits for
    all of them first)."""
    if dist.is_initialized():
        dist.barrier()  # no process tears its connections down while another still uses them
        dist.destroy_process_group()
