"""Time embedding item titles with the default text encoder, then the cache hit of a second run.

Usage: ``python benchmarks/text_embed_speed.py [--items 10000] [--threads 1]``. Uses the titles of
SeqRecBench amazon2014-beauty (from ``$THINKREC_DATA_DIR``) and a fresh temporary cache folder; prints the
machine load before and after (the CPU is shared, so report the load next to the time).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from thinkrec.allocator import tune_allocator
from thinkrec.data.config import PrepareConfig, SourceConfig
from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.prepare import load_or_prepare
from thinkrec.data.text_embeddings import DEFAULT_ENCODER, embed_item_text


def subset(ds: SequenceDataset, n: int) -> SequenceDataset:
    """A dataset with the first ``n`` items' texts (one dummy interaction): only the texts matter here."""
    return SequenceDataset(
        name=f"{ds.name}-first{n}",
        offsets=np.array([0, 1]),
        items=np.array([1]),
        timestamps=np.array([0]),
        user_ids=np.array([0]),
        item_ids=ds.item_ids[:n],
        item_text={"title": ds.item_text["title"][: n + 1]},
        meta={"cache_key": ds.meta.get("cache_key", "nokey")},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    torch.set_num_threads(args.threads)
    source = SourceConfig(format="seqrecbench", path="seqrecbench/amazon2014-beauty")
    ds = subset(load_or_prepare(source, PrepareConfig(), "beauty"), args.items)
    print(f"load before: {os.getloadavg()}  threads={args.threads}  items={ds.n_items}")
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        first = embed_item_text(ds, DEFAULT_ENCODER, ["title"], cache_root=Path(tmp))
        t1, c1 = time.perf_counter(), time.process_time()
        second = embed_item_text(ds, DEFAULT_ENCODER, ["title"], cache_root=Path(tmp))
        t2 = time.perf_counter()
    print(f"first run (encode): {t1 - t0:.1f} s wall, {c1 - c0:.1f} s CPU  shape={first.shape}")
    print(f"second run (cache): {t2 - t1:.3f} s  identical={bool(np.array_equal(first, second))}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
