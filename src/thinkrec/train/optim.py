"""The optimiser of a run, and Adam that updates only the item-table rows a step touched.

With sampled negatives a batch reads a few thousand rows of the item table, yet plain Adam materialises a
dense gradient over the whole table and updates every row of it, its two moments included: at 739k items
and 64 factors that is most of a training step (``docs/benchmarks/scale.md``). With
``train.item_updates = "touched"`` the item tables produce sparse gradients (:meth:`SeqRecModel.sparse_item_gradients`)
and :class:`RowSparseAdam` updates only the rows whose gradient is non-zero, and only their moments: the
"lazy" Adam of TensorFlow Addons' ``LazyAdam`` and torch's ``SparseAdam``. A row no batch touched keeps its
value *and* its moments, where dense Adam would keep moving it by its decaying momentum; every other
parameter gets plain Adam (or AdamW). Weight decay, too, applies to touched rows only. A backbone whose
item vectors are computed from the id table as a whole (UniSRec's id part) gets the same lazy update from a
dense gradient, without the speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch

from thinkrec.errors import ConfigError
from thinkrec.models.model import SeqRecModel

ItemUpdates = Literal["dense", "touched"]


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (``decoupled=False``, L2 added to the gradient) or AdamW (``decoupled=True``); parameter groups
    with ``rows=True`` hold 2-D tables whose rows are updated only where their gradient is non-zero (a sparse
    gradient's stored rows, or a dense gradient's non-zero rows). The state per parameter (``step``,
    ``exp_avg``, ``exp_avg_sq``) is laid out as ``torch.optim.Adam``'s, so checkpoints read the same way; the
    bias correction uses the optimiser's step count, shared by all rows."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled}
        super().__init__(params, {**defaults, "rows": False})  # a group is dense unless it says rows=True
        for group in self.param_groups:
            if group["rows"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("row-sparse groups hold 2-D tables (rows x factors)")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                rows, grad = _touched(p.grad) if group["rows"] else (None, p.grad)
                if rows is not None and rows.numel() == 0:
                    continue
                param = p if rows is None else p.index_select(0, rows)
                exp_avg = state["exp_avg"] if rows is None else state["exp_avg"].index_select(0, rows)
                exp_avg_sq = state["exp_avg_sq"] if rows is None else state["exp_avg_sq"].index_select(0, rows)
                if group["weight_decay"]:
                    if group["decoupled"]:
                        param.mul_(1 - group["lr"] * group["weight_decay"])
                    else:
                        grad = grad.add(param, alpha=group["weight_decay"])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                param.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**t))
                if rows is not None:
                    p.index_copy_(0, rows, param)
                    state["exp_avg"].index_copy_(0, rows, exp_avg)
                    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        return loss


def _touched(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a gradient touches and their gradient rows ``([r], [r, d])``: a sparse gradient's stored rows
    (duplicates summed), or a dense gradient's rows with any non-zero entry."""
    if grad.is_sparse:  # a looked-up row may still have a zero gradient (e.g. a masked negative): skipped too,
        grad = grad.coalesce()  # as when the same gradient arrives dense (data-parallel runs)
        keep = grad.values().ne(0).any(dim=1)
        return grad.indices()[0][keep], grad.values()[keep]
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)


def build_optimizer(
    model: SeqRecModel,
    optimizer: Literal["adam", "adamw"],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    item_updates: ItemUpdates = "dense",
) -> torch.optim.Optimizer:
    """The run's optimiser. ``item_updates="dense"``: torch's Adam/AdamW over every parameter.
    ``"touched"``: switches the model's item tables to sparse gradients and returns a :class:`RowSparseAdam`
    that updates only their touched rows (plain Adam/AdamW for everything else)."""
    if item_updates == "dense":
        opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        return opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    tables = model.sparse_item_gradients(True)
    if not tables:
        raise ConfigError(
            f"train.item_updates='touched': the {type(model.backbone).__name__} backbone has no trainable item-id"
            " table (its item vectors are computed); use train.item_updates='dense'"
        )
    table_ids = {id(t) for t in tables}
    rest = [p for p in model.parameters() if id(p) not in table_ids]
    groups: list[dict[str, Any]] = [{"params": rest}, {"params": tables, "rows": True}]
    return RowSparseAdam(
        groups,
        lr=lr,
        betas=betas,
        weight_decay=weight_decay,
        decoupled=optimizer == "adamw",
    )


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (whose norm torch cannot take):
    every gradient is scaled by ``min(1, max_norm / (total norm + 1e-6))``, as torch's does."""
    sparse = [(p, p.grad) for p in params if p.grad is not None and p.grad.is_sparse]
    if not sparse:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p, grad in sparse:
        p.grad = grad.coalesce()  # duplicate rows summed before the norm
    norms = [
        torch.linalg.vector_norm(p.grad.values() if p.grad.is_sparse else p.grad) for p in params if p.grad is not None
    ]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad * scale
