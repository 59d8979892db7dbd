"""Resuming an R²ec run (``checkpoints/resume.safetensors``): a run stopped after a saved step and trained
again gives the weights, log and results of an uninterrupted run, bit for bit on one thread; a damaged state
and another config are refused with a message. Tiny random Llamas built in code (CPU, one thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import write_tiny_llm_setup

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from safetensors.torch import load_file

from test_llm_honest import distinct_model
from test_llm_model import _setup
from thinkrec.cli.main import main
from thinkrec.errors import ThinkrecError
from thinkrec.llm import run as llm_run
from thinkrec.llm.config import load_llm_config
from thinkrec.llm.resume import resume_point, state_path
from thinkrec.llm.run import train_llm
from thinkrec.llm.trainer import LLMTrainer, StepLog
from thinkrec.train.checkpoint import CheckpointError, checkpoint_info


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One torch thread: the runs compared here are then the same computation, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it on the way out)."""


def kill_during_step(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Make step ``at`` do all its work (rollouts, update, item-table refresh: the model in memory is a step
    past anything saved) and then die before its log line and state are written."""
    real = LLMTrainer.step

    def step(self: LLMTrainer, examples: list[Any], number: int) -> StepLog:
        record = real(self, examples, number)
        if number == at:
            raise _Killed
        return record

    monkeypatch.setattr(LLMTrainer, "step", step)


def rows(run: Path) -> list[dict[str, Any]]:
    """The log without its timings (which differ between any two runs)."""
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("seconds")
        out.append(row)
    return out


def tensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_costs(selection: dict[str, Any]) -> dict[str, Any]:
    return {**selection, "history": [{k: v for k, v in h.items() if k != "cost"} for h in selection["history"]]}


CASES = {
    # RecPO: rollouts from the sampler's stream, a fixed item table refresh cadence, validation and best.*
    "recpo": ["recpo.refresh_every=2"],
    # the cold start's catalogue InfoNCE (its rows of the cached table go stale between steps)
    "no_reasoning": ["recpo.variant=no_reasoning", "recpo.negatives=catalogue"],
    # a fixed item side through a trained item head, with the popularity prior (both travel with the state)
    "prior_head": [
        "recpo.variant=no_reasoning",
        "recpo.negatives=catalogue",
        "recpo.item_side=fixed",
        "recpo.refresh_every=0",
        "model.item_prior=log_popularity",
        "model.item_head=linear",
    ],
}


@pytest.mark.parametrize("case", [*CASES, "init_from"])
def test_a_run_stopped_after_a_save_resumes_as_if_never_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    # 6 examples, 2 users a step: the data order starts a new permutation every 3 steps, so the state at step
    # 4 holds the rest of one; the stop in step 6 comes after step 5's log line and best.* (validated at 3, 6)
    common = ["recpo.steps=7", "recpo.save_every=2", "recpo.eval_every=3"]
    if case == "init_from":
        cold_cfg, split, _ = _setup([*common, *CASES["no_reasoning"], "recpo.steps=2"])
        train_llm(cold_cfg, tmp_path / "cold", model=distinct_model(), split=split, progress=False)
        overrides = [*common, *CASES["recpo"], f"init_from={tmp_path / 'cold'}"]
    else:
        overrides = [*common, *CASES[case]]
    cfg, split, _ = _setup(overrides)

    def fresh() -> Any:
        return distinct_model(item_head=cfg.model.item_head)

    straight = train_llm(cfg, tmp_path / "straight", model=fresh(), split=split, progress=False)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        kill_during_step(patch, at=6)
        with pytest.raises(_Killed):
            train_llm(cfg, run, model=fresh(), split=split, progress=False)
    assert checkpoint_info(run / "checkpoints", "resume")["llm_state"]["step"] == 4
    assert len(rows(run)) == 5 and not (run / "results.json").exists()
    if case == "prior_head":  # both are part of the state
        assert {"item_prior", "item_head.weight"} <= set(tensors(run, "resume"))
    if case == "init_from":  # a resumed run takes its weights from its state: the run it started from may be gone
        (tmp_path / "cold").rename(tmp_path / "cold-moved")

    resumed = train_llm(cfg, run, model=fresh(), split=split, progress=False)
    assert resumed["resumed_after_step"] == 4
    assert rows(run) == rows(tmp_path / "straight")  # cut back to step 4, then steps 5-7 again: no duplicate
    for name in ("last", "best", "resume"):  # the state too: weights, moments, table, best, random streams
        assert_same_tensors(tensors(run, name), tensors(tmp_path / "straight", name))
    assert resumed["test"]["ranks"] == straight["test"]["ranks"]
    assert without_costs(resumed["selection"]) == without_costs(straight["selection"])
    assert resumed["reward_second_half"] == straight["reward_second_half"]


def test_a_best_written_after_the_saved_state_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after a new best.* but before the next state: the best the state knows is written again."""
    cfg, split, _ = _setup(["recpo.variant=no_reasoning", "recpo.steps=4", "recpo.save_every=2", "recpo.eval_every=1"])
    run = tmp_path / "run"
    values = iter([0.1, 0.2, 0.3, 0.9])  # steps 0-3: every validation a new best; the state at 2 knows step 2's

    def fake_evaluate(self: LLMTrainer, examples: list[Any], progress: bool = False, rebuild: bool = True) -> Any:
        v = next(values)
        return {"metrics": {f"{m}@{k}": v for m in ("NDCG", "HR") for k in (5, 10, 20)}, "cost": {}, "n_samples": 1}

    with monkeypatch.context() as patch:
        patch.setattr(LLMTrainer, "evaluate", fake_evaluate)
        kill_during_step(patch, at=4)
        with pytest.raises(_Killed):
            train_llm(cfg, run, model=distinct_model(), split=split, progress=False, evaluate_test=False)
    ckpt = run / "checkpoints"
    assert json.loads((ckpt / "best.json").read_text())["step"] == 3  # ahead of the state (step 2)
    state = tensors(run, "resume")
    best_then = {k.removeprefix("best."): v for k, v in state.items() if k.startswith("best.")}

    def stop_after_restore(self: LLMTrainer, examples: list[Any], number: int) -> StepLog:
        raise _Killed  # look at the run directory as the resumed run left it before its first step

    with monkeypatch.context() as patch:
        patch.setattr(LLMTrainer, "step", stop_after_restore)
        with pytest.raises(_Killed):
            train_llm(cfg, run, model=distinct_model(), split=split, progress=False, evaluate_test=False)
    assert json.loads((ckpt / "best.json").read_text())["step"] == 2
    assert_same_tensors(tensors(run, "best"), best_then)
    assert len(rows(run)) == 2


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-resume")
    return write_tiny_llm_setup(
        root, n_users=6, train_users=4, eval_users=3, users_per_step=2, extra_model="threads = 1"
    )


def train(toy: Path, run: Path, *overrides: str) -> int:
    return main(["llm", "train", str(toy / "llm.toml"), *overrides, "--run-dir", str(run), "--no-progress"])


def test_a_finished_run_says_so_and_another_config_is_refused(
    toy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(toy / "cache"))
    run = toy / "finished"
    assert train(toy, run, "recpo.eval_every=1") == 0
    results = (run / "results.json").read_text()
    capsys.readouterr()
    # the same config (operational settings aside): nothing trained or evaluated again
    assert train(toy, run, "recpo.eval_every=1", "model.threads=2", "recpo.save_every=7") == 0
    out = capsys.readouterr().out
    assert "finished (2 of 2 steps trained" in out and "NDCG@10" in out
    assert (run / "results.json").read_text() == results
    # killed during the test evaluation (all steps saved, no results yet): only the end of the run again
    (run / "results.json").unlink()
    assert train(toy, run, "recpo.eval_every=1") == 0
    assert "resuming" in capsys.readouterr().out and len(rows(run)) == 2
    again, before = (json.loads(text)["test"] for text in ((run / "results.json").read_text(), results))
    assert again["ranks"] == before["ranks"] and again["metrics"] == before["metrics"]
    results = (run / "results.json").read_text()
    # another config: refused, the run directory untouched
    assert train(toy, run, "recpo.eval_every=1", "recpo.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "holds a run with a different config (recpo.lr)" in err and "recpo.resume=false" in err
    assert train(toy, run, "recpo.eval_every=1", "recpo.steps=1") == 2
    assert "has trained 2 steps, more than recpo.steps=1" in capsys.readouterr().err
    assert (run / "results.json").read_text() == results
    # more steps continue it; resume=false starts over with nothing of the run before left (no best.* now)
    assert train(toy, run, "recpo.eval_every=1", "recpo.steps=3") == 0
    assert "resuming" in capsys.readouterr().out and len(rows(run)) == 3
    assert train(toy, run, "recpo.resume=false") == 0
    assert len(rows(run)) == 2 and not (run / "checkpoints" / "best.json").exists()


def test_a_finished_run_given_more_steps_never_passes_off_its_old_results(
    toy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More steps for a finished run, killed in the new test evaluation: the rerun must test again, not
    return the results of the fewer steps as if they were this run's."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(toy / "cache"))
    run = toy / "more"
    assert train(toy, run, "recpo.steps=2") == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 2
    real = llm_run.evaluation

    def killed_in_test(trainer: Any, split: Any, cfg: Any, which: Any, progress: bool) -> dict[str, Any]:
        if which == "test":
            raise KeyboardInterrupt
        return real(trainer, split, cfg, which, progress)

    monkeypatch.setattr(llm_run, "evaluation", killed_in_test)
    assert train(toy, run, "recpo.steps=3") != 0
    assert not (run / "results.json").exists()  # the 2-step results are gone with the new steps
    monkeypatch.setattr(llm_run, "evaluation", real)
    capsys.readouterr()
    assert train(toy, run, "recpo.steps=3") == 0
    assert "finished" not in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 3


def test_a_damaged_state_is_a_message(
    toy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(toy / "cache"))
    run = toy / "damaged"
    assert train(toy, run, "recpo.save_every=1") == 0
    capsys.readouterr()
    path = state_path(run)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the tensors: the checksum catches it when the state loads
    path.write_bytes(bytes(data))
    assert train(toy, run, "recpo.steps=3") == 2
    err = capsys.readouterr().err
    assert "resume.safetensors: damaged checkpoint" in err and "checksum" in err and "recpo.resume=false" in err
    assert "Traceback" not in err
    path.write_bytes(bytes(data[: len(data) // 2]))  # cut short: its header no longer fits the file
    assert train(toy, run, "recpo.steps=3") == 2
    err = capsys.readouterr().err
    assert "resume.safetensors: damaged checkpoint" in err and "Traceback" not in err
    with pytest.raises(CheckpointError):  # the API raises the same error
        train_llm(load_llm_config(str(toy / "llm.toml"), ["recpo.steps=3"]), run, progress=False)
    assert train(toy, run, "recpo.steps=3", "recpo.resume=false") == 0  # the way out the message names
    assert len(rows(run)) == 3


def test_a_state_of_another_process_count_is_refused(tmp_path: Path) -> None:
    cfg, split, _ = _setup(["recpo.variant=no_reasoning", "recpo.save_every=1"])
    train_llm(cfg, tmp_path, model=distinct_model(), split=split, progress=False, evaluate_test=False)
    assert resume_point(cfg, tmp_path, world=1) is not None
    with pytest.raises(ThinkrecError, match="trained by 1 process"):
        resume_point(cfg, tmp_path, world=2)


def test_a_killed_process_resumes(toy: Path) -> None:
    """The real thing: ``thinkrec llm train`` killed (SIGKILL) once it has saved a state, then run again with
    the same command, ends where the uninterrupted command ends."""
    env = {**os.environ, "THINKREC_CACHE_DIR": str(toy / "cache"), "OMP_NUM_THREADS": "1"}
    overrides = ["recpo.steps=14", "recpo.save_every=2", "recpo.eval_every=5"]

    def command(run: Path) -> list[str]:
        cli = ["llm", "train", str(toy / "llm.toml"), *overrides, "--run-dir", str(run), "--no-progress"]
        return [sys.executable, "-m", "thinkrec.cli.main", *cli]

    def complete(run: Path) -> None:
        done = subprocess.run(command(run), env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]

    complete(toy / "whole")
    run = toy / "killed"
    process = subprocess.Popen(command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not state_path(run).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    saved = checkpoint_info(run / "checkpoints", "resume")["llm_state"]["step"]
    assert 2 <= saved < 14 and not (run / "results.json").exists(), "the run was not stopped before its end"
    complete(run)
    assert rows(run) == rows(toy / "whole")
    assert_same_tensors(tensors(run, "last"), tensors(toy / "whole", "last"))
    assert_same_tensors(tensors(run, "best"), tensors(toy / "whole", "best"))
    a, b = (json.loads((r / "results.json").read_text()) for r in (run, toy / "whole"))
    assert a["test"]["ranks"] == b["test"]["ranks"] and a["resumed_after_step"] == saved


def test_every_random_stream_is_put_back() -> None:
    """Python's, NumPy's and torch's global streams and the rollout sampler's, through the file's split into
    tensors and JSON (what nothing in a tiny run draws from is checked here)."""
    import random

    import numpy as np

    from thinkrec.llm.resume import Progress, capture_random, random_tensors, restore_random

    generator = torch.Generator().manual_seed(3)
    saved, plain = random_tensors([capture_random(generator)])
    progress = Progress(0, 1, 1, "cpu", [], {}, {}, [], 0.0, -1, [], 0.0, 0.0, json.loads(json.dumps(plain)))

    def draws() -> list[float]:
        return [
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=generator)),
        ]

    first = draws()
    restore_random(progress, saved, 0, generator)
    assert draws() == first
