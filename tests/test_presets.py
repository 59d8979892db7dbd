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
