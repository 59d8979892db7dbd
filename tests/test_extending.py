"""Extending thinkrec from user code: a new objective and a new metric, registered from this file alone,
trained and evaluated through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.data.batches import TrainBatch
from thinkrec.eval import metrics
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives import LossOutput, Objective, ObjectiveContext, register_objective, unregister_objective
from thinkrec.objectives.cross_entropy import next_item_states

from helpers import write_walk_shop


class LabelSmoothedCE(Objective):
    """Full-softmax cross-entropy with label smoothing (an objective thinkrec does not ship)."""

    name = "smoothed"
    calls = 0

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing

    def __call__(self, model: SeqRecModel, batch: TrainBatch) -> LossOutput:
        LabelSmoothedCE.calls += 1
        users, targets = next_item_states(model, batch)
        logits = model.scorer(users, model.item_vectors()) / model.scorer.temperature
        loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=self.smoothing)
        return LossOutput(loss, {"smoothed_ce": float(loss.detach())})


def precision(ranks: np.ndarray, k: int) -> np.ndarray:
    """Precision@K with one relevant item: 1/K on a hit."""
    return np.where(ranks < k, 1.0 / k, 0.0)


@pytest.fixture()
def extended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_walk_shop(
        tmp_path,
        n_users=60,
        n_items=20,
        length=10,
        train='epochs = 2\nvalid_metric = "Precision@5"\n',
        eval="ks = [1, 5]\n",
    )
    register_objective("smoothed", lambda ctx: LabelSmoothedCE(float(ctx.options.get("smoothing", 0.1))))
    metrics.register_metric("Precision", precision)
    yield tmp_path
    unregister_objective("smoothed")
    metrics.unregister_metric("Precision")


def test_a_registered_objective_and_metric_train_and_evaluate_through_the_cli(
    extended: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "shop.toml", "train.loss=smoothed", "--run-dir", "run"]) == 0
    assert LabelSmoothedCE.calls > 0
    log = [json.loads(line) for line in (extended / "run" / "log.jsonl").read_text().splitlines()]
    assert all("smoothed_ce" in row for row in log)  # the objective's parts are logged
    results = json.loads((extended / "run" / "results.json").read_text())
    test = results["test"]["metrics"]
    assert test["Precision@5"] == pytest.approx(test["HR@5"] / 5)  # selected on it, reported with the others
    capsys.readouterr()
    assert main(["evaluate", "run"]) == 0
    printed = capsys.readouterr().out
    assert "Precision" in printed  # the printed table lists the registered metric


def test_an_unregistered_objective_or_metric_is_refused_when_the_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "ml100k-sasrec", "train.loss=focal"]) == 2
    assert "unknown objective 'focal'" in capsys.readouterr().err
    assert main(["train", "ml100k-sasrec", "train.valid_metric=Precision@10"]) == 2
    assert "unknown metric 'Precision@10'" in capsys.readouterr().err
    assert main(["train", "ml100k-sasrec", "train.loss=prl"]) == 2
    assert "reasoning.kind=prl" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_context_options_reach_a_registered_factory() -> None:
    from thinkrec.models.sasrec import SASRecConfig
    from thinkrec.objectives import build_objective
    from thinkrec.reasoning.config import NoReasoningConfig

    register_objective("smoothed", lambda ctx: LabelSmoothedCE(float(ctx.options.get("smoothing", 0.1))))
    try:
        ctx = ObjectiveContext(SASRecConfig(), NoReasoningConfig(), seed=1, options={"smoothing": 0.3})
        objective = build_objective("smoothed", ctx)
        assert isinstance(objective, LabelSmoothedCE) and objective.smoothing == 0.3
        with pytest.raises(ValueError, match="registered already"):
            register_objective("smoothed", lambda ctx: LabelSmoothedCE(0.0))
    finally:
        unregister_objective("smoothed")
