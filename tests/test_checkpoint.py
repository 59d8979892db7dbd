"""Checkpoints: one file (weights, info, checksum, epoch) replaced atomically, verified on load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from thinkrec.data.batches import TrainSampler
from thinkrec.data.split import leave_one_out
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.storage import atomic_save_tensors, atomic_write_json
from thinkrec.train.checkpoint import CheckpointError, checkpoint_info, load_checkpoint, save_checkpoint
from thinkrec.train.trainer import TrainConfig, Trainer

from helpers import random_dataset

MODEL = SASRecConfig(hidden=16, layers=1, heads=2, max_len=10, dropout=0.1, attn_dropout=0.1)


def _trainer(run_dir: Path, epochs: int, **kw: object) -> Trainer:
    ds = random_dataset(n_users=50, n_items=20, seed=3)
    split = leave_one_out(ds)
    torch.manual_seed(1)
    model = build_model(MODEL, ds.n_items)
    settings: dict[str, object] = {"batch_size": 32, "lr": 5e-3, "seed": 1, **kw}
    cfg = TrainConfig(epochs=epochs, **settings)  # type: ignore[arg-type]
    sampler = TrainSampler(split, MODEL.max_len, cfg.sample_mode)
    return Trainer(model, CrossEntropy(), split, sampler, cfg, EvalConfig(ks=[10]), run_dir)


def test_a_checkpoint_is_one_file_carrying_its_info_checksum_and_epoch(tmp_path: Path) -> None:
    _trainer(tmp_path, epochs=2).fit()
    ckpt = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.safetensors", "last.safetensors"]
    with safe_open(str(ckpt / "last.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["epoch"] == "1" and len(meta["sha256"]) == 64
    assert json.loads(meta["info"])["trainer_state"]["epoch"] == 2
    assert checkpoint_info(ckpt, "last")["trainer_state"]["epoch"] == 2


class _Killed(BaseException):
    """Stands for the process being killed."""


def test_a_run_killed_while_saving_its_checkpoint_resumes_without_training_an_epoch_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = _trainer(tmp_path / "straight", epochs=3).fit()
    # kill the run right after the second epoch's 'last' weights replaced the first's: before the rest of
    # that checkpoint (and the log line of the epoch) is written
    real_replace = os.replace
    replaced: list[str] = []

    def replace(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if Path(dst).name == "last.safetensors":
            replaced.append(str(dst))
            if len(replaced) == 2:
                raise _Killed

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        _trainer(tmp_path / "killed", epochs=3).fit()
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = _trainer(tmp_path / "killed", epochs=3).fit()
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    assert resumed.history[-1]["valid"] == straight.history[-1]["valid"]
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-6)
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1, 2]


def test_flipped_bytes_in_the_weights_are_detected(tmp_path: Path) -> None:
    ds = random_dataset(n_users=10, n_items=20, seed=3)
    model = build_model(MODEL, ds.n_items)
    save_checkpoint(tmp_path, "best", model, {"epoch": 4})
    path = tmp_path / "best.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best\.safetensors: damaged checkpoint .*checksum.*--checkpoint last"):
        load_checkpoint(tmp_path, "best", build_model(MODEL, ds.n_items))


def test_a_checkpoint_of_the_two_file_format_still_loads(tmp_path: Path) -> None:
    ds = random_dataset(n_users=10, n_items=20, seed=3)
    model = build_model(MODEL, ds.n_items)
    atomic_save_tensors(tmp_path / "best.safetensors", {f"model.{k}": v for k, v in model.state_dict().items()})
    atomic_write_json(tmp_path / "best.json", {"epoch": 7})
    fresh = build_model(MODEL, ds.n_items)
    assert load_checkpoint(tmp_path, "best", fresh) == {"epoch": 7}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    (tmp_path / "best.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"best\.json: damaged checkpoint \(unreadable JSON"):
        checkpoint_info(tmp_path, "best")
