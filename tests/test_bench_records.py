"""The reproduction script keeps a small record of every finished run, and rebuilds its table from records alone."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from thinkrec.eval.evaluator import EvalResult

REPO = Path(__file__).resolve().parents[1]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rearec_repro", REPO / "benchmarks" / "rearec_repro.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rearec_repro"] = module
    spec.loader.exec_module(module)
    return module


repro = load_script()


def test_record_round_trip_keeps_every_rank(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in repro.RECORD_FILES:
        (run_dir / name).write_text(f"{name}\n")
    rng = np.random.default_rng(0)
    result = EvalResult(
        ranks=rng.integers(0, 60_000, 50),
        step_ranks=rng.integers(0, 60_000, (3, 50)),
        mean_ranks=rng.integers(0, 60_000, 50),
        mode="mean",
    )
    record = tmp_path / "records" / "x-s1"
    repro.write_record(record, run_dir, result)
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["x-s1"]  # no temporary folder left
    back = repro.read_record(record)
    assert back.mode == "mean"
    for name in ("ranks", "step_ranks", "mean_ranks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == np.int64
    # a catalogue past uint16 keeps exact ranks too, and a plain model has no mean-of-steps ranks
    big = EvalResult(ranks=np.array([0, 70_000]), step_ranks=np.array([[0, 70_000]]), mean_ranks=None)
    repro.write_record(tmp_path / "records" / "y-s1", run_dir, big)
    back = repro.read_record(tmp_path / "records" / "y-s1")
    np.testing.assert_array_equal(back.ranks, [0, 70_000])
    assert back.mean_ranks is None and back.mode == "last"


def test_table_is_rebuilt_from_records_without_run_directories(
    real_dataset: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_dataset("ml-100k")
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    tiny = ["model.hidden=8", "model.layers=1", "train.batch_size=512"]
    argv = ["--dataset", "ml100k", "--seeds", "1", "--variants", "base,erl", "--epochs", "1", "--out", str(out), *tiny]
    assert repro.main(argv) == 0
    table = json.loads((out / "rearec-ml100k-time.json").read_text())
    records = out / "records" / "ml100k-time"
    assert sorted(p.name for p in records.iterdir()) == ["sasrec-erl-s1", "sasrec-s1"]
    assert sorted(p.name for p in (records / "sasrec-s1").iterdir()) == [
        "config.json",
        "log.jsonl",
        "mode.txt",
        "results.json",
        "test_ranks.npz",
    ]

    # a fresh clone has the records and no run directories (checkpoints are not committed): same table,
    # nothing trained
    shutil.rmtree(out / "runs")
    (out / "rearec-ml100k-time.json").unlink()
    assert repro.main(argv) == 0
    assert not (out / "runs").exists()
    assert json.loads((out / "rearec-ml100k-time.json").read_text()) == table

    # a record made with other settings is refused, not mixed into a table
    with pytest.raises(SystemExit, match=r"model\.hidden"):
        repro.main([*argv[:-3], "model.hidden=16", *tiny[1:]])
