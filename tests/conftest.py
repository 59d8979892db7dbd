"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The README runs the tests with THINKREC_DATA_DIR=../shared/data, relative to the repository root; tests that
# change the working folder must still find the data.
if os.environ.get("THINKREC_DATA_DIR"):
    os.environ["THINKREC_DATA_DIR"] = str(Path(os.environ["THINKREC_DATA_DIR"]).expanduser().resolve())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The raw-data folder: ``$THINKREC_DATA_DIR`` if set, else ``<repo>/../shared/data``.

    Tests that need real data skip (with the reason) when it is not there.
    """
    env = os.environ.get("THINKREC_DATA_DIR")
    root = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(
            f"real data not found at {root} (set THINKREC_DATA_DIR to the folder holding ml-100k/, "
            "s3rec/, seqrecbench/ ...)"
        )
    return root


@pytest.fixture(scope="session")
def real_dataset(shared_data: Path) -> Callable[[str], Path]:
    """A function ``relative -> shared_data / relative`` that skips the test when that dataset is missing."""

    def need(relative: str) -> Path:
        path = shared_data / relative
        if not path.exists():
            pytest.skip(f"dataset {relative!r} not found under {shared_data}")
        return path

    return need
