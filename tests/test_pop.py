"""The most-popular baseline (``model.kind = "pop"``): its ranking against counts computed here, its run
directory through the CLI (train, evaluate, recommend, load_run), the popularity row beside every results
table, and the demo on a tiny setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.data.split import SplitConfig, make_split
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.popularity import popularity_report
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.pop import Popularity, popularity_model
from thinkrec.runs import load_run
from thinkrec.serve.service import load_recommender

from helpers import random_dataset, write_walk_csv


def expected_order(split_counts: list[int]) -> list[int]:
    """0-based items by count descending, ties by the lower id first."""
    return sorted(range(len(split_counts)), key=lambda i: (-split_counts[i], i))


@pytest.mark.parametrize("mask_history", [False, True])
def test_ranking_equals_training_counts(mask_history: bool) -> None:
    ds = random_dataset(n_users=60, n_items=25, min_len=3, max_len=12, seed=3)
    split = make_split(ds, SplitConfig(kind="loo"))
    # counted here from the raw sequences: each user's first train_lengths items
    counts = [0] * ds.n_items
    for user in range(ds.n_users):
        start = int(ds.offsets[user])
        for item in ds.items[start : start + int(split.train_lengths[user])]:
            counts[int(item) - 1] += 1
    order = expected_order(counts)
    assert len(set(counts)) < len(counts)  # ties occur, so the tie rule is exercised

    model = popularity_model(split, max_len=6)
    assert isinstance(model.backbone, Popularity)
    assert model.backbone.counts.tolist() == counts
    scores = model.item_vectors()[:, 0]
    assert np.argsort(-scores.numpy(), kind="stable").tolist() == order

    cfg = EvalConfig(ks=[1, 5], mask_history=mask_history)
    result = evaluate(model, split, split.test, cfg)
    for i in range(len(split.test)):
        user, target = int(split.test.users[i]), int(split.test.targets[i]) - 1
        position = int(split.test.positions[i])
        start = int(ds.offsets[user])
        history = {int(x) - 1 for x in ds.items[start + max(0, position - 6) : start + position]}
        # place in the popularity order; masked items score -inf (a masked target too); ties pessimistic
        score = {x: -float("inf") if mask_history and x in history else -order.index(x) for x in order}
        expected = sum(1 for x in order if x != target and score[x] >= score[target])
        assert result.ranks[i] == expected, i
    report = popularity_report(split, split.test, cfg, 6)
    assert report["metrics"] == result.metrics(cfg.ks)


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_walk_csv(tmp_path, n_users=60, n_items=20, length=10)
    return tmp_path


def shop_source(folder: Path) -> list[str]:
    """Overrides that point a preset at the tiny walk log."""
    return [
        "data.name=shop",
        "data.source.format=table",
        f"data.source.path={folder / 'events.csv'}",
        "data.source.time_col=ts",
        "data.prepare.user_min=1",
        "data.prepare.item_min=1",
    ]


def test_pop_run_trains_evaluates_and_recommends(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "ml100k-time-pop", *shop_source(shop), "progress=never", "--run-dir", "pop"]) == 0
    run = shop / "pop"
    for name in ("config.json", "checkpoints/best.safetensors", "results.json", "test_ranks.npz", "log.jsonl"):
        assert (run / name).exists(), name
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 0 and results["stopped"] == "closed_form"
    assert results["test"]["protocol"]["split"] == "global-time"
    # a pop run's own metrics are the popularity row's
    assert results["popularity"]["test"]["metrics"] == results["test"]["metrics"]
    assert set(results["popularity"]) == {"valid", "test"}

    cfg, model = load_run(run)
    assert cfg.model.kind == "pop" and isinstance(model.backbone, Popularity)
    assert int(model.backbone.counts.sum()) > 0
    capsys.readouterr()

    assert main(["evaluate", "pop", "--mask-history", "--output", "eval.json"]) == 0
    out = capsys.readouterr().out
    assert "popular @10" in out and "popular @20" in out
    written = json.loads((shop / "eval.json").read_text())
    assert written["popularity"]["metrics"] == written["metrics"]
    assert written["protocol"]["history_masking"] != results["test"]["protocol"]["history_masking"]

    assert main(["recommend", "pop", "--history", "1,2", "-k", "3"]) == 0
    out = capsys.readouterr().out
    top = [line.split()[1] for line in out.split("top-3:")[1].strip().splitlines()[2:]]
    # the serving path ranks like the evaluation: training counts, ties by the lower internal id
    rec = load_recommender(str(run))
    order = expected_order(model.backbone.counts.tolist())
    assert top == [str(rec.vocabulary.external_id(i + 1)) for i in order[:3]]


def test_pop_rejects_reasoning(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "ml100k-time-pop", *shop_source(shop), "reasoning.kind=prl"]) == 2
    err = capsys.readouterr().err
    assert "model.kind='pop' cannot take reasoning.kind='prl'" in err and "reasoning.kind=none" in err


def test_sasrec_results_and_evaluate_carry_the_popularity_row(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["model.hidden=8", "model.layers=1", "model.max_len=6", "train.stride=6", "train.epochs=1"]
    tiny.append("progress=never")
    assert main(["train", "ml100k-time-sasrec", *shop_source(shop), *tiny, "--run-dir", "sas"]) == 0
    out = capsys.readouterr().out
    assert "popular @10" in out
    results = json.loads((shop / "sas" / "results.json").read_text())
    assert (
        main(["train", "ml100k-time-pop", *shop_source(shop), "model.max_len=6", "train.stride=6", "--run-dir", "pop"])
        == 0
    )
    pop = json.loads((shop / "pop" / "results.json").read_text())
    for which in ("valid", "test"):
        assert results["popularity"][which]["metrics"] == pop[which]["metrics"]
        assert results["popularity"][which]["n_samples"] == results[which]["n_samples"]


def test_demo_on_a_tiny_setting(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --epochs 1 with the PRL preset's 2 warm-up epochs: the demo shortens the warm-up itself
    tiny = ["model.hidden=8", "model.layers=1", "model.max_len=6", "train.stride=6"]
    assert main(["demo", "--epochs", "1", "--run-dir", "demo", *shop_source(shop), *tiny, "progress=never"]) == 0
    out = capsys.readouterr().out
    for name in ("pop", "sasrec", "sasrec-prl"):
        assert (shop / "demo" / name / "results.json").exists(), name
    for label in (
        "most popular",
        "SASRec",
        "SASRec + PRL (K=2)",
        "fit in closed form",
        "r_0",
        "r_2",
        "oracle",
        "protocol:",
        "plot:",
    ):
        assert label in out, label
    assert (shop / "demo" / "sasrec-prl" / "steps-test.png").exists()


def test_pop_under_torchrun_fits_once_on_rank_0(shop: Path) -> None:
    """Two processes: rank 0 fits and writes the run, the other trains nothing and waits for its results."""
    env = {**os.environ, "THINKREC_CACHE_DIR": str(shop / "cache"), "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cli = ["-m", "thinkrec.cli.main", "train", "ml100k-time-pop", *shop_source(shop), "progress=never"]
    cmd = [sys.executable, *launcher, *cli, "device=cpu", "--run-dir", str(shop / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run: ") == 1
    results = json.loads((shop / "two" / "results.json").read_text())
    assert (
        results["stopped"] == "closed_form" and results["popularity"]["test"]["metrics"] == results["test"]["metrics"]
    )


def test_pop_run_is_served_over_http(shop: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'thinkrec[serve]')")
    pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")
    from fastapi.testclient import TestClient

    from thinkrec.serve.app import create_app

    assert main(["train", "ml100k-time-pop", *shop_source(shop), "progress=never", "--run-dir", "pop"]) == 0
    client = TestClient(create_app(shop / "pop"), base_url="http://localhost")
    body = client.post("/recommend", json={"history": [1, 2], "k": 4}).json()
    rec = load_recommender(str(shop / "pop"))
    counts = load_run(shop / "pop")[1].backbone.counts
    assert isinstance(counts, torch.Tensor)
    order = expected_order(counts.tolist())
    assert [str(item["item"]) for item in body["items"]] == [str(rec.vocabulary.external_id(i + 1)) for i in order[:4]]
    assert body["model"]["kind"] == "pop" and body["reasoning_steps"] == 0
