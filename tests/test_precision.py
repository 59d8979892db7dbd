import warnings

import pytest
import torch

from thinkrec import precision
from thinkrec.data.split import leave_one_out
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig

from helpers import random_dataset


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_warned", set())


def test_bf16_evaluation_warns_once_on_a_cpu_without_native_bf16(cpu_without_bf16: None) -> None:
    ds = random_dataset(n_users=30, n_items=20, seed=1)
    split = leave_one_out(ds)
    torch.manual_seed(0)
    model = build_model(SASRecConfig(hidden=16, layers=1, heads=2, max_len=8), ds.n_items)
    with pytest.warns(RuntimeWarning, match=r'eval.autocast = "bf16".*Set eval.autocast = "none"'):
        evaluate(model, split, split.test, EvalConfig(autocast="bf16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(model, split, split.test, EvalConfig(autocast="bf16"))  # once per process
        evaluate(model, split, split.test, EvalConfig())  # float32 never warns


def test_no_warning_where_bf16_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    monkeypatch.setattr(precision, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_slow_bf16("train.autocast")


def test_each_setting_warns_on_its_own(cpu_without_bf16: None) -> None:
    with pytest.warns(RuntimeWarning, match="train.autocast"):
        precision.warn_slow_bf16("train.autocast")
    with pytest.warns(RuntimeWarning, match="eval.autocast"):
        precision.warn_slow_bf16("eval.autocast")


def test_native_bf16_agrees_with_onednn() -> None:
    assert precision.native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
