"""The files of a run directory: one consistent checkpoint, damaged files reported clearly, failed and
finished runs that can be trained again, the log kept in step with the checkpoint, file modes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from thinkrec.cli.main import main


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


# --- failed runs do not block the corrected command; bad names and data create nothing ----------------------


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
