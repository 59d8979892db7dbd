"""The files of a run directory: one consistent checkpoint, damaged files reported clearly, failed and
finished runs that can be trained again, the log kept in step with the checkpoint, file modes."""

from __future__ import annotations

import os
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
