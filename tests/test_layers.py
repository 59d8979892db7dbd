"""The import-linter contract (pyproject.toml, checked by ``lint-imports`` in CI) names every package and
top-level module of thinkrec, so a new module cannot escape the layering."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_contract_covers_every_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    assert contract["type"] == "layers" and contract["containers"] == ["thinkrec"]
    assert "ignore_imports" not in contract
    named = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    package = ROOT / "src" / "thinkrec"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert modules | packages == named
