"""Data-parallel engine training under ``torchrun``: two CPU processes (gloo) train one model, rank 0 writes one
run directory, and the run resumes. Batches are sharded ``rank::world`` and gradients averaged by targets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from thinkrec.data.batches import IGNORE, TrainBatch
from thinkrec.data.split import leave_one_out
from thinkrec.distributed import SINGLE, Ranks
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.objectives.sampled import SampledSoftmax
from thinkrec.train.trainer import TrainConfig, Trainer, shard_batch

from helpers import random_dataset


def test_a_batch_is_shared_out_by_rows() -> None:
    inputs = torch.tensor([[0, 0, 1], [0, 2, 3], [4, 5, 6], [0, 0, 7], [0, 8, 9]])
    targets = torch.where(inputs > 0, inputs + 10, torch.full_like(inputs, IGNORE))
    batch = TrainBatch(inputs, torch.arange(7, 10), targets, "all")
    assert shard_batch(batch, SINGLE) is batch
    parts = [shard_batch(batch, Ranks(rank, 3)) for rank in range(3)]
    assert [p.inputs.shape[0] for p in parts] == [2, 2, 1]
    assert parts[1].inputs.tolist() == [[2, 3], [8, 9]]  # rows 1 and 4, the all-padding column cut
    assert parts[1].positions.tolist() == [8, 9] and parts[1].targets.tolist() == [[12, 13], [18, 19]]
    assert parts[0].inputs.tolist() == [[1], [7]] and parts[2].inputs.tolist() == [[4, 5, 6]]
    assert sum(p.n_targets for p in parts) == batch.n_targets
    last = TrainBatch(inputs[:2], torch.arange(7, 10), torch.tensor([1, 2]), "last")
    assert shard_batch(last, Ranks(1, 2)).targets.tolist() == [2]
    assert shard_batch(last, Ranks(2, 3)).inputs.shape[0] == 0  # a small last batch leaves a rank empty


def test_one_process_is_a_no_op() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert SINGLE.average_gradients([p], 5.0) == 5.0 and p.grad.tolist() == [2.0, 2.0, 2.0]
    assert SINGLE.broadcast({"a": 1}) == {"a": 1} and not SINGLE.distributed and SINGLE.is_main
    assert SINGLE.sum_floats({"x": 1.5}, torch.device("cpu")) == {"x": 1.5}


class _RecordingRanks(Ranks):
    """Rank 1 of 2 without a process group: records the collectives the trainer asks for instead."""

    def __init__(self) -> None:
        super().__init__(1, 2)
        object.__setattr__(self, "calls", [])

    def broadcast_params(self, params: Sequence[torch.Tensor]) -> None:
        self.calls.append(("broadcast_params", None))

    def average_gradients(self, params: Sequence[torch.Tensor], weight: float) -> float:
        self.calls.append(("average_gradients", weight))
        return weight

    def sum_floats(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        self.calls.append(("sum_floats", sorted(values)))
        return values


class _Batches:
    """A sampler of fixed global batches."""

    def __init__(self, batches: list[TrainBatch]) -> None:
        self.fixed = batches

    def n_batches(self, batch_size: int) -> int:
        return len(self.fixed)

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[TrainBatch]:
        return iter(self.fixed)


@pytest.mark.parametrize(
    "objective", [CrossEntropy(), SampledSoftmax(16, negatives="in_batch")], ids=["ce", "in-batch"]
)
def test_a_share_without_rows_or_targets_still_joins_the_gradient_all_reduce(tmp_path: Path, objective: Any) -> None:
    """Every global batch is one gradient all-reduce in every process, whatever its share holds: a process
    that skipped one (or failed alone, on the NaN loss of a share without targets: in-batch negatives of no
    targets) would leave its peer's collective open."""
    ds = random_dataset(n_users=20, n_items=15, seed=3)
    inputs = torch.tensor([[0, 1, 2], [3, 4, 5]])
    positions = torch.arange(7, 10)
    trained = TrainBatch(inputs, positions, torch.tensor([[IGNORE, 2, 3], [4, 5, 6]]), "all")
    no_rows = TrainBatch(inputs[:1], positions, torch.tensor([[IGNORE, 2, 3]]), "all")  # rank 1 gets no row
    no_targets = TrainBatch(inputs, positions, torch.tensor([[IGNORE, 2, 3], [IGNORE] * 3]), "all")
    ranks = _RecordingRanks()
    model = build_model(SASRecConfig(hidden=16, layers=1, heads=2, max_len=10), ds.n_items)
    sampler: Any = _Batches([trained, no_rows, no_targets])
    trainer = Trainer(
        model,
        objective,
        leave_one_out(ds),
        sampler,
        TrainConfig(epochs=1),
        EvalConfig(ks=[10]),
        tmp_path,
        ranks=ranks,
    )
    stats = trainer.train_epoch(0)
    calls: list[tuple[str, Any]] = ranks.calls  # type: ignore[attr-defined]
    parts = sorted(["_count", "loss", *objective(model, shard_batch(trained, ranks)).parts])
    assert calls == [
        ("broadcast_params", None),
        ("average_gradients", 3.0),  # row 1's three targets
        ("average_gradients", 0.0),
        ("average_gradients", 0.0),
        ("sum_floats", parts),
    ]
    assert stats["batches"] == 3 and math.isfinite(stats["loss"])


# Two processes that join, make an optimiser (which imports torch._dynamo, and torch.distributed.nn with it,
# the first time), sum floats of different keys and leave: no gloo thread may outlive leave().
LEAVE_SCRIPT = """
import os, torch
from thinkrec import distributed
ranks = distributed.join(torch.device("cpu"))
torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
import torch.distributed.nn.functional
own = {"loss": 1.0, "_count": 2.0} if ranks.is_main else {"_count": 1.0}
assert ranks.sum_floats(own, torch.device("cpu")) == {"_count": 3.0, "loss": 1.0}
distributed.leave()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
assert not [t for t in threads if "gloo" in t], threads
# one file per process: the two processes share the launcher's stdout, where their lines may interleave
open(os.path.join(os.environ["LEFT_DIR"], f"left-{ranks.rank}"), "w").close()
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_leaving_frees_the_group_and_its_threads(tmp_path: Path) -> None:
    """A group kept alive past destroy_process_group (torch.distributed.nn.functional imported after join binds
    it into its default arguments) keeps gloo's threads running until interpreter exit, where tearing them
    down aborted a process now and then ("terminate called without an active exception", exit code -6)."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEFT_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("left-*")) == ["left-0", "left-1"]  # both processes got there


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CSV log (every user walks the catalogue in steps of +1) and a small no-dropout config."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    rows = ["user,item,ts"]
    for user in range(60):
        start = rng.integers(0, 20)
        rows += [f"{user},{(start + i) % 20 + 1},{1000 + 10 * i}" for i in range(10)]
    (root / "events.csv").write_text("\n".join(rows) + "\n")
    (root / "shop.toml").write_text(
        f"""
[data]
name = "ddpshop"

[data.source]
format = "table"
path = "{root / "events.csv"}"
user_col = "user"
item_col = "item"
time_col = "ts"

[model]
hidden = 16
layers = 1
max_len = 8
dropout = 0.0

[train]
epochs = 2
batch_size = 32
lr = 0.01
threads = 1

[eval]
ks = [10]
"""
    )
    return root


def train_cli(root: Path, run: Path, processes: int, *overrides: str) -> dict[str, Any]:
    env = {**os.environ, "THINKREC_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    cli = ["-m", "thinkrec.cli.main", "train", str(root / "shop.toml"), "--run-dir", str(run), "progress=never"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *(launcher if processes > 1 else []), *cli, *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    if processes > 1:
        assert done.stdout.count("run: ") == 1, done.stdout  # rank 0 alone reports
    results: dict[str, Any] = json.loads((run / "results.json").read_text())
    return results


def metrics(results: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in results["test"]["metrics"].items()}


def test_two_processes_train_one_run_and_resume(shop: Path) -> None:
    two = train_cli(shop, shop / "two", 2, "model.attn_dropout=0.0")
    assert all(math.isfinite(v) for v in metrics(two).values())
    log = [json.loads(line) for line in (shop / "two" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1] and all(math.isfinite(row["loss"]) for row in log)
    assert {p.name for p in (shop / "two" / "checkpoints").iterdir()} >= {"best.safetensors", "last.safetensors"}
    assert sorted(p.name for p in shop.iterdir() if p.is_dir() and p.name != "cache") == ["two"]
    assert not list((shop / "two").glob("rank*"))  # one run directory, written by rank 0 only
    # the same update as one process on the whole batch (no dropout, full softmax): the same model up to
    # float summation order
    one = train_cli(shop, shop / "one", 1, "model.attn_dropout=0.0")
    for name, value in metrics(one).items():
        assert metrics(two)[name] == pytest.approx(value, abs=0.02), name
    # a 2-epoch run killed after its first epoch (its config says 2 epochs), then resumed
    train_cli(shop, shop / "killed", 2, "model.attn_dropout=0.0", "train.epochs=1")
    saved = json.loads((shop / "killed" / "config.json").read_text())
    saved["train"]["epochs"] = 2
    (shop / "killed" / "config.json").write_text(json.dumps(saved))
    (shop / "killed" / "results.json").unlink()
    resumed = train_cli(shop, shop / "killed", 2, "model.attn_dropout=0.0")
    log = [json.loads(line) for line in (shop / "killed" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1] and resumed["epochs_run"] == 2
    for name, value in metrics(two).items():
        assert metrics(resumed)[name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.kind=gru4rec", "model.dropout=0.0"],
        ["model.kind=bert4rec", "model.train_objective=cloze", "model.attn_dropout=0.0"],
        ["reasoning.kind=erl", "train.sample_mode=last", "reasoning.warmup_epochs=0"],
        ["train.loss=sampled", "train.negatives=in_batch", "train.logq=true", "train.n_negatives=16"],
        ["train.item_updates=touched", "train.loss=sampled", "train.n_negatives=16"],  # sparse gradients
    ],
    ids=["gru4rec", "bert4rec-cloze", "sasrec-erl", "sampled-in-batch", "sampled-touched"],
)
def test_every_backbone_and_objective_trains_on_two_processes(shop: Path, overrides: list[str]) -> None:
    run = shop / f"kind-{overrides[0].split('=')[1]}"
    results = train_cli(shop, run, 2, "train.epochs=1", *overrides)
    assert all(math.isfinite(v) for v in metrics(results).values())
