"""Operational settings (threads, progress bars, device, evaluation pass sizes) are not part of a run's
identity: a run resumes under other values of them, and ``train.progress`` of older configs still loads."""

from __future__ import annotations

import pytest
import torch

from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig, operational_keys
from thinkrec.device import resolve_device
from thinkrec.errors import ConfigError
from thinkrec.progress import show_bars
from thinkrec.runs import changed_keys


def test_operational_keys_are_read_from_the_schema() -> None:
    keys = operational_keys()
    for key in (
        "run_dir",
        "device",
        "progress",
        "train.threads",
        "train.resume",
        "eval.workers",
        "eval.encode_tokens",
        "eval.depth",
    ):
        assert key in keys
    for key in ("train.lr", "eval.ks", "eval.mask_history", "eval.autocast", "model.hidden"):
        assert key not in keys  # these change what a run computes


def test_a_run_is_the_same_run_under_other_operational_settings() -> None:
    a = load_config("ml100k-sasrec")
    b = load_config(
        "ml100k-sasrec", ["eval.workers=1", "eval.encode_tokens=999", "train.threads=1", "progress=never", "device=cpu"]
    )
    assert changed_keys(a, b) == []
    assert changed_keys(a, load_config("ml100k-sasrec", ["eval.ks=[10]", "train.valid_metric=NDCG@10"])) == ["eval.ks"]


def test_train_progress_of_older_configs_becomes_progress() -> None:
    assert load_config(None, ["train.progress=false"]).progress == "never"
    assert load_config(None, ["train.progress=true"]).progress == "always"
    saved = RunConfig().model_dump(mode="json")
    del saved["progress"], saved["device"]
    saved["train"]["progress"] = False  # config.json of a run written before the setting moved
    assert RunConfig.model_validate(saved).progress == "never"
    with pytest.raises(ConfigError, match=r"train\.progress is now progress"):
        load_config(None, ["train.progress=auto"])


def test_progress_auto_draws_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stderr", Stream(False))
    assert not show_bars("auto") and show_bars("always") and not show_bars("never")
    monkeypatch.setattr("sys.stderr", Stream(True))
    assert show_bars("auto")


def test_device_setting() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="invalid configuration"):
        load_config(None, ["device=tpu"])
