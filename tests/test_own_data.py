"""Own data: ISO dates and Parquet date/timestamp columns as time, the title column of any item table shown
everywhere titles are shown, and data paths relative to the config file."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thinkrec.cli.main import main
from thinkrec.config.loader import load_config
from thinkrec.data.config import SourceConfig
from thinkrec.data.readers import read_source
from thinkrec.errors import ConfigError, DataError

DAY = 86400
JAN_1 = 1704067200  # 2024-01-01T00:00:00Z


def times(cfg: SourceConfig) -> list[int]:
    return read_source(cfg).interactions.column("timestamp").to_pylist()


def test_iso_dates_in_csv_are_unix_seconds(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\na,1,2024-01-01\na,2,2024-01-02T06:00:00\nb,1,2024-01-03 00:00:01\n")
    assert times(SourceConfig(format="table", path=str(path), user_col="u", item_col="i", time_col="t")) == [
        JAN_1,
        JAN_1 + DAY + 6 * 3600,
        JAN_1 + 2 * DAY + 1,
    ]
    path.write_text("u,i,t\na,1,2024-01-01T01:00:00+01:00\na,2,2024-01-02T00:00:00Z\n")
    cfg = SourceConfig(format="table", path=str(path), user_col="u", item_col="i", time_col="t")
    assert times(cfg) == [JAN_1, JAN_1 + DAY]


def test_a_bad_date_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\na,1,2024-01-01\na,2,2024-01-02\nb,1,next tuesday\n")
    with pytest.raises(DataError, match="neither a number nor an ISO date") as err:
        read_source(SourceConfig(format="table", path=str(path), user_col="u", item_col="i", time_col="t"))
    assert (err.value.line, err.value.field) == (4, "t")


@pytest.mark.parametrize(
    "column",
    [
        pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)], pa.date32()),
        pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2, 0, 0, 0, 500)], pa.timestamp("ms")),
        pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)], pa.timestamp("us", tz="UTC")),
    ],
    ids=["date32", "timestamp-ms", "timestamp-utc"],
)
def test_parquet_date_and_timestamp_columns(tmp_path: Path, column: pa.Array) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", "a"], "item_id": [1, 2], "timestamp": column}), path)
    assert times(SourceConfig(format="table", path=str(path))) == [JAN_1, JAN_1 + DAY]


def test_title_col_must_be_a_text_column() -> None:
    SourceConfig(format="table", path="x.csv", text_cols=["genre", "name"], title_col="name")
    with pytest.raises(ValueError, match="title_col 'name' is not one of text_cols"):
        SourceConfig(format="table", path="x.csv", text_cols=["genre"], title_col="name")


def write_shop(folder: Path, text_cols: str, title_col: str | None, relative: bool = False) -> Path:
    """A CSV log (users walk 12 items in steps of +1), a product table with ``name`` and ``genre``, a config."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["customer,sku,day"]
    for user in range(40):
        rows += [f"u{user},{(user + i) % 12 + 1},{1000 + 10 * i}" for i in range(8)]
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    items = ["sku,genre,name"] + [f"{i},genre {i % 3},Gadget number {i}" for i in range(1, 13)]
    (folder / "products.csv").write_text("\n".join(items) + "\n")
    where = "" if relative else f"{folder}/"
    title = f'title_col = "{title_col}"' if title_col else ""
    (folder / "shop.toml").write_text(
        f"""
[data]
name = "shop"
split = {{ kind = "loo" }}

[data.source]
format = "table"
path = "{where}events.csv"
user_col = "customer"
item_col = "sku"
time_col = "day"
items_path = "{where}products.csv"
items_id_col = "sku"
text_cols = {text_cols}
{title}

[model]
hidden = 16
layers = 1
max_len = 8

[train]
epochs = 1
progress = false
"""
    )
    return folder / "shop.toml"


@pytest.mark.parametrize(
    ("text_cols", "title_col"), [('["name"]', None), ('["genre", "name"]', "name")], ids=["first", "named"]
)
def test_titles_come_from_the_title_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text_cols: str, title_col: str
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    config = write_shop(tmp_path / "shop", text_cols, title_col)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--history", "3,4", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("Gadget number") >= 5, out  # the history's two and the three recommended

    users = tmp_path / "users.csv"
    users.write_text("user,items\nx,3 4\n")
    assert main(["recommend", str(run), "--batch", str(users), "--output", str(tmp_path / "top.csv")]) == 0
    top = (tmp_path / "top.csv").read_text()
    assert top.count("Gadget number") == 10, top


def test_data_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    config = write_shop(tmp_path / "configs" / "shop", '["name"]', None, relative=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(config, elsewhere))
    assert cfg.data.source.path == str(config.parent / "events.csv")
    assert cfg.data.source.items_path == str(config.parent / "products.csv")
    assert main(["data", "prepare", str(config)]) == 0
    assert "40 users, 12 items" in capsys.readouterr().out
    # a preset's relative path is still looked up under the data directory
    assert load_config("ml100k-sasrec").data.source.path == "ml-100k"
    with pytest.raises(ConfigError, match="title_col"):
        load_config(str(config), ["data.source.title_col=price"])
