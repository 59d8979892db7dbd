"""The new backbones end to end: ``thinkrec train`` with a one-key switch of backbone and objective, then
``load_run`` and evaluation of the saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.data.batches import position_ids
from thinkrec.runs import load_run

from helpers import write_walk_csv


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small CSV log where users walk the catalogue in steps of +1, and a config for it."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_walk_csv(tmp_path, n_users=40, n_items=20, length=8)
    (tmp_path / "shop.toml").write_text(
        f"""
[data]
name = "shop"
source = {{ format = "table", path = "{tmp_path / "events.csv"}", time_col = "ts" }}

[model]
hidden = 16
layers = 1
max_len = 8
temperature = 0.2

[train]
epochs = 1
batch_size = 64
lr = 0.01
progress = false
valid_metric = "NDCG@5"

[eval]
ks = [1, 5]
"""
    )
    return tmp_path


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.kind=bert4rec", "train.sample_mode=last", "reasoning.kind=prl", "reasoning.warmup_epochs=0"],
        ["model.kind=bert4rec", "model.train_objective=cloze"],
        ["model.kind=gru4rec", "reasoning.kind=erl", "reasoning.warmup_epochs=0"],
    ],
    ids=["bert4rec-prl", "bert4rec-cloze", "gru4rec-erl"],
)
def test_train_and_reload(shop: Path, overrides: list[str]) -> None:
    assert main(["train", "shop.toml", *overrides, "--run-dir", "run"]) == 0
    results = json.loads((shop / "run" / "results.json").read_text())
    assert 0.0 <= results["test"]["metrics"]["NDCG@5"] <= 1.0
    cfg, model = load_run(shop / "run")
    assert cfg.model.kind == overrides[0].split("=")[1]
    states = model.encode(torch.tensor([[1, 2, 3]]), position_ids(3, cfg.model.max_len))
    assert states.shape == (1, model.reasoning_steps + 1, 16)
