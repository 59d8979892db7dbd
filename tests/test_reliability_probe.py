"""benchmarks/reliability_probe.py, the end-to-end check of the run-file findings, passes every check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability_probe.py"


def test_every_check_of_the_reliability_probe_passes() -> None:
    spec = importlib.util.spec_from_file_location("reliability_probe", PROBE)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    cwd = Path.cwd()
    rows = probe.probe()
    assert Path.cwd() == cwd  # it works in a folder of its own and comes back
    assert len(rows) >= 30
    assert [row[:4] for row in rows if not row[4]] == []
