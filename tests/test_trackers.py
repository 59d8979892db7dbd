"""Experiment trackers (``train.trackers``): TensorBoard event files read back, MLflow against a stand-in
module (mlflow itself is not installed here), a tracker registered from this file, resuming without
repeated steps, the missing-package error."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from thinkrec.cli.main import main
from thinkrec.config.loader import load_config
from thinkrec.config.schema import operational_keys
from thinkrec.runs import saved_config
from thinkrec.train.trackers import (
    Status,
    TrackedRun,
    Tracker,
    mlflow_name,
    register_tracker,
    tracker_names,
    unregister_tracker,
)
from thinkrec.train.trainer import Trainer

from helpers import write_walk_shop


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_walk_shop(tmp_path, n_users=60, n_items=20, length=10, eval="ks = [5, 10]\n")
    return tmp_path


def _train(*extra: str, run: str = "run") -> int:
    return main(["train", "shop.toml", "--run-dir", run, "progress=never", *extra])


def _log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# --- a tracker registered from user code -----------------------------------------------------------------


class Recorder(Tracker):
    """Every call, in order, into the class-wide list ``calls``."""

    calls: ClassVar[list[tuple[Any, ...]]] = []

    def start(self, run: TrackedRun) -> None:
        Recorder.calls.append(("start", run))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        Recorder.calls.append(("log", step, dict(metrics)))

    def close(self, status: Status) -> None:
        Recorder.calls.append(("close", status))


@pytest.fixture()
def recorder() -> Iterator[list[tuple[Any, ...]]]:
    Recorder.calls = []
    register_tracker("recorder", Recorder)
    yield Recorder.calls
    unregister_tracker("recorder")


def _steps(calls: list[tuple[Any, ...]], key: str) -> list[int]:
    return [call[1] for call in calls if call[0] == "log" and key in call[2]]


def test_a_registered_tracker_gets_the_config_every_epoch_the_test_metrics_and_the_close(
    shop: Path, recorder: list[tuple[Any, ...]]
) -> None:
    assert _train("train.epochs=3", "train.trackers=[recorder]") == 0
    run = shop / "run"
    assert [call[0] for call in recorder] == ["start", "log", "log", "log", "log", "close"]
    started: TrackedRun = recorder[0][1]
    assert started.run_dir.resolve() == run and not started.resumed and started.first_step == 0
    assert started.params["run_dir"] == "run"  # the run directory, also when --run-dir named it
    assert started.params["train.lr"] == 0.01 and started.params["model.hidden"] == 16
    assert started.params["train.trackers"] == ["recorder"]
    log = _log(run)
    for row, (_, step, metrics) in zip(log, recorder[1:4], strict=True):
        assert step == row["epoch"]
        assert metrics["train/loss"] == row["loss"]
        assert metrics["valid/NDCG@10"] == row["valid"]["NDCG@10"]
        assert metrics["time/train_seconds"] == row["train_seconds"]
        assert metrics["time/epoch_seconds"] == pytest.approx(row["train_seconds"] + row["eval_seconds"])
    _, step, final = recorder[4]
    results = json.loads((run / "results.json").read_text())
    assert step == 3  # after the last epoch (0, 1, 2)
    assert final["test/NDCG@10"] == results["test"]["metrics"]["NDCG@10"]
    assert recorder[-1] == ("close", "finished")


def test_a_resumed_run_logs_its_last_epoch_again_and_then_only_new_ones(
    shop: Path, recorder: list[tuple[Any, ...]]
) -> None:
    assert _train("train.epochs=2", "train.trackers=[recorder]") == 0
    recorder.clear()
    assert _train("train.epochs=4", "train.trackers=[recorder]") == 0
    started: TrackedRun = recorder[0][1]
    assert started.resumed and started.first_step == 1
    # epoch 1 again (a run killed before its trackers heard of it would lack it), then 2 and 3, then the test
    assert _steps(recorder, "train/loss") == [1, 2, 3]
    assert _steps(recorder, "test/NDCG@10") == [4]
    assert _log(shop / "run")[1]["loss"] == recorder[1][2]["train/loss"]


def test_trackers_are_closed_when_a_run_is_interrupted_or_fails(
    shop: Path, recorder: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    train_epoch = Trainer.train_epoch

    def stop_in_epoch_1(self: Trainer, epoch: int) -> dict[str, float]:
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_1)
    assert _train("train.epochs=3", "train.trackers=[recorder]") == 130
    assert _steps(recorder, "train/loss") == [0] and recorder[-1] == ("close", "interrupted")

    def broken(self: Trainer, epoch: int) -> dict[str, float]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Trainer, "train_epoch", broken)
    recorder.clear()
    with pytest.raises(RuntimeError, match="a bug"):
        _train("train.epochs=3", "train.trackers=[recorder]")
    assert recorder[-1] == ("close", "failed")


def test_trackers_are_operational_and_checked_when_the_config_loads(
    shop: Path, recorder: list[tuple[Any, ...]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert "train.trackers" in operational_keys()  # another tracker does not make another run
    assert load_config(None, ["train.trackers=recorder"]).train.trackers == ["recorder"]  # one name: a list
    assert {"tensorboard", "mlflow", "recorder"} <= set(tracker_names())
    assert _train("train.trackers=[tensorbord]") == 2
    err = capsys.readouterr().err
    assert "train.trackers: unknown tracker 'tensorbord'; did you mean 'tensorboard'?" in err
    assert _train("train.trackers=[recorder, recorder]") == 2
    assert "'recorder' is named twice" in capsys.readouterr().err
    assert not (shop / "run").exists()
    # a saved run loads without the trackers it was trained with (evaluate, serve): they are not needed there
    assert _train("train.epochs=1", "train.trackers=[recorder]") == 0
    unregister_tracker("recorder")
    assert saved_config(shop / "run").train.trackers == ["recorder"]
    register_tracker("recorder", Recorder)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_tracker_whose_package_is_missing_stops_the_run_before_anything_is_written(
    name: str, shop: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: `import name` fails
    assert _train(f"train.trackers=[{name}]") == 2
    err = capsys.readouterr().err
    assert f"pip install 'thinkrec[{name}]'" in err and f"tracker '{name}' needs the Python package {name}" in err
    assert "Traceback" not in err and err.count("invalid configuration") == 1
    assert not (shop / "run").exists()


# --- TensorBoard: the event files, read back ------------------------------------------------------------


def _events(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events


def _scalar_steps(events: Any, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def test_tensorboard_event_files_hold_every_epoch_and_the_test_metrics(shop: Path) -> None:
    pytest.importorskip("tensorboard")
    assert _train("train.epochs=3", "train.trackers=tensorboard") == 0
    run = shop / "run"
    events = _events(run)
    log = _log(run)
    assert _scalar_steps(events, "train/loss") == [0, 1, 2]
    losses = [event.value for event in events.Scalars("train/loss")]
    assert losses == pytest.approx([row["loss"] for row in log], rel=1e-6)  # stored as float32
    valid = [event.value for event in events.Scalars("valid/NDCG@10")]
    assert valid == pytest.approx([row["valid"]["NDCG@10"] for row in log], rel=1e-6)
    assert {"valid/HR@5", "valid/MRR@10", "time/train_seconds", "time/eval_seconds"} <= set(events.Tags()["scalars"])
    test = json.loads((run / "results.json").read_text())["test"]["metrics"]
    [final] = events.Scalars("test/NDCG@10")
    assert final.step == 3 and final.value == pytest.approx(test["NDCG@10"], rel=1e-6)
    assert any(tag.startswith("config") for tag in events.Tags()["tensors"])  # the settings, as a text table


def test_tensorboard_resume_adds_no_duplicate_steps(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    train_epoch = Trainer.train_epoch

    def stop_in_epoch_2(self: Trainer, epoch: int) -> dict[str, float]:
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", stop_in_epoch_2)
        assert _train("train.epochs=4", "train.trackers=tensorboard") == 130  # epochs 0 and 1 done
    assert _train("train.epochs=4", "train.trackers=tensorboard") == 0  # resumes: epoch 1 again, then 2, 3
    assert _train("train.epochs=5", "train.trackers=tensorboard") == 0  # a finished run continued: epoch 4
    run = shop / "run"
    events = _events(run)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one file per start
    assert _scalar_steps(events, "train/loss") == [0, 1, 2, 3, 4]
    assert [event.value for event in events.Scalars("train/loss")] == pytest.approx(
        [row["loss"] for row in _log(run)], rel=1e-6
    )
    assert _scalar_steps(events, "test/NDCG@10") == [5]  # the test after 4 epochs is purged with the resume
    # starting over (train.resume=false) starts the records over
    assert _train("train.epochs=1", "train.trackers=tensorboard", "train.resume=false") == 0
    assert _scalar_steps(_events(run), "train/loss") == [0]


def test_tensorboard_logs_every_reasoning_step(shop: Path) -> None:
    pytest.importorskip("tensorboard")
    reasoning = ["reasoning.kind=prl", "reasoning.warmup_epochs=1", "train.epochs=2"]
    assert _train(*reasoning, "train.trackers=tensorboard") == 0
    tags = set(_events(shop / "run").Tags()["scalars"])
    for step in ("r_0", "r_1", "r_2"):
        assert f"valid/{step}/NDCG@10" in tags and f"test/{step}/NDCG@10" in tags
    assert "train/loss" in tags and len([tag for tag in tags if tag.startswith("train/")]) > 1  # PRL's parts


# --- MLflow, against a stand-in module that records its calls -------------------------------------------

# MLflow's own rule for metric and parameter names (mlflow.utils.validation)
MLFLOW_NAMES = re.compile(r"^[/\w.\- :]*$")


class FakeMLflow(types.ModuleType):
    """The part of the ``mlflow`` module thinkrec calls, recording each call and checking names as MLflow
    does; runs live in ``runs`` (id -> params, metrics as (key, step, value), status)."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.calls: list[tuple[Any, ...]] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.active: list[str] = []

    def active_run(self) -> Any:
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=self.active[-1])) if self.active else None

    def start_run(self, run_id: str | None = None, run_name: str | None = None, nested: bool = False) -> Any:
        self.calls.append(("start_run", run_id, run_name, nested))
        if self.active and not nested:
            raise RuntimeError("Run is already active")
        if run_id is None:
            run_id = f"run{len(self.runs)}"
            self.runs[run_id] = {"name": run_name, "params": {}, "metrics": [], "status": "RUNNING"}
        elif run_id not in self.runs:
            raise RuntimeError(f"Run '{run_id}' not found")
        self.runs[run_id]["status"] = "RUNNING"
        self.active.append(run_id)
        return self.active_run()

    def log_params(self, params: dict[str, Any]) -> None:
        self.calls.append(("log_params", dict(params)))
        run = self.runs[self.active[-1]]
        for key, value in params.items():
            assert MLFLOW_NAMES.match(key), key
            if key in run["params"] and run["params"][key] != str(value):
                raise RuntimeError(f"Changing param values is not allowed: {key}")
            run["params"][key] = str(value)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(("log_metrics", step))
        for key, value in metrics.items():
            assert MLFLOW_NAMES.match(key), key
            self.runs[self.active[-1]]["metrics"].append((key, step, value))

    def end_run(self, status: str = "FINISHED") -> None:
        self.calls.append(("end_run", status))
        self.runs[self.active.pop()]["status"] = status


@pytest.fixture()
def fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> FakeMLflow:
    fake = FakeMLflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    return fake


def test_mlflow_gets_params_metrics_by_step_and_the_end_of_the_run(shop: Path, fake_mlflow: FakeMLflow) -> None:
    assert _train("train.epochs=2", "train.trackers=mlflow") == 0
    [(run_id, mlrun)] = fake_mlflow.runs.items()
    assert mlrun["name"] == "run" and mlrun["status"] == "FINISHED" and not fake_mlflow.active
    assert mlrun["params"]["train.lr"] == "0.01" and mlrun["params"]["eval.ks"] == "[5, 10]"
    metrics = mlrun["metrics"]
    loss = [(step, value) for key, step, value in metrics if key == "train/loss"]
    assert loss == [(row["epoch"], row["loss"]) for row in _log(shop / "run")]
    test = json.loads((shop / "run" / "results.json").read_text())["test"]["metrics"]
    assert [(step, value) for key, step, value in metrics if key == "test/NDCG_10"] == [(2, test["NDCG@10"])]
    assert mlflow_name("valid/r_1/NDCG@10") == "valid/r_1/NDCG_10"
    assert json.loads((shop / "run" / "mlflow.json").read_text())["run_id"] == run_id


def test_mlflow_resume_continues_its_run_without_repeated_steps(shop: Path, fake_mlflow: FakeMLflow) -> None:
    assert _train("train.epochs=2", "train.trackers=mlflow") == 0
    # more epochs, and another operational value: MLflow refuses changed parameters, so none is logged again
    assert _train("train.epochs=3", "train.trackers=mlflow", "device=cpu") == 0
    [(run_id, mlrun)] = fake_mlflow.runs.items()  # the same MLflow run, continued
    assert [call for call in fake_mlflow.calls if call[0] == "start_run"][1][1] == run_id
    pairs = [(key, step) for key, step, _ in mlrun["metrics"]]
    assert len(pairs) == len(set(pairs))  # no (metric, step) twice
    assert [step for key, step in pairs if key == "train/loss"] == [0, 1, 2]
    assert [step for key, step in pairs if key == "test/NDCG_10"] == [2, 3]  # after 2 epochs, after 3
    assert mlrun["status"] == "FINISHED" and mlrun["params"]["train.epochs"] == "2"  # as first logged
    # starting over, even without trackers, forgets the MLflow run: a later resume with mlflow starts a new one
    assert _train("train.epochs=1", "train.resume=false") == 0
    assert not (shop / "run" / "mlflow.json").exists()


def test_mlflow_run_is_ended_as_killed_on_ctrl_c(
    shop: Path, fake_mlflow: FakeMLflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Trainer, epoch: int) -> dict[str, float]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert _train("train.trackers=mlflow") == 130
    assert fake_mlflow.calls[-1] == ("end_run", "KILLED") and not fake_mlflow.active
