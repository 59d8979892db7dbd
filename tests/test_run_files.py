"""The files of a run directory: one consistent checkpoint, damaged files reported clearly, failed and
finished runs that can be trained again, the log kept in step with the checkpoint, file modes."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.data.batches import TrainSampler
from thinkrec.data.split import leave_one_out
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.storage import atomic_write_json
from thinkrec.train.checkpoint import checkpoint_info
from thinkrec.train.trainer import TrainConfig, Trainer

from helpers import random_dataset


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small CSV log (every user walks the catalogue in steps of +1) and a one-epoch config."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = ["customer,sku,ts"]
    for user in range(60):
        start = rng.integers(0, 20)
        rows += [f"u{user},{(start + i) % 20 + 1},{1000 + 10 * i}" for i in range(10)]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "shop.toml").write_text(
        f"""
[data]
name = "shop"
[data.source]
format = "table"
path = "{tmp_path / "events.csv"}"
user_col = "customer"
item_col = "sku"
time_col = "ts"
[model]
hidden = 8
layers = 1
heads = 1
max_len = 6
[train]
epochs = 1
batch_size = 64
progress = false
"""
    )
    return tmp_path


def _train(*extra: str) -> int:
    return main(["train", "shop.toml", "--run-dir", "run", *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


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


# --- damaged files give one clear message, for every command that reads a run -----------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _flip_weights(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _bad_items(path: Path) -> None:
    path.write_bytes(b"PAR1 not really parquet")


DAMAGE = {
    "truncated best": ("checkpoints/best.safetensors", _truncate, "damaged checkpoint"),
    "empty best": ("checkpoints/best.safetensors", lambda p: p.write_bytes(b""), "damaged checkpoint"),
    "flipped best": ("checkpoints/best.safetensors", _flip_weights, "checksum"),
    "bad config": ("config.json", lambda p: p.write_text('{"model": {"hidden": "x"'), "not a readable thinkrec config"),
    "schema config": ("config.json", lambda p: p.write_text('{"model": {"hidden": "x"}}'), "model.sasrec.hidden"),
    "missing items": ("items.parquet", lambda p: p.unlink(), "missing"),
    "corrupt items": ("items.parquet", _bad_items, "damaged"),
}


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``thinkrec serve`` loads the run and would then serve it: fail instead of blocking the test."""
    import uvicorn

    def run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the damaged run was served")

    monkeypatch.setattr(uvicorn, "run", run)
    yield


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve"])
def test_a_damaged_run_file_gives_one_clear_message(
    shop: Path, capsys: pytest.CaptureFixture[str], served: None, damage: str, command: str
) -> None:
    assert _train() == 0
    name, spoil, message = DAMAGE[damage]
    spoil(shop / "run" / name)
    capsys.readouterr()
    argv = {"evaluate": ["evaluate", "run"], "recommend": ["recommend", "run", "--history", "3,4"]}
    assert main(argv.get(command, [command, "run"])) == 2
    err = _error(capsys)
    assert name in err and message in err, err


@pytest.mark.parametrize("spoil", [_truncate, _flip_weights])
def test_resuming_from_a_damaged_last_checkpoint_says_what_to_do(
    shop: Path, capsys: pytest.CaptureFixture[str], spoil: object
) -> None:
    assert _train() == 0
    spoil(shop / "run" / "checkpoints" / "last.safetensors")  # type: ignore[operator]
    capsys.readouterr()
    assert _train() == 2
    err = _error(capsys)
    assert "last.safetensors: damaged checkpoint" in err and "train.resume=false" in err
    assert _train("train.resume=false") == 0  # the way out it names works


def test_resuming_with_a_damaged_config_says_what_to_do(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train() == 0
    (shop / "run" / "config.json").write_text("{")
    capsys.readouterr()
    assert _train() == 2
    err = _error(capsys)
    assert "config.json: not a readable thinkrec config" in err and "train.resume=false" in err
    assert _train("train.resume=false") == 0


def test_a_run_with_checkpoints_of_the_two_file_format_resumes(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    assert _train() == 0
    ckpt = shop / "run" / "checkpoints"
    for name in ("best", "last"):  # rewrite both as an earlier thinkrec wrote them: tensors, then the JSON
        info = checkpoint_info(ckpt, name)
        save_file(load_file(str(ckpt / f"{name}.safetensors")), str(ckpt / f"{name}.safetensors"))
        (ckpt / f"{name}.json").write_text(json.dumps(info))
    assert main(["evaluate", "run"]) == 0
    assert _train("train.epochs=2") == 0, _error(capsys)
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.safetensors", "last.safetensors"]
    assert checkpoint_info(ckpt, "last")["trainer_state"]["epoch"] == 2


# --- failed runs do not block the corrected command; bad names and data create nothing ----------------------


def test_a_run_that_failed_before_its_first_epoch_accepts_the_corrected_config(
    shop: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Trainer, epoch: int) -> dict[str, float]:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", interrupted)
        assert _train("model.hidden=4", "model.heads=1") == 130
    assert (shop / "run" / "config.json").exists() and not (shop / "run" / "checkpoints" / "last.safetensors").exists()
    assert _train() == 0, _error(capsys)
    assert json.loads((shop / "run" / "config.json").read_text())["model"]["hidden"] == 8
    assert main(["evaluate", "run"]) == 0


def test_starting_over_leaves_no_output_of_the_run_before(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train("train.epochs=2") == 0
    (shop / "run" / "checkpoints" / "last.safetensors").unlink()  # as if killed in its first epoch
    assert (shop / "run" / "checkpoints" / "best.safetensors").exists()
    assert _train("model.hidden=4", "model.heads=1", "train.epochs=1") == 0
    log = (shop / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0]
    assert main(["evaluate", "run"]) == 0  # best is of the new config


def test_bad_data_creates_no_run_directory(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train("data.source.user_col=client") == 2
    assert "client" in _error(capsys)
    assert not (shop / "run").exists()
    assert _train() == 0


def test_a_dataset_name_that_is_a_path_is_rejected_before_anything_is_created(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (shop / "inner").mkdir()
    os.chdir(shop / "inner")
    for name in ("../../escaped", "a/b", "..", ".hidden"):
        assert main(["train", "../shop.toml", f"data.name={name}"]) == 2
        assert sorted(p.name for p in shop.parent.iterdir() if "escaped" in p.name) == []
        assert sorted(p.name for p in shop.iterdir() if "escaped" in p.name) == []
        assert not (shop / "inner" / "runs").exists()
        assert "data.name" in _error(capsys)


# --- the log follows the checkpoint; temporaries of killed writers are removed ----------------------------


def test_resuming_restores_log_rows_a_kill_lost(shop: Path) -> None:
    assert _train("train.epochs=2") == 0
    log = shop / "run" / "log.jsonl"
    rows = log.read_text().splitlines()
    log.write_text(rows[0] + "\n" + rows[1][:10])  # killed while appending the second row
    assert _train("train.epochs=2") == 0
    assert log.read_text().splitlines() == rows


def test_training_again_removes_temporaries_of_killed_writers(shop: Path) -> None:
    assert _train() == 0
    run = shop / "run"
    stale = [
        run / "checkpoints" / ".last.safetensors.k3j_a8x2",  # tempfile.mkstemp's, earlier thinkrec versions
        run / ".results.json.a1b2c3d4.tmp",
        run / ".items.parquet.tmp",
    ]
    kept = [run / ".gitignore", run / "notes.txt"]
    for path in stale + kept:
        path.write_text("x")
    assert _train() == 0
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in kept] == [True] * len(kept)


# --- file modes and continuing finished runs ---------------------------------------------------------------


def test_run_outputs_get_the_usual_modes_under_the_umask(shop: Path) -> None:
    old = os.umask(0o022)
    try:
        assert _train() == 0
    finally:
        os.umask(old)
    run = shop / "run"
    files = [p for p in run.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {"config.json", "results.json", "best.safetensors", "test_ranks.npz", "items.parquet"} <= {
        p.name for p in files
    }
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    old = os.umask(0o077)
    try:
        atomic_write_json(shop / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((shop / "private.json").stat().st_mode) == 0o600


def test_an_early_stopped_run_stays_stopped_when_epochs_grow(tmp_path: Path) -> None:
    # a learning rate too small to change the ranking: the second evaluation does not improve
    first = _trainer(tmp_path, epochs=4, lr=1e-12, patience=1).fit()
    assert (first.stopped, first.epochs_run) == ("early_stop", 2)
    again = _trainer(tmp_path, epochs=8, lr=1e-12, patience=1).fit()
    assert (again.stopped, again.epochs_run) == ("early_stop", 2)
