"""prepare / load_or_prepare: filters against slow reference loops, ordering, ids, text, cache, real data."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from thinkrec.data import prepare as prepare_module
from thinkrec.data.config import PrepareConfig, SourceConfig
from thinkrec.data.dataset import PAD, SequenceDataset
from thinkrec.data.prepare import cache_key, load_or_prepare, prepare
from thinkrec.data.readers import RawLog, read_source
from thinkrec.errors import ConfigError, DataError


def raw_log(
    users: Sequence[object],
    items: Sequence[object],
    times: Sequence[int],
    ratings: Sequence[float] | None = None,
    titles: dict[object, str] | None = None,
) -> RawLog:
    columns: dict[str, object] = {"user": users, "item": items, "timestamp": pa.array(times, pa.int64())}
    if ratings is not None:
        columns["rating"] = pa.array(ratings, pa.float64())
    item_table = None
    if titles is not None:
        item_table = pa.table({"item": list(titles), "title": list(titles.values())})
    return RawLog(pa.table(columns), item_table, {"format": "table", "files": ["/made/up/log.csv"]})


def triples(ds: SequenceDataset) -> list[tuple[object, object, int]]:
    """(external user, external item, timestamp) of every interaction, in dataset order."""
    users = ds.user_ids[ds.user_index]
    items = ds.item_ids[ds.items - 1]
    return list(zip(users.tolist(), items.tolist(), ds.timestamps.tolist(), strict=True))


def assert_same(a: SequenceDataset, b: SequenceDataset) -> None:
    assert a.name == b.name
    for attr in ("offsets", "items", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
    assert a.item_text == b.item_text
    assert a.meta == b.meta


# ------------------------------------------------------------------------------------------- k-core
def slow_k_core(pairs: list[tuple[int, int]], user_min: int, item_min: int) -> list[tuple[int, int]]:
    kept = list(pairs)
    while True:
        user_count = Counter(u for u, _ in kept)
        item_count = Counter(i for _, i in kept)
        survivors = [(u, i) for u, i in kept if user_count[u] >= user_min and item_count[i] >= item_min]
        if len(survivors) == len(kept):
            return kept
        kept = survivors


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("user_min", "item_min"), [(3, 3), (5, 2), (1, 4), (6, 6)])
def test_k_core_matches_slow_loop(seed: int, user_min: int, item_min: int) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    users = rng.integers(0, 150, n)
    items = (rng.zipf(1.6, n) % 300).astype(np.int64)  # skewed: many rare items -> several rounds
    raw = raw_log(users.tolist(), items.tolist(), list(range(n)))
    ds = prepare(raw, PrepareConfig(user_min=user_min, item_min=item_min, dedup="none"), "kcore")
    expected = slow_k_core(list(zip(users.tolist(), items.tolist(), strict=True)), user_min, item_min)
    got = [(u, i) for u, i, _ in triples(ds)]
    assert sorted(got) == sorted(expected)
    assert ds.lengths.min() >= user_min
    assert np.bincount(ds.items)[1:].min() >= item_min
    step = ds.meta["steps"][-1]
    assert step["step"] == "k_core" and step["interactions"] == len(expected) and step["iterations"] >= 1


def test_k_core_removing_everything_is_a_data_error() -> None:
    raw = raw_log([1, 1, 2], [5, 6, 5], [1, 2, 3])
    with pytest.raises(DataError) as info:
        prepare(raw, PrepareConfig(user_min=5), "x")
    assert info.value.field == "user_min" and "log.csv" in str(info.value) and "k-core" in str(info.value)


# ----------------------------------------------------------------------------------------- ordering
def test_chronological_with_stable_ties() -> None:
    # user 7: times 5, 3, 3, 1 with ties at 3 -> items 40 then 30 stay in file order
    raw = raw_log([7, 2, 7, 7, 2, 7], [10, 99, 40, 30, 98, 20], [5, 9, 3, 3, 9, 1])
    ds = prepare(raw, PrepareConfig(dedup="none"), "ties")
    assert ds.user_ids.tolist() == [2, 7]
    assert triples(ds) == [(2, 99, 9), (2, 98, 9), (7, 20, 1), (7, 40, 3), (7, 30, 3), (7, 10, 5)]


def test_ids_ascending_and_round_trip_with_string_ids() -> None:
    users = ["u10", "u2", "u10", "a"]
    items = ["z", "B01", "m", "B01"]
    raw = raw_log(users, items, [1, 2, 3, 4])
    ds = prepare(raw, PrepareConfig(), "strings")
    assert ds.user_ids.tolist() == ["a", "u10", "u2"]
    assert ds.item_ids.tolist() == ["B01", "m", "z"]
    assert ds.items.min() == 1 and PAD == 0
    assert sorted(triples(ds)) == sorted(zip(users, items, [1, 2, 3, 4], strict=True))


def test_ids_round_trip_on_random_data() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(1000, 1200, 800).tolist()
    items = rng.integers(5, 400, 800).tolist()
    times = rng.integers(0, 50, 800).tolist()
    ds = prepare(raw_log(users, items, times), PrepareConfig(dedup="none"), "rt")
    assert Counter(triples(ds)) == Counter(zip(users, items, times, strict=True))
    assert np.all(np.diff(ds.user_ids) > 0) and np.all(np.diff(ds.item_ids) > 0)
    for u in range(ds.n_users):
        assert np.all(np.diff(ds.timestamps[ds.offsets[u] : ds.offsets[u + 1]]) >= 0)


# ------------------------------------------------------------------------------------ dedup, ratings
def test_dedup_modes() -> None:
    users = [1, 1, 1, 1, 1, 2]
    items = [5, 5, 5, 6, 5, 5]
    times = [9, 3, 9, 4, 3, 9]
    raw = raw_log(users, items, times, titles=None)
    none = prepare(raw, PrepareConfig(dedup="none"), "d")
    exact = prepare(raw, PrepareConfig(dedup="exact"), "d")
    first = prepare(raw, PrepareConfig(dedup="first"), "d")
    assert none.n_interactions == 6
    assert triples(exact) == [(1, 5, 3), (1, 6, 4), (1, 5, 9), (2, 5, 9)]
    assert triples(first) == [(1, 5, 3), (1, 6, 4), (2, 5, 9)]
    assert [s["step"] for s in first.meta["steps"]] == ["read", "dedup"]
    assert first.meta["steps"][-1] == {
        "step": "dedup",
        "mode": "first",
        "users": 2,
        "items": 2,
        "interactions": 3,
    }


def test_min_rating() -> None:
    raw = raw_log([1, 1, 2, 2], [5, 6, 5, 7], [1, 2, 3, 4], ratings=[4.0, 2.0, 5.0, 3.5])
    ds = prepare(raw, PrepareConfig(min_rating=3.5), "r")
    assert triples(ds) == [(1, 5, 1), (2, 5, 3), (2, 7, 4)]
    assert ds.meta["steps"][1] == {
        "step": "min_rating",
        "min_rating": 3.5,
        "users": 2,
        "items": 2,
        "interactions": 3,
    }
    with pytest.raises(DataError) as info:
        prepare(raw, PrepareConfig(min_rating=6), "r")
    assert info.value.field == "min_rating"


def test_min_rating_without_ratings_is_a_data_error() -> None:
    with pytest.raises(DataError) as info:
        prepare(raw_log([1], [2], [3]), PrepareConfig(min_rating=4), "r")
    err = info.value
    assert err.field == "min_rating" and "log.csv" in str(err) and "no ratings" in str(err)
    assert "how to fix" in str(err)


def test_max_users_is_seeded() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 100, 2000).tolist(), rng.integers(0, 50, 2000).tolist()
    raw = raw_log(users, items, list(range(2000)))
    a = prepare(raw, PrepareConfig(max_users=10, seed=3), "m")
    b = prepare(raw, PrepareConfig(max_users=10, seed=3), "m")
    c = prepare(raw, PrepareConfig(max_users=10, seed=4), "m")
    assert a.n_users == 10 and a.user_ids.tolist() == b.user_ids.tolist() != c.user_ids.tolist()
    assert a.meta["steps"][-1]["step"] == "max_users"
    assert prepare(raw, PrepareConfig(max_users=1000), "m").n_users == 100


# -------------------------------------------------------------------------------------------- text
def test_text_aligned_unescaped_and_missing_empty() -> None:
    raw = raw_log([1, 1, 2], [10, 20, 30], [1, 2, 3])
    # item 30 twice (the first row wins), 99 is not in the log, 20 has no row
    raw.items = pa.table({"item": [30, 10, 99, 30], "title": ["Salt &amp; Pepper &quot;XL&quot;", "Plain", "x", "dup"]})
    ds = prepare(raw, PrepareConfig(), "t")
    assert ds.item_ids.tolist() == [10, 20, 30]
    assert ds.titles == ["", "Plain", "", 'Salt & Pepper "XL"']
    assert ds.meta["text"] == {
        "columns": ["title"],
        "items_with_row": 2,
        "items_without_row": 1,
        "unused_rows": 1,
        "duplicate_rows": 1,
    }


def test_text_with_mismatched_id_types() -> None:
    raw = raw_log([1, 1], [7, 8], [1, 2])
    raw.items = pa.table({"item": ["7", "0008", "8"], "title": ["seven", "padded", "eight"]})
    assert prepare(raw, PrepareConfig(), "t").titles == ["", "seven", "eight"]


# ------------------------------------------------------------------------------------ save / cache
def test_save_load_round_trip(tmp_path: Path) -> None:
    for users, items in (([3, 1, 3], [9, 9, 4]), (["b", "a", "b"], ["x", "x", "y"])):
        raw = raw_log(users, items, [5, 6, 7], ratings=[1.0, 2.0, 3.0], titles={items[0]: "T &amp; U"})
        ds = prepare(raw, PrepareConfig(), "rt")
        loaded = SequenceDataset.load(ds.save(tmp_path / "ds"))
        assert_same(ds, loaded)


def test_load_or_prepare_caches_and_invalidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5\n")
    source = SourceConfig(format="table", path=str(data))
    prep = PrepareConfig()
    first = load_or_prepare(source, prep, "tiny", cache_root=tmp_path / "cache")
    folder = tmp_path / "cache" / "datasets" / f"tiny-{cache_key(source, prep)}"
    assert (folder / "meta.json").exists() and first.meta["cache_key"] == folder.name.split("-")[-1]

    def must_not_read(cfg: SourceConfig) -> RawLog:
        raise AssertionError("should load from the cache")

    monkeypatch.setattr(prepare_module, "read_source", must_not_read)
    assert_same(first, load_or_prepare(source, prep, "tiny", cache_root=tmp_path / "cache"))
    assert cache_key(source, PrepareConfig(user_min=2)) != cache_key(source, prep)
    monkeypatch.setattr(prepare_module, "read_source", read_source)

    data.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5\n2,4,6\n")
    os.utime(data, ns=(1, 1))
    second = load_or_prepare(source, prep, "tiny", cache_root=tmp_path / "cache")
    assert second.n_interactions == 4
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2


def test_load_or_prepare_rebuilds_damaged_cache_and_checks_name(tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user_id,item_id,timestamp\n1,2,3\n")
    source, prep = SourceConfig(format="table", path=str(data)), PrepareConfig()
    folder = tmp_path / "datasets" / f"tiny-{cache_key(source, prep)}"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{not json")
    assert load_or_prepare(source, prep, "tiny", cache_root=tmp_path).n_interactions == 1
    with pytest.raises(ConfigError):
        load_or_prepare(source, prep, "../escape", cache_root=tmp_path)


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_real_ml100k(real_dataset: Callable[[str], Path]) -> None:
    raw = read_source(SourceConfig(format="ml100k", path=str(real_dataset("ml-100k"))))
    ds = prepare(raw, PrepareConfig(), "ml")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100_000)
    assert ds.user_ids.tolist() == list(range(1, 944)) and ds.item_ids.tolist() == list(range(1, 1683))
    assert ds.titles is not None and ds.titles[1] == "Toy Story (1995)"
    four_plus = prepare(raw, PrepareConfig(min_rating=4), "ml")
    assert four_plus.n_interactions == 34_174 + 21_201


@pytest.mark.slow
def test_real_s3rec_beauty(real_dataset: Callable[[str], Path]) -> None:
    path = real_dataset("s3rec/Beauty.txt")
    ds = prepare(read_source(SourceConfig(format="s3rec", path=str(path))), PrepareConfig(), "beauty")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22_363, 12_101, 198_502)
    first_line = path.read_text().split("\n", 1)[0].split()
    assert ds.sequence(0).tolist() == [int(x) for x in first_line[1:]]  # ids 1..n map to themselves


@pytest.mark.slow
def test_real_seqrecbench_beauty(real_dataset: Callable[[str], Path]) -> None:
    folder = real_dataset("seqrecbench/amazon2014-beauty")
    raw = read_source(SourceConfig(format="seqrecbench", path=str(folder)))
    ds = prepare(raw, PrepareConfig(), "sb-beauty")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22_332, 12_086, 198_215)
    # the file is already chronological per user: the dataset keeps exactly its order
    assert np.array_equal(ds.item_ids[ds.items - 1], raw.interactions.column("item").to_numpy())
    titles = ds.titles
    assert titles is not None and titles[0] == "" and all(titles[1:])
    assert not any("&amp;" in t or "&quot;" in t for t in titles)
    raw_titles = raw.items.column("title").to_pylist() if raw.items is not None else []
    assert sum("&amp;" in t for t in raw_titles) > 0 and sum("&" in t for t in titles) > 0


@pytest.mark.slow
def test_real_movielens_1m_cache(real_dataset: Callable[[str], Path], tmp_path: Path) -> None:
    source = SourceConfig(format="seqrecbench", path=str(real_dataset("seqrecbench/movielens-1m")))
    start = time.perf_counter()
    built = load_or_prepare(source, PrepareConfig(), "ml-1m", cache_root=tmp_path)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_or_prepare(source, PrepareConfig(), "ml-1m", cache_root=tmp_path)
    loaded = time.perf_counter() - start
    print(f"\nML-1M: read+prepare+save {prepared:.2f} s, load from cache {loaded:.2f} s")
    assert (cached.n_users, cached.n_items, cached.n_interactions) == (6040, 3416, 999_611)
    assert_same(built, cached)
    assert loaded < 3.0
