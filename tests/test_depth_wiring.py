"""Adaptive depth wired in: ``eval.depth`` / ``--depth`` in ``thinkrec evaluate``, ``recommend`` (single and
batch) and ``serve`` (and the HTTP ``depth`` field), selectors fit on validation only and saved in the run
directory, the results file, and the paired timing benchmark on a tiny run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.eval import depth
from thinkrec.eval.evaluator import DepthPlan, EvalResult, evaluate
from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.runs import load_data, load_run, run_selector, selector_path

from helpers import train_walk_prl_run

OVERRIDES = ["reasoning.kind=prl", "reasoning.warmup_epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny PRL run (K = 2) on a small CSV log where users walk the catalogue, trained once per module."""
    root = tmp_path_factory.mktemp("depth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THINKREC_CACHE_DIR", str(root / "cache"))
        mp.chdir(root)
        train_walk_prl_run(root, n_users=80, n_items=20, length=10)
    yield root


@pytest.fixture()
def shop(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the trained run (its own ``depth/`` folder) in the test's working folder."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(trained / "cache"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copy(trained / "shop.toml", tmp_path / "shop.toml")
    return tmp_path


def _direct_ranks(run: Path, samples: str, steps: np.ndarray) -> np.ndarray:
    """Each sample's pessimistic rank under the scores of its given step, computed directly from the model:
    its states, that step's scores over the catalogue, the target's rank (no evaluator code)."""
    from thinkrec.data.batches import eval_histories, position_ids

    cfg, model = load_run(run)
    _, split = load_data(cfg)
    window = split.samples(samples)  # type: ignore[arg-type]
    inputs = torch.from_numpy(eval_histories(split, window, model.backbone.max_len))
    with torch.no_grad():
        states = model.encode(inputs, position_ids(inputs.shape[1], model.backbone.max_len))
        scores = model.score(states[torch.arange(len(steps)), torch.from_numpy(steps)])
    return target_ranks(scores, torch.from_numpy(window.targets - 1)).numpy()


@pytest.mark.parametrize("name", ["router", "entropy", "agree-kl", "fixed:1", "router-prefix"])
def test_evaluate_depth_ranks_with_the_selectors_chosen_steps(
    shop: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    capsys.readouterr()
    assert main(["evaluate", "run", "--depth", name, "--output", "report.json"]) == 0
    out = capsys.readouterr().out
    assert f"depth: {name}" in out and "steps used per sample: mean" in out and "fixed r_2 (K=2)" in out
    report = json.loads((shop / "report.json").read_text())
    found = report["depth"]
    assert found["selector"] == name and report["protocol"]["depth"].startswith(name)
    # the selector's metrics next to fixed K and the mean of steps, on the same samples
    steps = report["reasoning"]["steps"]
    assert found["fixed_k"]["metrics"] == pytest.approx(steps[-1]) and found["fixed_k"]["step"] == 2
    assert found["mean_of_steps"]["metrics"] == pytest.approx(report["reasoning"]["mean"])
    n = report["n_samples"]
    assert sum(found["steps_used"]["histogram"]) == pytest.approx(1.0) and found["steps_used"]["fixed_k"] == 2
    assert 0.0 <= found["steps_used"]["mean"] <= 2.0

    # the same choices, ranked from the chosen step's scores computed directly
    cfg, model = load_run("run")
    _, split = load_data(cfg)
    fitted = run_selector("run", name, model, cfg, fit=False)  # what evaluate saved (or needs no fit)
    result = evaluate(model, split, split.test, cfg.eval, depth=DepthPlan(selector=fitted.selector))
    assert result.depth is not None and result.depth.ranks is not None and result.depth.weights is not None
    chosen = result.depth.weights.argmax(axis=1)
    assert np.array_equal(result.depth.ranks, _direct_ranks(Path("run"), "test", chosen))
    assert metrics_from_ranks(result.depth.ranks, [5, 20]) == pytest.approx(found["metrics"])
    assert found["scored_with_step"] == pytest.approx(np.bincount(chosen, minlength=3) / n)
    # the choice is the selector's on the signals of each sample's own scores (float64 reference, same samples)
    if depth.needs_of(fitted.selector).signals:
        states = torch.stack([_states(model, split)[:, k] for k in range(3)], dim=1)
        scores = torch.stack([model.score(states[:, k]) for k in range(3)], dim=1)
        reference = fitted.selector.choose(depth.step_data(scores, states, split.test.positions))
        assert np.mean(reference.step == chosen) >= 0.97


def _states(model: Any, split: Any) -> torch.Tensor:
    from thinkrec.data.batches import eval_histories, position_ids

    inputs = torch.from_numpy(eval_histories(split, split.test, model.backbone.max_len))
    with torch.no_grad():
        return model.encode(inputs, position_ids(inputs.shape[1], model.backbone.max_len))


def test_a_fitted_selector_is_saved_once_and_reused(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = selector_path(shop / "run", "entropy", 2, "best", False)
    assert main(["evaluate", "run", "--depth", "entropy"]) == 0
    saved = json.loads(path.read_text())
    assert saved["key"]["checkpoint_sha256"] and saved["fit"]["split"] == "valid"
    assert saved["fit"]["n_samples"] == 80 and saved["fit"]["metric"] == "NDCG@5"
    assert "saved:" in capsys.readouterr().out
    stamp = path.stat().st_mtime_ns
    assert main(["evaluate", "run", "--depth", "entropy", "--split", "valid"]) == 0
    assert "loaded:" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp  # not fit again
    # another K or history masking is another fit, in its own file
    assert main(["evaluate", "run", "--depth", "entropy", "--mask-history"]) == 0
    assert selector_path(shop / "run", "entropy", 2, "best", True).exists()
    # a selector fit for other weights is stale: fit again
    saved["key"]["checkpoint_sha256"] = "0" * 64
    path.write_text(json.dumps(saved))
    assert main(["evaluate", "run", "--depth", "entropy"]) == 0
    assert "saved:" in capsys.readouterr().out
    assert json.loads(path.read_text())["key"]["checkpoint_sha256"] != "0" * 64


class _Sealed:
    """Stands for the test samples: any use raises."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a test sample was read ({name})")

    def __len__(self) -> int:
        raise AssertionError("a test sample was read")


@pytest.mark.parametrize("name", ["router", "router-prefix", "weights", "agree", "best-fixed"])
def test_fitting_reads_no_test_sample(shop: Path, name: str) -> None:
    """The fit behind ``--depth`` reads the validation window only: with the split's test samples sealed (any
    access raises) the fit succeeds, and gives the selector that the real split gives."""
    cfg, model = load_run("run")
    _, split = load_data(cfg)
    sealed = dataclasses.replace(split, test=_Sealed())
    fitted = run_selector("run", name, model, cfg, data=lambda: sealed)
    saved = selector_path("run", name, 2, "best", False)
    first = json.loads(saved.read_text())
    saved.unlink()
    again = run_selector("run", name, model, cfg, data=lambda: split)
    assert json.loads(saved.read_text())["selector"] == first["selector"]
    assert depth.selector_to_json(again.selector) == depth.selector_to_json(fitted.selector)


def test_evaluate_with_scrambled_test_targets_fits_the_same_router(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the CLI: scrambling the test targets changes the test metrics, never the fitted
    router or the choices it makes on test samples (and so the steps they use)."""
    assert main(["evaluate", "run", "--depth", "router", "--output", "a.json"]) == 0
    saved = selector_path("run", "router", 2, "best", False)
    router = json.loads(saved.read_text())["selector"]
    saved.unlink()
    import thinkrec.runs

    real = thinkrec.runs.load_data

    def scrambled(cfg: Any) -> Any:
        ds, split = real(cfg)
        targets = np.random.default_rng(0).permutation(split.test.targets)
        return ds, dataclasses.replace(split, test=dataclasses.replace(split.test, targets=targets))

    monkeypatch.setattr(thinkrec.runs, "load_data", scrambled)
    assert main(["evaluate", "run", "--depth", "router", "--output", "b.json"]) == 0
    assert json.loads(saved.read_text())["selector"] == router
    a, b = (json.loads((shop / f).read_text())["depth"] for f in ("a.json", "b.json"))
    assert a["steps_used"] == b["steps_used"] and a["scored_with_step"] == b["scored_with_step"]
    assert a["fit"]["valid_in_sample"] == b["fit"]["valid_in_sample"]


def test_bad_depth_names_and_models_are_clear_errors(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    valid = "choose one of: fixed[:k], mean, best-fixed, weights, agree, agree-kl, entropy, router, router-prefix"
    for argv in (
        ["evaluate", "run", "--depth", "routr"],
        ["recommend", "run", "--history", "3,4", "--depth", "routr"],
        ["recommend", "run", "--batch", "in.csv", "--output", "o.csv", "--depth", "routr"],
        ["serve", "run", "--depth", "routr"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "unknown depth selector 'routr'" in err and valid in err and "Traceback" not in err
    assert main(["evaluate", "run", "--depth", "fixed:5"]) == 2
    assert "0..2" in capsys.readouterr().err
    assert main(["train", "shop.toml", "train.epochs=1", "eval.depth=bogus", "--run-dir", "p"]) == 2
    assert "unknown depth selector 'bogus'" in capsys.readouterr().err
    assert main(["train", "shop.toml", "train.epochs=1", "eval.depth=router", "--run-dir", "p"]) == 2
    assert "needs reasoning.kind" in capsys.readouterr().err
    assert main(["train", "shop.toml", "train.epochs=1", "--run-dir", "plain"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "plain", "--depth", "mean"]) == 2
    err = capsys.readouterr().err
    assert "chooses among reasoning steps" in err and "Traceback" not in err


def test_recommend_and_batch_use_the_selectors_step(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thinkrec.serve.recommender import Recommender

    rec = Recommender.from_run("run")
    rec.set_depth("entropy")
    history = [rec.vocabulary.internal(i) for i in ("3", "4", "5")]
    top = rec.recommend([history], 3, per_step=True)
    assert top.depth == "entropy" and top.steps_used is not None and top.step_weights is not None
    chosen = int(top.step_weights[0].argmax())
    assert [i for i, _ in top.row(0)] == [i for i, _ in top.step_rows(0)[chosen]]  # the chosen step's top-K
    capsys.readouterr()
    assert main(["recommend", "run", "--history", "3,4,5", "-k", "3", "--depth", "entropy"]) == 0
    out = capsys.readouterr().out
    assert f"depth entropy: scored with r_{chosen}" in out
    (shop / "users.csv").write_text('user,items\nu1,"3 4 5"\nu2,"7 8"\n')
    batch = ["--batch", "users.csv", "--output", "top.csv", "-k", "3", "--depth", "entropy"]
    assert main(["recommend", "run", *batch]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["depth"] == "entropy" and 0 <= summary["steps_used_mean"] <= 2
    rows = (shop / "top.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows[:3]] == [str(rec.vocabulary.external_id(i)) for i, _ in top.row(0)]


def test_http_returns_the_selectors_top_k(shop: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")
    from fastapi.testclient import TestClient

    from thinkrec.serve.app import create_app
    from thinkrec.serve.recommender import Recommender

    assert main(["evaluate", "run", "--depth", "router"]) == 0  # fit once; the server reuses it
    client = TestClient(create_app("run", depth="entropy"), raise_server_exceptions=False, base_url="http://localhost")
    assert client.get("/health").json()["model"]["depth"] == "entropy"  # fit at start-up
    rec = Recommender.from_run("run")
    vocab = rec.vocabulary
    history = ["3", "4", "5", "6"]
    for name in ("router", "fixed:0", None):
        body: dict[str, Any] = {"history": history, "k": 4}
        if name is not None:
            body["depth"] = name
        response = client.post("/recommend", json=body)
        assert response.status_code == 200, response.text
        got = response.json()
        used = name or "entropy"  # the server's default
        assert got["depth"] == used and got["steps_used"] is not None and len(got["step_weights"]) == 3
        # directly: the selector's choice from this history's per-step scores, then that step's top-K
        fitted = rec.selector(used)
        assert fitted is not None
        inputs, positions = rec.encode_batch([[vocab.internal(i) or 0 for i in history]])
        with torch.no_grad():
            states = rec.model.encode(inputs, positions)
            scores = [rec.model.score(states[:, k]) for k in range(3)]
        signals = depth.block_signals(scores, states, depth.needs_of(fitted.selector))
        arrays = {key: value.double().numpy() for key, value in signals.items()}
        step = int(fitted.selector.choose(depth.signal_data(arrays, 3, [4])).step[0])
        assert got["step_weights"][step] == 1.0
        top = torch.topk(scores[step][0], 4)
        assert [it["item"] for it in got["items"]] == [vocab.external_id(int(i) + 1) for i in top.indices]
        assert [s["item"] for s in got["steps"][step]] == [it["item"] for it in got["items"]]
    # the server's default selector was fit for K = 2: a request for other steps gets the inference mode
    for steps in (0, 1):
        response = client.post("/recommend", json={"history": history, "k": 4, "reasoning_steps": steps})
        assert response.status_code == 200, response.text
        assert response.json()["depth"] is None
    plain = client.post("/recommend", json={"history": history, "k": 4, "depth": "none"}).json()
    assert plain["depth"] is None and plain["steps_used"] is None
    assert [it["item"] for it in plain["items"]] == [it["item"] for it in plain["steps"][-1]]  # PRL: r_K
    for bad, says in [
        ({"depth": "routr"}, "unknown depth selector 'routr'; choose one of"),
        ({"depth": 3}, "depth"),
        ({"depth": ""}, "depth"),
        ({"depth": "agree"}, "not fit for this run"),  # a request never starts a fit
        ({"depth": "fixed:9"}, "0..2"),
    ]:
        response = client.post("/recommend", json={"history": history, **bad})
        assert response.status_code == 422, (bad, response.text)
        assert says in response.json()["error"], response.json()


def test_training_with_eval_depth_reports_it_in_the_results_file(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(trained / "cache"))
    monkeypatch.chdir(trained)
    out = tmp_path / "run-depth"
    assert main(["train", "shop.toml", *OVERRIDES, "eval.depth=router-prefix", "--run-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for which in ("valid", "test"):
        found = results[which]["depth"]
        assert found["selector"] == "router-prefix" and results[which]["protocol"]["depth"].startswith("router-prefix")
        assert found["fit"]["split"] == "valid"
        saved = EvalResult.load(out / results[which]["ranks_file"])
        assert saved.depth is not None and saved.depth.ranks is not None and saved.depth.steps_used is not None
        assert metrics_from_ranks(saved.depth.ranks, [5, 20]) == pytest.approx(found["metrics"])
        assert float(saved.depth.steps_used.mean()) == pytest.approx(found["steps_used"]["mean"])
    # the same run under another depth setting resumes (eval.depth is operational, not the run's identity)
    assert main(["train", "shop.toml", *OVERRIDES, "eval.depth=none", "--run-dir", str(out)]) == 0
    assert "depth" not in json.loads((out / "results.json").read_text())["test"]


def test_paired_depth_benchmark_runs_on_a_tiny_run(shop: Path) -> None:
    from benchmarks.speed import depth_paired

    records = shop / "paired.jsonl"
    argv = ["run", "--depth", "entropy", "--rounds", "3", "--threads", "1", "--records", str(records)]
    assert depth_paired.main(argv) == 0
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    rounds = [r for r in lines if r["kind"] == "round"]
    summary = lines[-1]
    assert len(rounds) == 3 and [r["fixed_first"] for r in rounds] == [True, False, True]
    assert all(r["ratio"] == pytest.approx(r["selector"] / r["fixed_k"]) for r in rounds)
    assert summary["kind"] == "summary" and summary["depth"] == "entropy" and summary["goal"] == 1.05
    lo, hi = summary["median_ratio_95"]
    assert lo <= summary["median_ratio_of_rounds"] <= hi and summary["steps"] == 2
    assert 0.0 <= summary["steps_used_mean"] <= 2.0 and "provenance" in summary
    assert depth_paired.main(["run", "--depth", "nope", "--rounds", "1", "--records", str(records)]) == 2
