"""Reasoning end to end: config, ``thinkrec train PRESET reasoning.kind=...``, ``load_run``, ``evaluate`` per
step (with ``--steps``), ``recommend --show-steps``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thinkrec.cli.main import main
from thinkrec.config.loader import load_config, preset_names
from thinkrec.data.split import SplitConfig, time_cut_points
from thinkrec.errors import ConfigError
from thinkrec.eval.evaluator import EvalResult
from thinkrec.eval.metrics import metrics_from_ranks
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.runs import load_run

from helpers import random_dataset, write_walk_csv


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small CSV log where users walk the catalogue in steps of +1, and a config for it."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_walk_csv(tmp_path, n_users=80, n_items=20, length=10)
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
epochs = 3
batch_size = 32
lr = 0.01
progress = false
valid_metric = "NDCG@5"

[eval]
ks = [1, 5]
"""
    )
    return tmp_path


def test_train_prl_then_load_evaluate_per_step_and_recommend(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["reasoning.kind=prl", "reasoning.warmup_epochs=1", "reasoning.max_steps=3"]
    assert main(["train", "shop.toml", *overrides, "--run-dir", "run"]) == 0
    results = json.loads((shop / "run" / "results.json").read_text())
    test = results["test"]
    assert test["protocol"]["reasoning"] == "prl, K=2 steps, user vector: last"
    steps = test["reasoning"]
    assert len(steps["steps"]) == 3 and steps["mode"] == "last"
    assert test["metrics"] == steps["steps"][-1]  # PRL infers with r_K
    for metric in ("NDCG@5", "HR@5", "HR@1"):  # the oracle is at least as good as every single step
        assert steps["oracle"][metric] >= max(row[metric] for row in steps["steps"]) - 1e-12
    assert "analysis, not a method" in steps["oracle_note"]
    # every sample's rank at every step is saved beside the metrics, and gives the same numbers
    for which in ("valid", "test"):
        saved = EvalResult.load(shop / "run" / results[which]["ranks_file"])
        assert saved.step_ranks.shape == (3, results[which]["n_samples"]) and saved.mode == "last"
        assert saved.metrics(results[which]["protocol"]["ks"]) == pytest.approx(results[which]["metrics"])
        assert metrics_from_ranks(saved.step_ranks[0], [5])["NDCG@5"] == pytest.approx(
            results[which]["reasoning"]["steps"][0]["NDCG@5"]
        )

    cfg, model = load_run("run")
    assert cfg.reasoning.kind == "prl" and cfg.eval.inference == "last"
    assert isinstance(model.reasoner, LatentReasoner) and model.reasoner.steps == 2
    assert model.reasoner.rpe.shape == (3, 16)

    capsys.readouterr()
    assert main(["evaluate", "run", "--steps", "3", "--output", "k3.json"]) == 0
    out = capsys.readouterr().out
    assert "r_3 (last)" in out and "oracle (analysis, not a method)" in out and "mean of r_0..r_K" in out
    assert (shop / "run" / "steps-test-K3.png").stat().st_size > 1000
    assert len(json.loads((shop / "k3.json").read_text())["reasoning"]["steps"]) == 4
    assert main(["evaluate", "run", "--split", "valid"]) == 0
    assert (shop / "run" / "steps-valid.png").exists()
    assert main(["evaluate", "run", "--steps", "4"]) == 2
    assert "reasoning position embeddings for 0..3" in capsys.readouterr().err

    assert main(["recommend", "run", "--history", "3,4,5,6", "-k", "3", "--show-steps"]) == 0
    out = capsys.readouterr().out
    assert "top-3 of every reasoning step" in out and "r_0 (backbone)" in out and "r_1->r_2:" in out


def test_erl_infers_with_the_mean_and_plain_models_cannot_reason(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "train",
                "shop.toml",
                "reasoning.kind=erl",
                "reasoning.warmup_epochs=1",
                "train.epochs=2",
                "--run-dir",
                "erl",
            ]
        )
        == 0
    )
    results = json.loads((shop / "erl" / "results.json").read_text())
    assert results["test"]["metrics"] == results["test"]["reasoning"]["mean"]
    assert json.loads((shop / "erl" / "config.json").read_text())["eval"]["inference"] == "mean"
    assert main(["train", "shop.toml", "train.epochs=1", "--run-dir", "plain"]) == 0
    assert "reasoning" not in json.loads((shop / "plain" / "results.json").read_text())["test"]
    capsys.readouterr()
    assert main(["evaluate", "plain", "--steps", "2"]) == 2
    assert "no reasoner" in capsys.readouterr().err


def test_reasoning_config_checks_and_defaults() -> None:
    cfg = load_config(None, ["reasoning.kind=prl", "train.seed=5"])
    assert cfg.default_run_dir() == "runs/dataset-sasrec-prl-s5" and cfg.eval.inference == "last"
    assert load_config(None, ["reasoning.kind=erl"]).eval.inference == "mean"
    assert load_config(None, ["reasoning.kind=erl", "eval.inference=last"]).eval.inference == "last"
    assert load_config(None).eval.inference == "last"
    with pytest.raises(ConfigError, match=r"use train\.loss=ce"):
        load_config(None, ["reasoning.kind=erl", "train.loss=sampled"])
    with pytest.raises(ConfigError, match=r"max_steps \(1\) must be >= reasoning.steps \(2\)"):
        load_config(None, ["reasoning.kind=prl", "reasoning.max_steps=1"])
    with pytest.raises(ConfigError, match=r"inference_step in 0\.\.2"):
        load_config(None, ["reasoning.kind=prl", "eval.inference=step", "eval.inference_step=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'reasoning\.erl_lambda'"):
        load_config(None, ["reasoning.erl_lamda=0.1"])


def test_rearec_presets_exist_and_follow_the_papers_time_protocol() -> None:
    names = set(preset_names())
    for data in ("ml100k", "beauty", "game"):
        for protocol in ("loo", "time"):
            for model, kind in (("sasrec", "none"), ("sasrec-erl", "erl"), ("sasrec-prl", "prl")):
                name = f"{data}-{protocol}-{model}"
                assert name in names
                cfg = load_config(name)
                assert cfg.reasoning.kind == kind and cfg.model.hidden == 64
                assert cfg.data.split.kind == protocol
                if protocol == "time":
                    assert (cfg.data.split.valid_cut, cfg.data.split.test_cut) == (0.8, 0.9)
                    assert cfg.data.split.cut_unit == "interactions"
                    assert cfg.eval.ks == [10, 20] and cfg.train.valid_metric == "NDCG@20"
                    assert not cfg.eval.mask_history


def test_time_cuts_by_share_of_interactions() -> None:
    """cut_unit='interactions': 80% / 10% / 10% of the interactions, whatever the time span looks like."""
    ds = random_dataset(n_users=200, n_items=40, seed=3)
    skewed = (np.random.default_rng(0).exponential(1.0, ds.n_interactions) ** 3 * 1e6).astype(np.int64)
    ds.timestamps[:] = np.concatenate([np.sort(skewed[ds.offsets[u] : ds.offsets[u + 1]]) for u in range(ds.n_users)])
    cfg = SplitConfig(kind="time", valid_cut=0.8, test_cut=0.9, cut_unit="interactions")
    t_valid, t_test = time_cut_points(ds, cfg)
    assert abs(np.mean(ds.timestamps < t_valid) - 0.8) < 0.05
    assert abs(np.mean(ds.timestamps >= t_test) - 0.1) < 0.05
    span = time_cut_points(ds, cfg.model_copy(update={"cut_unit": "quantile"}))
    assert span != (t_valid, t_test)


def test_a_reasoning_run_never_reports_a_warm_up_checkpoint(
    shop: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation is made best during the warm-up (perfect ranks while the plain backbone trains): the run
    still reports an epoch after it, and its log shows every step's metrics per epoch."""
    from thinkrec.train import trainer as trainer_module

    real = trainer_module.evaluate
    calls: list[int] = []

    def warm_up_looks_best(*args: object, **kwargs: object) -> EvalResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) <= 2:  # epochs 0 and 1: the warm-up
            zero = np.zeros_like(result.ranks)
            return EvalResult(zero, np.zeros_like(result.step_ranks), zero, result.mode)
        return result

    monkeypatch.setattr(trainer_module, "evaluate", warm_up_looks_best)
    overrides = ["reasoning.kind=erl", "reasoning.warmup_epochs=2", "train.epochs=4", "train.patience=1"]
    assert main(["train", "shop.toml", *overrides, "--run-dir", "erl"]) == 0
    results = json.loads((shop / "erl" / "results.json").read_text())
    assert results["best_epoch"] >= 2
    log = [json.loads(line) for line in (shop / "erl" / "log.jsonl").read_text().splitlines()]
    assert [row.get("warmup", False) for row in log] == [True, True, False, False]
    assert log[0]["valid"]["NDCG@5"] == 1.0 > log[results["best_epoch"]]["valid"]["NDCG@5"]
    for row in log:  # r_0 .. r_K and their mean, every epoch, with every metric
        assert list(row["valid_steps"]) == ["r_0", "r_1", "r_2", "mean"]
        assert row["valid_steps"]["mean"].keys() == row["valid"].keys()
    # ERL infers with the mean of the steps: the logged metric is the mean's
    assert log[-1]["valid"] == log[-1]["valid_steps"]["mean"]
    assert {"ce_r0"} <= log[0].keys() and {"ce_mean", "kl"} <= log[-1].keys()
    assert (shop / "erl" / "curve.png").stat().st_size > 0


def test_a_plain_run_logs_no_step_metrics(shop: Path) -> None:
    assert main(["train", "shop.toml", "train.epochs=1", "--run-dir", "plain"]) == 0
    row = json.loads((shop / "plain" / "log.jsonl").read_text().splitlines()[0])
    assert "valid" in row and "valid_steps" not in row and "warmup" not in row


def test_the_plots_mark_warm_up_and_best_epoch_and_give_each_step_metric_a_panel(tmp_path: Path) -> None:
    from thinkrec.eval.steps import plot_steps
    from thinkrec.train.trainer import plot_curves

    def png_size(path: Path) -> tuple[int, int]:
        header = path.read_bytes()[16:24]  # the IHDR chunk's width and height
        return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")

    steps = {"r_0": {"NDCG@5": 0.1}, "r_1": {"NDCG@5": 0.2}, "mean": {"NDCG@5": 0.15}}
    history = [
        {"epoch": 0, "loss": 3.0, "ce_r0": 3.0, "warmup": True, "valid": {"NDCG@5": 0.3}, "valid_steps": steps},
        {"epoch": 1, "loss": 2.0, "ce_mean": 2.1, "kl": 0.5, "valid": {"NDCG@5": 0.2}, "valid_steps": steps},
    ]
    plot_curves(history, tmp_path / "curve.png", "NDCG@5", best_epoch=1)
    assert png_size(tmp_path / "curve.png") == (800, 700)
    report = {
        "steps": [{"NDCG@5": 0.1, "HR@5": 0.2}, {"NDCG@5": 0.2, "HR@5": 0.3}],
        "mean": {"NDCG@5": 0.15, "HR@5": 0.25},
        "oracle": {"NDCG@5": 0.25, "HR@5": 0.35},
        "mode": "last",
    }
    plot_steps(report, tmp_path / "one.png", ["NDCG@5"])
    plot_steps(report, tmp_path / "two.png", ["NDCG@5", "HR@5"])
    assert png_size(tmp_path / "two.png")[0] == 2 * png_size(tmp_path / "one.png")[0]  # one panel per metric


RESEARCH_CODE_SETUP = [
    "reasoning.kind=prl",
    "reasoning.rcl_view=reencode",
    "reasoning.step_ce=mean",
    "reasoning.rcl_similarity=dot",
    "reasoning.warmup_trains=reasoning",
    "model.dropout=0.5",
    "model.attn_dropout=0.5",
    "model.input_dropout=0.2",
    "model.ffn_dropout=false",
    "model.norm=post",
    "model.positions=from_start",
]


def test_the_research_code_setup_trains(shop: Path) -> None:
    args = ["train", "shop.toml", *RESEARCH_CODE_SETUP, "reasoning.warmup_epochs=1", "train.epochs=2"]
    assert main([*args, "--run-dir", "prl"]) == 0
    log = [json.loads(line) for line in (shop / "prl" / "log.jsonl").read_text().splitlines()]
    assert log[0].keys() >= {"ce_last", "ce_steps", "warmup"} and "rcl" not in log[0]  # a reasoning warm-up
    assert "rcl" in log[1] and np.isfinite(log[1]["loss"])


def test_a_run_whose_config_json_has_the_old_flat_reasoning_section_resumes_and_loads(shop: Path) -> None:
    args = ["train", "shop.toml", "reasoning.kind=erl", "reasoning.warmup_epochs=1", "train.epochs=2"]
    assert main([*args, "--run-dir", "erl"]) == 0
    saved = json.loads((shop / "erl" / "config.json").read_text())
    # what the earlier flat schema wrote: every key of every kind, and none of the keys added since
    saved["reasoning"] = {
        "kind": "erl",
        "steps": 2,
        "max_steps": None,
        "tau": None,
        "erl_lambda": 0.01,
        "prl_alpha": 2.0,  # a PRL setting that had no effect in an ERL run
        "noise_std": 0.01,
        "rcl_weight": 1.0,
        "rcl_similarity": "cosine",
        "warmup_epochs": 1,
        "normalise_feedback": True,
    }
    for key in ("input_dropout", "ffn_dropout"):
        saved["model"].pop(key)
    (shop / "erl" / "config.json").write_text(json.dumps(saved))
    assert main([*args, "--run-dir", "erl"]) == 0  # the same config: resuming is allowed
    cfg, model = load_run(shop / "erl")
    assert cfg.reasoning.kind == "erl" and isinstance(model.reasoner, LatentReasoner)
