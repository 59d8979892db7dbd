"""The README's Python examples run as written (on MovieLens-100K and a made-up shop log, one epoch each)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert any("thinkrec.load" in b for b in blocks) and any("interactions=" in b for b in blocks)


def test_readme_python_examples_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    real_dataset: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_dataset("ml-100k")
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(), start=1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)  # the blocks share one namespace, as in one session
    out = capsys.readouterr().out
    assert "NDCG@5" in out and "skipped_targets" in out
    top = namespace["top"]
    rows = top.to_pylist() if hasattr(top, "to_pylist") else top.to_dict("records")
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and {r["user"] for r in rows} == {"me"}
    assert all(r["title"] for r in rows)  # MovieLens titles
    assert not {50, 172, 133} & {r["item"] for r in rows}  # exclude_seen
    vectors = namespace["vectors"]
    assert len(vectors) == 1682 and "embedding" in (
        vectors.column_names if hasattr(vectors, "column_names") else vectors.columns
    )
    assert (tmp_path / "runs" / "py-shop" / "data" / "interactions.parquet").exists()
