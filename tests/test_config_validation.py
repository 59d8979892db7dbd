"""Bad values stop ``thinkrec train`` when the config loads: one clear message, exit code 2, and no run
directory (nothing is written before every value is checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinkrec.cli.main import main

BAD = {
    "train.grad_clip=-1": "train.grad_clip: Input should be greater than 0",
    "model.heads=3": "model.heads (3) must divide model.hidden (64)",
    "train.valid_metric=NDCG@7": "needs K = 7 in eval.ks",
    "eval.ks=[0]": "eval.ks.0: Input should be greater than or equal to 1",
    "eval.ks=[]": "eval.ks: List should have at least 1 item",
    "train.valid_metric=NDGC@10": "did you mean NDCG@10?",
    "train.threads=0": "train.threads: Input should be greater than or equal to 1",
}


@pytest.mark.parametrize("override", list(BAD))
def test_a_bad_value_stops_before_training(
    override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "bad"
    assert main(["train", "ml100k-sasrec", override, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert BAD[override] in err, err
    assert "Traceback" not in err and err.count("invalid configuration") == 1
    assert not (tmp_path / "runs").exists()
