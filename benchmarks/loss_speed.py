"""Speed of the full-catalogue losses: thinkrec's chunked cross-entropy and ERL pairwise KL against a baseline
measured in the same process, interleaved (the fastest of ``--repeats`` rounds counts; other activity on a
shared machine only adds time).

    python benchmarks/loss_speed.py --threads 1
    git worktree add /tmp/before <commit> && python benchmarks/loss_speed.py --threads 1 \\
        --baseline-src /tmp/before/src --presets beauty-time-gru4rec,beauty-time-gru4rec-erl

Loss alone (forward + backward, random users ``[M, S, d]`` and items ``[N, d]``): ours vs the plain
autograd computation over materialised ``[M, S, N]`` logits, and vs the same functions of an older checkout
(``--baseline-src``: its ``thinkrec/train/losses.py`` and ``thinkrec/reasoning/losses.py``), with the
largest difference of the values and gradients. Training steps (``--presets``, needs ``--baseline-src``):
the same first ``--batches`` batches of each preset (reasoning past its warm-up) with our losses and with
the baseline's swapped in, alternately, one model and optimiser each. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.data.batches import TrainSampler
from thinkrec.models import bert4rec
from thinkrec.reasoning import losses as reasoning_losses
from thinkrec.reasoning import objectives as reasoning_objectives
from thinkrec.runs import build, build_objective, load_data
from thinkrec.train import losses as train_losses
from thinkrec.train import objectives as train_objectives

Loss = Callable[[], torch.Tensor]


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline_functions(src: Path) -> dict[str, Callable[..., torch.Tensor]]:
    """``softmax_cross_entropy`` and ``pairwise_kl`` of an older checkout's ``src`` folder."""
    ce = load_module(src / "thinkrec/train/losses.py", "baseline_train_losses")
    kl = load_module(src / "thinkrec/reasoning/losses.py", "baseline_reasoning_losses")
    return {"softmax_cross_entropy": ce.softmax_cross_entropy, "pairwise_kl": kl.pairwise_kl}


def plain_kl(users: torch.Tensor, items: torch.Tensor, temperature: float) -> torch.Tensor:
    """The definition of :func:`pairwise_kl` in plain autograd over ``[M, S, N]`` log-probabilities."""
    logp = torch.log_softmax(users @ items.T / temperature, dim=-1)
    s = users.shape[1]
    pairs = [
        (logp[:, j].exp() * (logp[:, j] - logp[:, k].detach())).sum(-1).mean()
        for j in range(s)
        for k in range(s)
        if j != k
    ]
    return torch.stack(pairs).mean()


def time_losses(cases: dict[str, Loss], params: list[torch.Tensor], repeats: int) -> dict[str, Any]:
    best = dict.fromkeys(cases, float("inf"))
    outputs: dict[str, list[torch.Tensor]] = {}
    for _ in range(repeats):
        for name, fn in cases.items():
            for p in params:
                p.grad = None
            t0 = time.perf_counter()
            loss = fn()
            torch.autograd.backward(loss)
            best[name] = min(best[name], time.perf_counter() - t0)
            outputs[name] = [loss.detach(), *(p.grad.clone() for p in params if p.grad is not None)]
    ours = outputs["ours"]
    diff = {
        name: max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(out, ours, strict=True))
        for name, out in outputs.items()
    }
    return {"seconds": best, "max_rel_diff_vs_ours": diff}


def loss_benchmark(args: argparse.Namespace, baseline: dict[str, Callable[..., torch.Tensor]] | None) -> None:
    g = torch.Generator().manual_seed(0)
    m, s, n, d, tau = args.rows, args.steps, args.items, args.dim, 0.07
    users = (torch.randn(m, s, d, generator=g) * 0.3).requires_grad_()
    items = (torch.randn(n, d, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, n, (m,), generator=g)
    ce: dict[str, Loss] = {
        "ours": lambda: train_losses.softmax_cross_entropy(users.mean(1), items, targets, tau),
        "plain": lambda: F.cross_entropy(users.mean(1) @ items.T / tau, targets),
    }
    kl: dict[str, Loss] = {
        "ours": lambda: reasoning_losses.pairwise_kl(users, items, tau),
        "plain": lambda: plain_kl(users, items, tau),
    }
    if baseline is not None:
        ce["baseline"] = lambda: baseline["softmax_cross_entropy"](users.mean(1), items, targets, tau)
        kl["baseline"] = lambda: baseline["pairwise_kl"](users, items, tau)
    for name, cases in (("cross_entropy", ce), ("pairwise_kl", kl)):
        result = time_losses(cases, [users, items], args.repeats)
        print(json.dumps({"kind": "loss", "loss": name, "rows": m, "steps": s, "items": n, "dim": d, **result}))


def swap_losses(functions: dict[str, Callable[..., torch.Tensor]]) -> None:
    """Point every caller of the two losses at ``functions`` (module globals, as imported by name)."""
    for module in (train_objectives, reasoning_objectives, reasoning_losses, bert4rec):
        for name, fn in functions.items():
            if hasattr(module, name):
                setattr(module, name, fn)


def step_benchmark(preset: str, args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> None:
    cfg = load_config(preset, ["train.progress=false"])
    _, split = load_data(cfg)
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    batches = []
    for batch in sampler.batches(cfg.train.batch_size, np.random.default_rng(0)):
        batches.append(batch)
        if len(batches) == args.batches:
            break
    setups = {}
    for name in variants:
        torch.manual_seed(0)
        model = build(cfg, split.dataset.n_items)
        objective = build_objective(cfg)
        start_epoch = getattr(objective, "start_epoch", None)
        if start_epoch is not None:
            start_epoch(10**6)  # past any warm-up: the reasoning losses are on
        setups[name] = (model, objective, torch.optim.Adam(model.parameters(), lr=cfg.train.lr))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, functions in variants.items():
            swap_losses(functions)
            model, objective, optimizer = setups[name]
            model.train()
            t0 = time.perf_counter()
            for batch in batches:
                out = objective(model, batch)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(out.total)
                optimizer.step()
            times[name].append((time.perf_counter() - t0) / len(batches))
    swap_losses(variants["ours"])
    best = {name: min(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                "kind": "train_steps",
                "preset": preset,
                "batches": len(batches),
                "seconds_per_batch_fastest": best,
                "seconds_per_batch_median": {name: float(np.median(t)) for name, t in times.items()},
                "ours_over_baseline": best["ours"] / best["baseline"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000, help="M prefixes of the loss benchmark")
    parser.add_argument("--steps", type=int, default=3, help="S = K + 1 states per prefix")
    parser.add_argument("--items", type=int, default=12086, help="N items (amazon2014-beauty's catalogue)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--baseline-src", type=Path, help="src/ folder of an older checkout to compare with")
    parser.add_argument("--presets", default="", help="comma list of presets for the training-step comparison")
    parser.add_argument("--batches", type=int, default=10, help="training batches per preset and round")
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    setup = {"kind": "setup", "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    print(json.dumps(setup))
    baseline = baseline_functions(args.baseline_src) if args.baseline_src else None
    loss_benchmark(args, baseline)
    presets = [p for p in args.presets.split(",") if p]
    if presets and baseline is None:
        raise SystemExit("--presets compares training steps with --baseline-src's losses; give --baseline-src")
    ours = {"softmax_cross_entropy": train_losses.softmax_cross_entropy, "pairwise_kl": reasoning_losses.pairwise_kl}
    for preset in presets:
        assert baseline is not None
        step_benchmark(preset, args, {"ours": ours, "baseline": baseline})


if __name__ == "__main__":
    main()
