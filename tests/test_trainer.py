import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.data.batches import TrainSampler
from thinkrec.data.split import leave_one_out
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives import LossOutput
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.train.checkpoint import load_checkpoint
from thinkrec.train.trainer import NonFiniteLossError, TrainConfig, Trainer

from helpers import cyclic_dataset, random_dataset

MODEL = SASRecConfig(hidden=16, layers=1, heads=2, max_len=10, dropout=0.1, attn_dropout=0.1)


def _trainer(tmp: Path, ds, epochs: int, seed: int = 1, objective=None, **kw) -> Trainer:  # type: ignore[no-untyped-def]
    split = leave_one_out(ds)
    torch.manual_seed(seed)
    model = build_model(MODEL, ds.n_items)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, seed=seed, patience=50, **kw)
    sampler = TrainSampler(split, MODEL.max_len, cfg.sample_mode)
    return Trainer(model, objective or CrossEntropy(), split, sampler, cfg, EvalConfig(ks=[10]), tmp)


@pytest.mark.parametrize("mode", ["all", "last"])
def test_sasrec_learns_a_predictable_sequence(tmp_path: Path, mode: str) -> None:
    ds = cyclic_dataset()
    result = _trainer(tmp_path, ds, epochs=6, sample_mode=mode).fit()
    assert result.best_valid["HR@10"] > 0.9
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == list(range(6))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    ds = random_dataset(n_users=60, n_items=25, seed=9)
    straight = _trainer(tmp_path / "a", ds, epochs=3).fit()
    again = _trainer(tmp_path / "b", ds, epochs=3).fit()
    assert straight.history[-1]["valid"] == again.history[-1]["valid"]
    # "kill" after 2 epochs, then resume to 3 in the same directory
    _trainer(tmp_path / "c", ds, epochs=2).fit()
    resumed = _trainer(tmp_path / "c", ds, epochs=3).fit()
    assert resumed.history[-1]["valid"] == straight.history[-1]["valid"]
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-6)
    other = _trainer(tmp_path / "d", ds, epochs=3, seed=2).fit()
    assert other.history[-1]["loss"] != straight.history[-1]["loss"]


class _NaNAfterFirstEpoch(CrossEntropy):
    epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, model, batch) -> LossOutput:  # type: ignore[no-untyped-def]
        out = super().__call__(model, batch)
        return LossOutput(out.total * float("nan"), out.parts) if self.epoch >= 1 else out


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    ds = random_dataset(seed=10)
    trainer = _trainer(tmp_path, ds, epochs=3, objective=_NaNAfterFirstEpoch())
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        trainer.fit()
    model = build_model(MODEL, ds.n_items)
    info = load_checkpoint(tmp_path / "checkpoints", "last", model)
    assert info["trainer_state"]["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    ds = random_dataset(seed=11)
    trainer = _trainer(tmp_path, ds, epochs=1)
    trainer.fit()
    fresh = build_model(MODEL, ds.n_items)
    load_checkpoint(tmp_path / "checkpoints", "best", fresh)
    for (name, a), (_, b) in zip(trainer.model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sampled_softmax_trains(tmp_path: Path) -> None:
    ds = cyclic_dataset(n_items=50)
    result = _trainer(tmp_path, ds, epochs=6, loss="sampled", n_negatives=10).fit()
    assert result.best_valid["HR@10"] > 0.5
    assert np.isfinite(result.history[-1]["loss"])


def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    from thinkrec.config.loader import load_config
    from thinkrec.errors import ThinkrecError
    from thinkrec.runs import train
    from thinkrec.storage import exclusive_run_dir

    run_dir = tmp_path / "run"
    with exclusive_run_dir(run_dir):
        # a second holder (another open file description, as another process would have) is refused ...
        refused = pytest.raises(ThinkrecError, match=rf"in use: another thinkrec process \(pid {os.getpid()}\)")
        with refused, exclusive_run_dir(run_dir):
            pass
        # ... and so is training there, before anything is read or written
        with pytest.raises(ThinkrecError, match="in use"):
            train(load_config("ml100k-sasrec"), run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    with exclusive_run_dir(run_dir):  # released on exit: the next run (a resume) may take it
        pass


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_betas_reach_the_optimiser_and_are_validated(tmp_path: Path, optimizer: str) -> None:
    trainer = _trainer(tmp_path, random_dataset(), epochs=1, optimizer=optimizer, betas=(0.9, 0.98))
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    default = _trainer(tmp_path / "default", random_dataset(), epochs=1, optimizer=optimizer)
    assert default.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.0))
