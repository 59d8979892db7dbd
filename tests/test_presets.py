"""Every bundled preset is a valid config whose dataset exists in the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinkrec.config.loader import load_config, preset_names


def test_there_are_presets_for_the_engine_datasets() -> None:
    names = set(preset_names())
    for required in ("ml100k-sasrec", "s3rec-beauty-sasrec", "s3rec-toys-sasrec", "beauty-sasrec", "ml1m-sasrec"):
        assert required in names


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_and_points_at_existing_data(name: str, shared_data: Path) -> None:
    cfg = load_config(name)
    assert (shared_data / cfg.data.source.path).exists(), cfg.data.source.path
    assert cfg.train.valid_metric.split("@")[1] in {str(k) for k in cfg.eval.ks}


def test_a_preset_is_its_protocol_and_method_composed() -> None:
    """The ReaRec presets differ only in what they extend: the plain backbone, + ERL, + PRL."""
    base, prl = load_config("ml100k-time-sasrec"), load_config("ml100k-time-sasrec-prl")
    assert base.data == prl.data and base.train == prl.train and base.eval == prl.eval and base.model == prl.model
    assert not base.reasoning.enabled and prl.reasoning.kind == "prl"


def test_extends_merges_in_order_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "small.toml").write_text("[model]\nhidden = 16\nheads = 2\n[train]\nlr = 0.01\n")
    (tmp_path / "run.toml").write_text(
        'extends = ["ml100k-time-sasrec", "parts/small"]\n[train]\nepochs = 3\n'  # a preset, then a local file
    )
    cfg = load_config(str(tmp_path / "run.toml"), ["train.lr=0.02"])
    assert cfg.data.name == "ml100k-time" and cfg.model.hidden == 16 and cfg.model.layers == 2
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.02 and cfg.train.valid_metric == "NDCG@20"


def test_extends_in_a_circle_is_one_clear_error(tmp_path: Path) -> None:
    from thinkrec.errors import ConfigError

    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = ["a"]\n')
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_config(str(tmp_path / "a.toml"))
