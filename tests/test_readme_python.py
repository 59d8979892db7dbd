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


def test_readme_own_data_config_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The own-data TOML of the README, as written, next to files with the columns it names."""
    from thinkrec.cli.main import main

    text = README.read_text()
    section = text[text.index("### Your own data") :]
    config = re.search(r"^```toml\n(.*?)^```", section, flags=re.S | re.M)
    assert config is not None and 'cut_unit = "interactions"' in config.group(1)
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.toml").write_text(config.group(1))
    events = ["customer,sku,ts"] + [
        f"c{u},s{(u + i) % 20},2024-03-{i + 1:02d}T{u % 24:02d}:00:00" for u in range(60) for i in range(10)
    ]
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    products = ["sku,name,brand"] + [f"s{i},Lamp {i},Brand {i % 3}" for i in range(20)]
    (folder / "products.csv").write_text("\n".join(products) + "\n")
    monkeypatch.chdir(tmp_path)  # the paths in the config are relative to its folder, not to here
    quick = ["train.epochs=1", "model.hidden=16", "train.progress=false"]
    assert main(["train", "shop/shop.toml", *quick, "--run-dir", "runs/shop"]) == 0
    capsys.readouterr()
    assert main(["recommend", "runs/shop", "--user", "c42", "-k", "10"]) == 0
    out = capsys.readouterr().out.split("top-10:")[1]
    assert out.count("Lamp ") == 10 and "Brand" not in out  # titles from title_col = "name"
