"""Readers: every format on small made-up files, every input error, and the real files' raw counts."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from thinkrec.data.config import PrepareConfig, SourceConfig
from thinkrec.data.readers import READERS, read_source, source_files
from thinkrec.errors import DataError, ThinkrecError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def rows(table: pa.Table) -> list[tuple[object, ...]]:
    return list(zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True))


def read_error(cfg: SourceConfig) -> DataError:
    with pytest.raises(DataError) as info:
        read_source(cfg)
    return info.value


def table_cfg(path: Path, **kw: object) -> SourceConfig:
    return SourceConfig(format="table", path=str(path), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- config
def test_config_forbids_unknown_keys_and_formats() -> None:
    with pytest.raises(ValidationError):
        SourceConfig(format="table", path="x.csv", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SourceConfig(format="bogus", path="x.csv")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        PrepareConfig(dedup="sometimes")  # type: ignore[arg-type]
    for model in (SourceConfig, PrepareConfig):
        assert all(f.description for f in model.model_fields.values()), model


def test_registry_covers_every_format() -> None:
    assert set(READERS) == {"ml100k", "seqrecbench", "s3rec", "sasrec", "table"}


# ------------------------------------------------------------------------------------------ formats
def test_ml100k(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "3\t10\t4\t900\n1\t20\t5\t800\n1\t10\t1\t700\n")
    item_line = "{}|{}|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n"
    write(
        tmp_path / "u.item",
        (item_line.format(10, "Misérables, Les (1995)") + item_line.format(20, "B")).encode("latin-1"),
    )
    raw = read_source(SourceConfig(format="ml100k", path=str(tmp_path)))
    assert rows(raw.interactions.select(["user", "item", "timestamp", "rating"])) == [
        (3, 10, 900, 4.0),
        (1, 20, 800, 5.0),
        (1, 10, 700, 1.0),
    ]
    assert raw.interactions.column("rating").type == pa.float64()
    assert raw.items is not None and rows(raw.items) == [(10, "Misérables, Les (1995)"), (20, "B")]
    assert raw.source["format"] == "ml100k" and len(raw.source["files"]) == 2


def test_ml100k_without_item_file(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t4\t900\n")
    raw = read_source(SourceConfig(format="ml100k", path=str(tmp_path)))
    assert raw.items is None and raw.interactions.num_rows == 1


def test_seqrecbench_keeps_file_order_and_unquoted_titles(tmp_path: Path) -> None:
    write(
        tmp_path / "derived" / "interactions.tsv.gz",
        "user_id\titem_id\ttimestamp\n101\t7\t5\n100\t8\t9\n100\t7\t1\n",
    )
    write(tmp_path / "derived" / "items.tsv", 'item_id\ttitle\n7\tA 24" "Big" stand &amp; co\n8\tB\n')
    raw = read_source(SourceConfig(format="seqrecbench", path=str(tmp_path)))
    assert rows(raw.interactions) == [(101, 7, 5), (100, 8, 9), (100, 7, 1)]
    assert "rating" not in raw.interactions.column_names
    assert raw.items is not None and raw.items.column("title").to_pylist() == [
        'A 24" "Big" stand &amp; co',
        "B",
    ]


def test_seqrecbench_without_titles(tmp_path: Path) -> None:
    write(tmp_path / "derived" / "interactions.tsv.gz", "user_id\titem_id\ttimestamp\n1\t2\t3\n")
    assert read_source(SourceConfig(format="seqrecbench", path=str(tmp_path))).items is None


def test_s3rec_positions_as_time(tmp_path: Path) -> None:
    path = write(tmp_path / "Beauty.txt", "2 5 6 7\r\n1 6  5\n\n3 9\n")
    raw = read_source(SourceConfig(format="s3rec", path=str(path)))
    assert rows(raw.interactions) == [(2, 5, 0), (2, 6, 1), (2, 7, 2), (1, 6, 0), (1, 5, 1), (3, 9, 0)]
    assert raw.items is None


def test_sasrec_positions_within_user(tmp_path: Path) -> None:
    path = write(tmp_path / "Video.txt", "1 5\n1 6\n2 5\n1 7\n")
    raw = read_source(SourceConfig(format="sasrec", path=str(path)))
    assert rows(raw.interactions) == [(1, 5, 0), (1, 6, 1), (2, 5, 0), (1, 7, 2)]


def test_table_csv_quoted_string_ids_and_item_table(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", 'uid,asin,ts,stars\nu2,B01,5,4.5\n"u1",007,3,2\nu1,B01,4,1e0\n')
    write(tmp_path / "items.tsv", "asin\tname\tbrand\n007\tBond &amp; co\tX\nB01\tWidget\t\n")
    cfg = table_cfg(
        tmp_path / "log.csv",
        user_col="uid",
        item_col="asin",
        time_col="ts",
        rating_col="stars",
        items_path="items.tsv",
        items_id_col="asin",
        text_cols=["name", "brand"],
    )
    raw = read_source(cfg)
    assert raw.interactions.column_names == ["user", "item", "timestamp", "rating"]
    assert rows(raw.interactions) == [("u2", "B01", 5, 4.5), ("u1", "007", 3, 2.0), ("u1", "B01", 4, 1.0)]
    assert raw.items is not None and rows(raw.items) == [("007", "Bond &amp; co", "X"), ("B01", "Widget", "")]
    assert [Path(f).name for f in raw.source["files"]] == ["log.csv", "items.tsv"]


def test_table_whole_float_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,881250949.0\n1,3,8.8e8\n")
    assert read_source(table_cfg(path)).interactions.column("timestamp").to_pylist() == [881250949, 880000000]
    path = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4.5\n")
    err = read_error(table_cfg(path))
    assert (err.line, err.field) == (3, "timestamp") and "4.5" in str(err)


def test_table_integer_ids_tsv_gz_and_no_time(tmp_path: Path) -> None:
    write(tmp_path / "log.tsv.gz", "user_id\titem_id\n10\t3\n9\t3\n10\t4\n")
    raw = read_source(table_cfg(tmp_path / "log.tsv.gz", time_col=None))
    assert raw.interactions.column("user").type == pa.int64()
    assert rows(raw.interactions) == [(10, 3, 0), (9, 3, 0), (10, 4, 1)]


def test_table_parquet_and_explicit_separator(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"user_id": pa.array([1, 2], pa.int32()), "item_id": ["a", "b"], "timestamp": [5.0, 6.0]}),
        tmp_path / "log.parquet",
    )
    raw = read_source(table_cfg(tmp_path / "log.parquet"))
    assert rows(raw.interactions) == [(1, "a", 5), (2, "b", 6)]
    assert raw.interactions.column("user").type == pa.int64()
    write(tmp_path / "log.dat", "user_id;item_id;timestamp\n1;2;3\n")
    assert rows(read_source(table_cfg(tmp_path / "log.dat", sep=";")).interactions) == [(1, 2, 3)]


def test_source_files_resolves_relative_to_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "data" / "s3rec" / "Tiny.txt", "1 2 3\n")
    monkeypatch.setenv("THINKREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    cfg = SourceConfig(format="s3rec", path="s3rec/Tiny.txt")
    assert source_files(cfg) == [tmp_path / "data" / "s3rec" / "Tiny.txt"]
    assert read_source(cfg).interactions.num_rows == 2


# ------------------------------------------------------------------------------------------- errors
def test_error_missing_path(tmp_path: Path) -> None:
    err = read_error(SourceConfig(format="s3rec", path=str(tmp_path / "nope.txt")))
    assert "nope.txt" in str(err) and "not found" in str(err) and "how to fix" in str(err)
    err = read_error(SourceConfig(format="seqrecbench", path=str(tmp_path)))
    assert "interactions.tsv.gz" in str(err)
    assert isinstance(err, ThinkrecError)


def test_error_unknown_format(tmp_path: Path) -> None:
    cfg = SourceConfig.model_construct(format="bogus", path=str(tmp_path))  # bypasses validation
    err = read_error(cfg)
    assert "bogus" in str(err) and err.field == "format" and "table" in str(err)


def test_error_missing_column_names_available_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,item_id,timestamp\n1,2,3\n")
    err = read_error(table_cfg(path))
    assert err.field == "user_id" and "log.csv" in str(err)
    assert "['user', 'item_id', 'timestamp']" in str(err)
    pq.write_table(pa.table({"user_id": [1], "item": [2]}), tmp_path / "log.parquet")
    err = read_error(table_cfg(tmp_path / "log.parquet"))
    assert err.field == "item_id" and "['user_id', 'item']" in str(err)
    write(tmp_path / "i.csv", "id,title\n2,x\n")
    err = read_error(table_cfg(path, user_col="user", items_path="i.csv"))
    assert err.field == "item_id" and "i.csv" in str(err)


def test_error_non_numeric_timestamp_names_line(tmp_path: Path) -> None:
    # line 1 header, 2 ok, 3 empty (skipped by the parser, still counted), 4 ok, 5 bad
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n\n1,3,4\n2,3,2021-01-01\n")
    err = read_error(table_cfg(path))
    assert (err.line, err.field) == (5, "timestamp")
    assert "log.csv" in str(err) and "line 5" in str(err) and "2021-01-01" in str(err)


def test_error_non_numeric_timestamp_in_gzipped_typed_read(tmp_path: Path) -> None:
    lines = "".join(f"{u}\t{u + 1}\t{u * 10}\n" for u in range(300))
    write(tmp_path / "derived" / "interactions.tsv.gz", f"user_id\titem_id\ttimestamp\n{lines}5\t6\tsoon\n")
    err = read_error(SourceConfig(format="seqrecbench", path=str(tmp_path)))
    assert (err.line, err.field) == (302, "timestamp") and "interactions.tsv.gz" in str(err)


def test_error_bad_values_in_other_columns(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t4\t900\n1\t11\tfour\t900\n")
    err = read_error(SourceConfig(format="ml100k", path=str(tmp_path)))
    assert (err.line, err.field) == (2, "rating") and "u.data" in str(err)
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n1,,4\n")
    err = read_error(table_cfg(path))
    assert (err.line, err.field) == (3, "item_id") and "empty value" in str(err)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "timestamp": ["1", "x"]}), tmp_path / "p.parquet")
    err = read_error(table_cfg(tmp_path / "p.parquet"))
    assert err.field == "timestamp" and "row 2" in str(err) and "p.parquet" in str(err)


def test_error_wrong_field_count_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "Video.txt", "1 5\n1 6\n\n2 5 9\n")
    err = read_error(SourceConfig(format="sasrec", path=str(path)))
    assert err.line == 4 and "Video.txt" in str(err) and "expected 2" in str(err)


def test_error_s3rec_bad_token(tmp_path: Path) -> None:
    path = write(tmp_path / "Beauty.txt", "1 2 3\n2 4 x5\n")
    err = read_error(SourceConfig(format="s3rec", path=str(path)))
    assert (err.line, err.field) == (2, "item") and "Beauty.txt" in str(err) and "x5" in str(err)


@pytest.mark.parametrize(
    ("fmt", "name", "text"),
    [
        ("s3rec", "a.txt", ""),
        ("s3rec", "b.txt", "\n\n"),
        ("sasrec", "c.txt", ""),
        ("table", "d.csv", ""),
        ("table", "e.csv", "user_id,item_id,timestamp\n"),
        ("table", "f.tsv.gz", ""),
        ("table", "g.parquet", ""),
    ],
)
def test_error_empty_file(tmp_path: Path, fmt: str, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    err = read_error(SourceConfig(format=fmt, path=str(path)))  # type: ignore[arg-type]
    assert name in str(err) and "empty" in str(err)


def test_error_empty_seqrecbench_file(tmp_path: Path) -> None:
    write(tmp_path / "derived" / "interactions.tsv.gz", "")
    err = read_error(SourceConfig(format="seqrecbench", path=str(tmp_path)))
    assert "interactions.tsv.gz" in str(err) and "empty" in str(err)


def test_error_empty_item_table(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    write(tmp_path / "items.csv", "")
    err = read_error(table_cfg(path, items_path="items.csv"))
    assert "items.csv" in str(err) and "empty" in str(err)


def test_error_damaged_gzip_and_bad_encoding(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv.gz"
    path.write_bytes(b"this is not gzip")
    err = read_error(table_cfg(path))
    assert "log.tsv.gz" in str(err) and "damaged" in str(err)
    path = write(
        tmp_path / "log.tsv",
        b"user_id\titem_id\ttimestamp\ttitle\n1\t2\t3\tok\n1\t3\t4\tcaf\xe9\n",
    )
    write(tmp_path / "items.tsv", b"item_id\ttitle\n2\tok\n3\tcaf\xe9\n")
    err = read_error(table_cfg(path, items_path="items.tsv"))
    assert err.line == 3 and "items.tsv" in str(err) and "UTF-8" in str(err)


def test_error_table_extension_and_double_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "log.data", "a,b\n")
    err = read_error(table_cfg(path))
    assert err.field == "sep" and "log.data" in str(err)
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    err = read_error(table_cfg(path, item_col="user_id"))
    assert err.field == "user_id" and "twice" in str(err)


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_real_ml100k_raw(real_dataset: Callable[[str], Path]) -> None:
    raw = read_source(SourceConfig(format="ml100k", path=str(real_dataset("ml-100k"))))
    assert raw.interactions.num_rows == 100_000
    assert raw.items is not None and raw.items.num_rows == 1682
    titles = raw.items.column("title").to_pylist()
    assert "Misérables, Les (1995)" in titles  # latin-1 decoded
    assert rows(raw.interactions.slice(0, 1)) == [(196, 242, 881250949, 3.0)]


@pytest.mark.slow
def test_real_sasrec_video_games_raw(real_dataset: Callable[[str], Path]) -> None:
    raw = read_source(SourceConfig(format="sasrec", path=str(real_dataset("sasrec-video-games/Video.txt"))))
    assert raw.interactions.num_rows == 287_107
    assert len(raw.interactions.column("user").unique()) == 31_013
