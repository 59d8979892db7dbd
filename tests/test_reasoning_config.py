"""The reasoning section: one class per kind, a clear message for a key of another kind, old flat configs load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinkrec.config.loader import config_table, load_config
from thinkrec.errors import ConfigError
from thinkrec.reasoning.config import ERLConfig, NoReasoningConfig, PRLConfig, reasoning_config
from thinkrec.runs import saved_config

# The reasoning section as the earlier flat schema wrote it into every config.json (all keys, every kind).
FLAT_DEFAULTS = {
    "kind": "none",
    "steps": 2,
    "max_steps": None,
    "tau": None,
    "erl_lambda": 0.01,
    "prl_alpha": 5.0,
    "noise_std": 0.01,
    "rcl_weight": 1.0,
    "rcl_similarity": "cosine",
    "warmup_epochs": 2,
    "normalise_feedback": True,
}


def test_each_kind_has_its_own_class_and_keys() -> None:
    assert isinstance(load_config(None, []).reasoning, NoReasoningConfig)
    erl = load_config(None, ["reasoning.kind=erl", "reasoning.erl_lambda=0.05"]).reasoning
    assert isinstance(erl, ERLConfig) and erl.erl_lambda == 0.05 and not hasattr(erl, "prl_alpha")
    prl = load_config(None, ["reasoning.kind=prl", "reasoning.rcl_view=reencode", "reasoning.step_ce=mean"]).reasoning
    assert isinstance(prl, PRLConfig) and (prl.rcl_view, prl.step_ce) == ("reencode", "mean")
    none = NoReasoningConfig()
    assert (none.steps, none.warmup_epochs, none.table_size, none.enabled) == (0, 0, 0, False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["reasoning.kind=erl", "reasoning.prl_alpha=2"], "reasoning.kind = 'erl' has no reasoning.prl_alpha"),
        (["reasoning.kind=prl", "reasoning.erl_lambda=0.1"], "reasoning.kind = 'prl' has no reasoning.erl_lambda"),
        (["reasoning.steps=3"], "reasoning.kind = 'none' has no reasoning.steps (a setting of kind 'erl' / 'prl')"),
        (["reasoning.kind=erl", "reasoning.rcl_view=reencode"], "has no reasoning.rcl_view (a setting of kind 'prl')"),
    ],
)
def test_a_key_of_another_kind_is_one_clear_message(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    lines = [line for line in str(info.value).splitlines() if line.startswith("  reasoning")]
    assert len(lines) == 1 and message in lines[0], str(info.value)


def test_keys_of_another_kind_at_their_defaults_are_dropped() -> None:
    """A preset or hand-written section may spell out defaults of every kind."""
    cfg = reasoning_config(kind="erl", prl_alpha=5.0, rcl_similarity="cosine", erl_lambda=0.1)
    assert isinstance(cfg, ERLConfig) and cfg.erl_lambda == 0.1
    assert reasoning_config(steps=2, warmup_epochs=2) == NoReasoningConfig()


@pytest.mark.parametrize("kind", ["none", "erl", "prl"])
def test_a_config_json_of_the_old_flat_schema_still_loads(tmp_path: Path, kind: str) -> None:
    new = load_config(None, [] if kind == "none" else [f"reasoning.kind={kind}"])
    data = json.loads(new.model_dump_json())
    # the old schema wrote every key; keys of other kinds had no effect, whatever their value
    data["reasoning"] = {**FLAT_DEFAULTS, "kind": kind, "erl_lambda": 0.05, "prl_alpha": 2.0, "warmup_epochs": 1}
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = saved_config(tmp_path)
    assert cfg.reasoning.kind == kind
    if isinstance(cfg.reasoning, ERLConfig):
        assert (cfg.reasoning.erl_lambda, cfg.reasoning.warmup_epochs) == (0.05, 1)
    if isinstance(cfg.reasoning, PRLConfig):  # the new options take today's behaviour
        assert (cfg.reasoning.prl_alpha, cfg.reasoning.rcl_view, cfg.reasoning.step_ce) == (2.0, "shared", "sum")
    # and the config it reads back writes the new schema, which reads back to itself
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    assert saved_config(tmp_path) == cfg


def test_config_show_lists_the_reasoning_section_once_per_kind() -> None:
    rows = config_table()
    kinds = [description for key, _, description in rows if key == "reasoning"]
    assert [d.split(":")[0] for d in kinds] == ["kind = 'none'", "kind = 'erl'", "kind = 'prl'"]
    keys = {key for key, _, _ in rows}
    assert {"reasoning.erl_lambda", "reasoning.rcl_view", "reasoning.step_ce", "reasoning.feedback_dropout"} <= keys
    assert {"model.input_dropout", "model.ffn_dropout"} <= keys
