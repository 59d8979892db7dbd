"""tests/reliability_probe.py, the end-to-end check of the run-file findings, passes every check."""

from __future__ import annotations

from pathlib import Path

from reliability_probe import probe


def test_every_check_of_the_reliability_probe_passes() -> None:
    cwd = Path.cwd()
    rows = probe()
    assert Path.cwd() == cwd  # it works in a folder of its own and comes back
    assert len(rows) >= 30
    assert [row[:4] for row in rows if not row[4]] == []
