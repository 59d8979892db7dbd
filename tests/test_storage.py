"""Atomic writes: the modes of the files they create, and the temporaries killed writers leave."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from thinkrec.errors import ThinkrecError
from thinkrec.storage import atomic_save_tensors, atomic_write_json, exclusive_run_dir, remove_temporaries


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_mode_of_a_new_file_under_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        atomic_save_tensors(tmp_path / "best.safetensors", {"w": torch.ones(3)}, {"epoch": "1"})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "results.json": mode,
        "best.safetensors": mode,
    }


def test_remove_temporaries_only_removes_temporaries(tmp_path: Path) -> None:
    names = [
        ".log.jsonl.0f1e2d3c.tmp",  # this version's
        ".best.safetensors.abc_1234",  # tempfile.mkstemp's, of earlier versions
        ".items.parquet.tmp",
        ".lock",
        ".env.settings",
        ".gitignore",
        "best.json",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / ".config.json.12345678.tmp").mkdir()  # not a file: kept
    assert remove_temporaries(tmp_path) == [
        ".best.safetensors.abc_1234",
        ".items.parquet.tmp",
        ".log.jsonl.0f1e2d3c.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".config.json.12345678.tmp",
        ".env.settings",
        ".gitignore",
        ".lock",
        "best.json",
    ]


def test_a_run_directory_that_cannot_be_made_is_a_thinkrec_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(ThinkrecError, match="cannot use it as a run directory"),
        exclusive_run_dir(tmp_path / "file" / "run"),
    ):
        pass
