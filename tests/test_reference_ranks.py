"""Restructuring keeps behaviour: three short runs give the per-sample test ranks of the reference commit.

``tests/data/reference_ranks/`` holds the test ranks (every reasoning step) of ``ml100k-sasrec``,
``ml100k-time-sasrec-prl`` (two warm-up epochs, then PRL) and ``ml100k-loo-bert4rec-cloze``, each trained
for 3 epochs with seed 7 on one thread, made at the commit named in ``machine.json``. On a machine with the
same fingerprint (vector instructions, torch version) the ranks must be identical; elsewhere float rounding
differs, and the metrics must agree within a few per cent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference_ranks import fingerprint
from thinkrec.eval.metrics import metrics_from_ranks

REFERENCE = Path(__file__).parent / "data" / "reference_ranks"
PRESETS = ("ml100k-sasrec", "ml100k-time-sasrec-prl", "ml100k-loo-bert4rec-cloze")
SETTINGS = ["train.seed=7", "train.epochs=3", "train.threads=1", "train.progress=false"]


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three runs, trained at once in separate one-thread processes."""
    out = tmp_path_factory.mktemp("reference_runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THINKREC_CACHE_DIR": str(out / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "thinkrec.cli.main", "train", preset, *SETTINGS, "--run-dir", str(out / preset)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for preset in PRESETS
    ]
    for preset, proc in zip(PRESETS, procs, strict=True):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{preset}: {err[-2000:]}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_ranks_equal_the_reference(trained: Path, preset: str) -> None:
    with np.load(REFERENCE / f"{preset}.npz") as ref, np.load(trained / preset / "test_ranks.npz") as now:
        assert sorted(ref.files) == sorted(now.files)
        machine = json.loads((REFERENCE / "machine.json").read_text())
        same_machine = {k: machine[k] for k in ("vendor", "isa", "torch")} == fingerprint()
        for name in ref.files:
            if name == "mode":
                assert str(ref[name]) == str(now[name])
            elif same_machine:
                np.testing.assert_array_equal(now[name], ref[name], err_msg=f"{preset}: {name}")
            else:
                before = metrics_from_ranks(ref[name].astype(np.int64), [10, 20])
                after = metrics_from_ranks(now[name].astype(np.int64), [10, 20])
                for key in ("NDCG@10", "HR@20"):
                    assert after[key] == pytest.approx(before[key], rel=0.05, abs=0.005), (preset, name, key)
