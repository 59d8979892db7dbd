"""Streaming preparation: a table read in batches gives exactly the dataset the whole-table path gives."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import pytest

from benchmarks.scale import synthetic_log
from thinkrec.data.config import PrepareConfig, SourceConfig
from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.prepare import load_or_prepare, prepare, prepare_coded, prepare_source
from thinkrec.data.readers import read_source
from thinkrec.data.stream import read_coded
from thinkrec.errors import DataError


def assert_same(a: SequenceDataset, b: SequenceDataset) -> None:
    assert np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.items, b.items) and a.items.dtype == b.items.dtype
    assert np.array_equal(a.timestamps, b.timestamps)
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()
    assert a.item_text == b.item_text
    assert a.meta == b.meta


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "log.parquet"
    args = synthetic_log.parser().parse_args(["--rows", "30000", "--out", str(path), "--row-group", "4000"])
    summary = synthetic_log.generate(args)
    assert summary["rows"] >= 30000
    return path


def test_the_synthetic_log_looks_like_a_log(log: Path) -> None:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(log)
    assert file.num_row_groups > 5  # written a block at a time
    table = file.read()
    users = np.bincount(table.column("user_id").to_numpy())
    items = np.unique(table.column("item_id").to_numpy(), return_counts=True)[1]
    assert users[users > 0].min() >= 5 and users.max() > 20 * np.median(users[users > 0])  # heavy users
    assert items.max() > 50 * np.median(items)  # a few very popular items
    rating = table.column("rating").to_numpy()
    assert rating.min() >= 1 and rating.max() <= 5


@pytest.mark.parametrize(
    "prep",
    [
        PrepareConfig(),
        PrepareConfig(user_min=5, item_min=5, dedup="first"),
        PrepareConfig(min_rating=4, dedup="none", user_min=3, max_users=300, seed=1),
    ],
    ids=["default", "k-core-first", "rating-subset"],
)
def test_streamed_parquet_equals_the_whole_table(log: Path, prep: PrepareConfig) -> None:
    source = SourceConfig(format="table", path=str(log), user_col="user_id", item_col="item_id", rating_col="rating")
    coded = read_coded(source, batch_rows=3000)
    assert coded is not None and coded.user.dtype == np.int32
    assert_same(prepare_coded(coded, prep, "syn"), prepare(read_source(source), prep, "syn"))


def test_streamed_csv_with_mixed_ids_and_no_time(tmp_path: Path) -> None:
    """Batches of only-integer ids and batches with text ids; no time column; an item table; duplicates."""
    rows = ["who,what,stars"]
    rng = np.random.default_rng(0)
    for r in range(400):
        user = f"u{r % 13}" if r >= 300 else str(r % 17)  # the first batches hold integer-looking ids only
        item = str(rng.integers(1, 30)) if r % 7 else f"0{rng.integers(1, 5)}"  # "01" is not the integer 1
        rows.append(f"{user},{item},{rng.integers(1, 6)}")
    rows += rows[1:20]  # repeats
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "titles.csv").write_text("what,title\n" + "\n".join(f"{i},Item &amp; {i}" for i in range(1, 25)))
    source = SourceConfig(
        format="table",
        path=str(tmp_path / "log.csv"),
        user_col="who",
        item_col="what",
        time_col=None,
        rating_col="stars",
        items_path="titles.csv",
        items_id_col="what",
    )
    coded = read_coded(source, batch_rows=50)
    assert coded is not None and coded.user_values.type == "string" and coded.item_values.type == "string"
    for prep in (PrepareConfig(), PrepareConfig(min_rating=2, user_min=3, dedup="first")):
        assert_same(prepare_coded(coded, prep, "mixed"), prepare(read_source(source), prep, "mixed"))


def test_what_cannot_stream_is_read_whole(tmp_path: Path) -> None:
    text = "user_id,item_id,timestamp\n1,2,10\n1,3,11\n2,2,12\n"
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(text.encode()))
    gz = SourceConfig(format="table", path=str(tmp_path / "a.csv.gz"))
    assert read_coded(gz) is None
    assert prepare_source(gz, PrepareConfig(), "gz").n_interactions == 3
    (tmp_path / "bad.csv").write_text(text + "3,4,yesterday\n")
    bad = SourceConfig(format="table", path=str(tmp_path / "bad.csv"))
    assert read_coded(bad) is None
    with pytest.raises(DataError, match="line 5"):  # the whole-table reader locates the bad value
        prepare_source(bad, PrepareConfig(), "bad")
    assert read_coded(SourceConfig(format="sasrec", path=str(tmp_path / "bad.csv"))) is None


def test_load_or_prepare_streams_and_caches(log: Path, tmp_path: Path) -> None:
    source = SourceConfig(format="table", path=str(log), user_col="user_id", item_col="item_id")
    streamed = load_or_prepare(source, PrepareConfig(user_min=5), "syn", cache_root=tmp_path)
    whole = prepare_source(source, PrepareConfig(user_min=5), "syn", stream=False)
    whole.meta["cache_key"] = streamed.meta["cache_key"]
    assert_same(streamed, whole)
    assert_same(load_or_prepare(source, PrepareConfig(user_min=5), "syn", cache_root=tmp_path), streamed)


def test_generator_arguments_are_checked() -> None:
    args = argparse.Namespace(**{**vars(synthetic_log.parser().parse_args(["--rows", "10", "--out", "x"]))})
    with pytest.raises(SystemExit):
        synthetic_log.user_lengths(10, 5, args.user_alpha, args.min_user, np.random.default_rng(0))


def test_the_scaling_benchmark_measures_a_preparation(log: Path) -> None:
    from benchmarks.scale import scaling

    assert scaling.sizes("1M,10k,50") == [1_000_000, 10_000, 50]
    job = {"path": str(log), "prepare": {"user_min": 5}, "mode": "stream"}
    result = scaling.child_prepare(job)
    assert result["interactions"] > 0 and result["peak_rss_mib"] > 0 and result["seconds"] >= 0
