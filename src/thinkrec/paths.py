"""Where thinkrec finds datasets and keeps its cache.

The data directory is ``$THINKREC_DATA_DIR`` if set, else ``./data``. It holds one folder per raw
dataset in the layout of ``../shared/data`` (``ml-100k/``, ``seqrecbench/<name>/``, ``s3rec/``,
``sasrec-video-games/``). Prepared datasets are cached under ``$THINKREC_CACHE_DIR`` (default
``.thinkrec-cache/`` in the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from thinkrec.errors import DataError

DATA_ENV = "THINKREC_DATA_DIR"
CACHE_ENV = "THINKREC_CACHE_DIR"


def data_dir() -> Path:
    """The root folder of raw datasets."""
    return Path(os.environ.get(DATA_ENV, "data")).expanduser()


def cache_dir() -> Path:
    """The root folder for prepared datasets and text-embedding caches."""
    return Path(os.environ.get(CACHE_ENV, ".thinkrec-cache")).expanduser()


def resolve_data_path(relative: str | Path) -> Path:
    """Resolve a dataset path; absolute paths are kept, relative ones are taken under :func:`data_dir`.

    Raises a :class:`DataError` that says where to put the files when the path does not exist.
    """
    path = Path(relative).expanduser()
    if not path.is_absolute() and not path.exists():
        path = data_dir() / path
    if not path.exists():
        raise DataError(
            "dataset not found",
            path=path,
            hint=(
                f"put the raw files there, or point ${DATA_ENV} at the folder that holds them "
                f"(for this project's checkout: export {DATA_ENV}=../shared/data)"
            ),
        )
    return path
