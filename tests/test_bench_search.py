"""The validation-only grid search: every setting trained once per seed, finished runs skipped, one table
ranked by validation, test read for the chosen setting only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.quality import rearec_search


def test_grid_settings_are_every_combination() -> None:
    settings = rearec_search.grid_settings(["reasoning.tau=0.05,0.1", "reasoning.prl_alpha=2"])
    assert settings == [
        {"reasoning.tau": "0.05", "reasoning.prl_alpha": "2"},
        {"reasoning.tau": "0.1", "reasoning.prl_alpha": "2"},
    ]
    assert rearec_search.setting_name(settings[0]) == "tau=0.05,prl_alpha=2"
    with pytest.raises(SystemExit, match="expected KEY=V1,V2"):
        rearec_search.grid_settings(["reasoning.tau"])


@pytest.mark.slow
def test_search_trains_each_setting_once_and_ranks_on_validation(
    real_dataset: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_dataset("ml-100k")
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "search"
    argv = ["--preset", "ml100k-time-sasrec", "--grid", "model.temperature=0.1,1.0", "--out", str(out)]
    argv += ["train.epochs=1", "model.hidden=8", "model.layers=1", "train.batch_size=512"]
    assert rearec_search.main(argv) == 0
    summary = json.loads((out / "search.json").read_text())
    rows = summary["rows"]
    assert [r["setting"] for r in rows] == sorted(
        ["temperature=0.1", "temperature=1.0"], key=lambda s: -next(r["valid"] for r in rows if r["setting"] == s)
    )
    assert "test" in rows[0] and "test" not in rows[1]  # test read for the chosen setting only
    assert "provenance" in summary
    made = {p: p.stat().st_mtime for p in out.glob("runs/*/s1/results.json")}
    assert len(made) == 2
    assert rearec_search.main(argv) == 0  # finished runs are read, not trained again
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/s1/results.json")} == made
