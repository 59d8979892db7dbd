"""The command line end to end on a small made-up CSV log, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thinkrec.cli.main import main


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CSV log where every user walks the catalogue in steps of +1, an item table, and a config."""
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = ["customer,sku,ts"]
    for user in range(120):
        start = rng.integers(0, 30)
        rows += [f"u{user},{(start + i) % 30 + 1},{1000 + 10 * i}" for i in range(12)]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    items = ["sku,title"] + [f"{i},Product &amp; Co. {i}" for i in range(1, 31)]
    (tmp_path / "products.csv").write_text("\n".join(items) + "\n")
    (tmp_path / "shop.toml").write_text(
        f"""
[data]
name = "shop"

[data.source]
format = "table"
path = "{tmp_path / "events.csv"}"
user_col = "customer"
item_col = "sku"
time_col = "ts"
items_path = "{tmp_path / "products.csv"}"
items_id_col = "sku"

[model]
hidden = 16
layers = 1
max_len = 8

[train]
epochs = 8
batch_size = 32
lr = 0.01
progress = false
"""
    )
    return tmp_path


def test_train_evaluate_recommend(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", "shop.toml"]) == 0
    assert "120 users, 30 items" in capsys.readouterr().out
    assert main(["train", "shop.toml", "train.seed=3", "--run-dir", "run"]) == 0
    out = capsys.readouterr().out
    assert "test (120 samples)" in out and "leave-one-out" in out and "encoder_precision: float32" in out
    results = json.loads((shop / "run" / "results.json").read_text())
    assert results["test"]["metrics"]["HR@10"] > 0.8
    assert results["test"]["protocol"]["history_masking"] == "history items not masked"
    assert results["test"]["protocol"]["seed"] == 3
    assert main(["evaluate", "run", "--mask-history", "--ks", "1,5", "--output", "report.json"]) == 0
    report = json.loads((shop / "report.json").read_text())
    assert set(report["metrics"]) == {"NDCG@1", "HR@1", "MRR@1", "NDCG@5", "HR@5", "MRR@5"}
    assert report["protocol"]["history_masking"] == "history items excluded"
    capsys.readouterr()
    assert main(["recommend", "run", "--history", "3,4,5,6", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "Product & Co. 7" in out.split("top-3:")[1].splitlines()[3]  # rank 1 is the next item
    assert main(["recommend", "run", "--user", "u5", "-k", "2", "--exclude-seen"]) == 0


def test_rerunning_train_resumes_and_refuses_a_different_config(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "shop.toml", "train.epochs=2", "--run-dir", "run"]) == 0
    assert main(["train", "shop.toml", "train.epochs=2", "model.hidden=8", "--run-dir", "run"]) == 2
    assert "different config (model.hidden)" in capsys.readouterr().err
    assert main(["train", "shop.toml", "train.epochs=2", "--run-dir", "run"]) == 0
    log = (shop / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # nothing retrained
    # more epochs continue the finished run; fewer than it has trained are refused
    assert main(["train", "shop.toml", "train.epochs=3", "--run-dir", "run"]) == 0
    log = (shop / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1, 2]
    assert json.loads((shop / "run" / "config.json").read_text())["train"]["epochs"] == 3
    capsys.readouterr()
    assert main(["train", "shop.toml", "train.epochs=2", "--run-dir", "run"]) == 2
    assert "has trained 3 epochs, more than train.epochs=2" in capsys.readouterr().err
    # a run directory moved elsewhere is the same run, also when the config names the directory
    (shop / "run").rename(shop / "moved")
    assert main(["train", "shop.toml", "train.epochs=3", "run_dir=moved"]) == 0
    assert (shop / "moved" / "log.jsonl").read_text().splitlines() == log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "no-such-preset"], "no such config file or preset"),
        (["train", "shop.toml", "train.lrr=0.1"], "did you mean 'train.lr'"),
        (["train", "shop.toml", "model.hidden=abc"], "model.hidden"),
        (["train", "shop.toml", "data.source.path=/nonexistent/x.csv"], "/nonexistent/x.csv"),
        (["evaluate", "not-a-run"], "not a thinkrec run directory"),
        (["train", "shop.toml", "data.source.user_col=client"], "client"),
    ],
)
def test_bad_input_gives_one_clear_message_and_exit_2(
    shop: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_file_names_the_line(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (shop / "events.csv").read_text().splitlines()
    text[5] = "u1,3,yesterday"
    (shop / "events.csv").write_text("\n".join(text) + "\n")
    assert main(["data", "prepare", "shop.toml"]) == 2
    err = capsys.readouterr().err
    assert "events.csv" in err and "line 6" in err and "ts" in err


def test_config_show_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for key in ("model.max_len", "train.valid_metric", "eval.mask_history", "data.split.kind", "presets:"):
        assert key in out


def test_unknown_key_of_another_model_kind_names_that_kinds_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "ml100k-loo-gru4rec", "model.heads=2"]) == 2
    err = capsys.readouterr().err
    assert "model.heads: unknown key" in err and "hidden" in err


def test_a_run_written_before_a_key_existed_still_resumes(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "shop.toml", "train.epochs=1", "--run-dir", "run"]) == 0
    saved = json.loads((shop / "run" / "config.json").read_text())
    del saved["model"]["positions"]  # as written by a thinkrec that did not have this key yet
    (shop / "run" / "config.json").write_text(json.dumps(saved))
    assert main(["train", "shop.toml", "train.epochs=1", "train.threads=1", "--run-dir", "run"]) == 0
    assert main(["train", "shop.toml", "train.epochs=1", "model.hidden=8", "--run-dir", "run"]) == 2
    assert "model.hidden" in capsys.readouterr().err


def test_overrides_may_follow_options_and_stray_words_are_still_rejected() -> None:
    from thinkrec.cli.main import build_parser, parse

    args = parse(build_parser(), ["train", "ml100k-sasrec", "train.lr=0.002", "--run-dir", "x", "train.seed=3"])
    assert args.run_dir == "x" and args.overrides == ["train.lr=0.002", "train.seed=3"]
    with pytest.raises(SystemExit):
        parse(build_parser(), ["train", "ml100k-sasrec", "--run-dir", "x", "oops"])
    with pytest.raises(SystemExit):  # a command without overrides takes none
        parse(build_parser(), ["config", "show", "--bogus", "a=1"])


def test_without_bars_the_cli_logs_every_epoch_to_stderr(shop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The trainer's epoch lines go to its logger when no bars are drawn; the CLI shows them on stderr."""
    assert main(["train", "shop.toml", "train.epochs=2", "--run-dir", "run"]) == 0
    captured = capsys.readouterr()
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and "valid NDCG@10" in epochs[0]
    assert "evaluating run: the best checkpoint" in captured.err
    assert not [line for line in captured.out.splitlines() if line.startswith("epoch ")]  # stdout: the report
    assert main(["train", "shop.toml", "train.epochs=3", "--run-dir", "run"]) == 0
    assert "resuming run after epoch 1" in capsys.readouterr().err
