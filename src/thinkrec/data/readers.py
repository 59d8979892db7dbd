"""Readers of raw interaction logs, one per source format, behind a small registry.

Every reader returns a :class:`RawLog`: the interactions in **file order** (``user``, ``item``,
``timestamp`` and, when the source has one, ``rating``) plus an optional item table with text columns.
Files are parsed with :mod:`pyarrow.csv` (or Parquet); nothing loops over rows in Python except the
S3-Rec line format, whose lines are users (tokens are converted with numpy).

Bad input raises :class:`~thinkrec.errors.DataError` naming the file, the line (or row) and the field,
with a hint. Value checks run on the error path only: files are first parsed with the expected types and,
if that fails, re-read as strings to locate the first bad value cheaply.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from thinkrec.data.config import SourceConfig
from thinkrec.errors import DataError
from thinkrec.paths import resolve_data_path

Kind = Literal["id", "int", "float", "str"]
"""How a column is converted: ``id`` = int64 if every value is a plain integer, else string;
``int`` = int64 (timestamps); ``float`` = float64 (ratings); ``str`` = text (null -> "")."""

_READ_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
}
_INT_RE = r"^[+-]?[0-9]+$"
_CANONICAL_INT_RE = r"^(0|-?[1-9][0-9]{0,17})$"
_FLOAT_RE = r"(?i)^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?|inf|infinity|nan)$"
_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
_EXPECTED = {"int": "an integer", "float": "a number"}


@dataclass
class RawLog:
    """Interactions as read from a source, before any filtering.

    Attributes:
        interactions: columns ``user``, ``item`` (int64 or string), ``timestamp`` (int64) and optionally
            ``rating`` (float64), in file order.
        items: ``item`` (same id type as the interactions, as far as the files allow) plus string text
            columns such as ``title``; ``None`` when the source has no item text.
        source: provenance (format, path, the files read).
    """

    interactions: pa.Table
    items: pa.Table | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def has_rating(self) -> bool:
        return "rating" in self.interactions.column_names


# --------------------------------------------------------------------------------------- file access
@dataclass(frozen=True)
class _File:
    """A table file and how to parse it."""

    path: Path
    sep: str | None = None  # None = Parquet
    names: tuple[str, ...] | None = None  # header-less file: the column names; None = first line is a header
    quoting: bool = False
    encoding: str = "utf8"

    @property
    def parquet(self) -> bool:
        return self.sep is None

    def options(self, use_threads: bool = True) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
        read = pacsv.ReadOptions(
            use_threads=use_threads,
            encoding=self.encoding,
            column_names=list(self.names) if self.names is not None else None,
        )
        parse = pacsv.ParseOptions(
            delimiter=self.sep,
            quote_char='"' if self.quoting else False,
            double_quote=self.quoting,
            newlines_in_values=False,
            ignore_empty_lines=True,
        )
        return read, parse

    def locate(self, row: int) -> tuple[int | None, str]:
        """``(line, phrase)`` of data row ``row`` (0-based) for an error message."""
        if self.parquet:
            return None, f" (row {row + 1})"
        skip = 0 if self.names is not None else 1
        return _physical_line(self.path, row + skip), ""


def _open_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    if path.suffix == ".bz2":
        with bz2.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def _physical_line(path: Path, nonempty_index: int) -> int | None:
    """1-based line number of the ``nonempty_index``-th (0-based) non-empty line; error path only."""
    buf = np.frombuffer(_open_bytes(path), dtype=np.uint8)
    if len(buf) == 0:
        return None
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    lengths = ends - starts
    has_cr = (lengths > 0) & (buf[np.maximum(ends - 1, 0)] == 13)
    nonempty = np.flatnonzero(lengths - has_cr > 0)
    return int(nonempty[nonempty_index]) + 1 if nonempty_index < len(nonempty) else None


def _empty_error(path: Path) -> DataError:
    return DataError(
        "the file is empty (no rows)",
        path=path,
        hint="check that the file was fully downloaded/extracted and that the path points to the right file",
    )


def _missing_column_error(src: _File, column: str, available: list[str]) -> DataError:
    return DataError(
        f"missing column {column!r}; the file has columns {available}",
        path=src.path,
        field=column,
        hint="map the column names in the source config (user_col, item_col, time_col, rating_col, "
        "items_id_col, text_cols), or check the separator (sep)",
    )


def _csv_columns(src: _File) -> list[str]:
    """The column names of a delimited file (reads only its first block)."""
    read, parse = src.options()
    try:
        reader = pacsv.open_csv(src.path, read_options=read, parse_options=parse)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _read_error(src, exc) from exc
    return list(reader.schema.names)


def _read_error(src: _File, exc: Exception) -> DataError:
    """Explain a failure of pyarrow to read a delimited file."""
    text = str(exc)
    if "Empty CSV file" in text:
        return _empty_error(src.path)
    if "CSV parse error" in text:
        return _parse_error(src, exc)
    if "invalid UTF8" in text:
        data = _open_bytes(src.path)
        try:
            data.decode("utf-8")
            line = None
        except UnicodeDecodeError as decode_error:
            line = data.count(b"\n", 0, decode_error.start) + 1
        return DataError(
            "the file is not valid UTF-8 text",
            path=src.path,
            line=line,
            hint="convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)",
        )
    if isinstance(exc, OSError):
        return DataError(
            f"cannot read the file ({text})",
            path=src.path,
            hint="it may be damaged or not really compressed as its extension says; download it again",
        )
    return DataError(f"cannot read the file: {text}", path=src.path, hint="check the file format and sep")


def _parse_error(src: _File, exc: Exception) -> DataError:
    """Locate the first malformed row of a delimited file (re-read single-threaded to get its number)."""
    found: list[pacsv.InvalidRow] = []

    def handler(row: pacsv.InvalidRow) -> str:
        found.append(row)
        return "error"

    read, parse = src.options(use_threads=False)
    parse.invalid_row_handler = handler
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(src.path, read_options=read, parse_options=parse)
    sep = "tab" if src.sep == "\t" else repr(src.sep)
    if found and found[-1].number is not None:
        row = found[-1]
        line = _physical_line(src.path, row.number - 1)
        return DataError(
            f"expected {row.expected_columns} {sep}-separated fields, found {row.actual_columns}: {row.text[:80]!r}",
            path=src.path,
            line=line,
            hint="fix or remove that line; if every line looks like this, the separator is wrong "
            "(set sep in the source config)",
        )
    return DataError(f"cannot parse the file: {exc}", path=src.path, hint="check the file format and sep")


def _read_delimited(src: _File, kinds: dict[str, Kind]) -> pa.Table:
    available = _csv_columns(src)
    for column in kinds:
        if column not in available:
            raise _missing_column_error(src, column, available)
    read, parse = src.options()

    def read_as(types: dict[str, pa.DataType]) -> pa.Table:
        convert = pacsv.ConvertOptions(
            include_columns=list(kinds),
            column_types=types,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        return pacsv.read_csv(src.path, read_options=read, parse_options=parse, convert_options=convert)

    try:
        return read_as({column: _READ_TYPES[kind] for column, kind in kinds.items()})
    except (pa.ArrowInvalid, OSError) as exc:
        if "conversion error" not in str(exc) or "invalid UTF8" in str(exc):
            raise _read_error(src, exc) from exc
    # a value did not parse with its type: read everything as text, the conversion locates it
    try:
        return read_as({column: pa.string() for column in kinds})
    except (pa.ArrowInvalid, OSError) as exc:
        raise _read_error(src, exc) from exc


def _read_parquet(src: _File, kinds: dict[str, Kind]) -> pa.Table:
    try:
        available = pq.read_schema(src.path).names
        for column in kinds:
            if column not in available:
                raise _missing_column_error(src, column, available)
        return pq.read_table(src.path, columns=list(kinds))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"not a readable Parquet file: {exc}", path=src.path, hint="check that the file is complete"
        ) from exc


def _first_false(mask: pa.ChunkedArray | pa.Array) -> int | None:
    values = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    bad = np.flatnonzero(~values)
    return int(bad[0]) if len(bad) else None


def _value_error(src: _File, column: str, row: int, message: str, hint: str) -> DataError:
    line, phrase = src.locate(row)
    return DataError(message + phrase, path=src.path, line=line, field=column, hint=hint)


def _convert(src: _File, column: str, values: pa.ChunkedArray, kind: Kind) -> pa.ChunkedArray:
    """Convert one column to its kind's type, raising a located DataError on a bad value."""
    if kind == "str":
        return pc.fill_null(values.cast(pa.string()), "")
    missing = _first_false(pc.is_valid(values))
    if missing is not None:
        raise _value_error(src, column, missing, "empty value", "fill in or remove that row")
    typ = values.type
    if pa.types.is_dictionary(typ) or pa.types.is_large_string(typ):
        values, typ = values.cast(pa.string()), pa.string()
    if kind == "id":
        if pa.types.is_integer(typ):
            return values.cast(pa.int64())
        if pa.types.is_string(typ):
            empty = _first_false(pc.greater(pc.utf8_length(values), 0))
            if empty is not None:
                raise _value_error(src, column, empty, "empty value", "fill in or remove that row")
            if _first_false(pc.match_substring_regex(values, _CANONICAL_INT_RE)) is None:
                return values.cast(pa.int64())
            return values
        raise DataError(
            f"ids must be integers or strings, not {typ}",
            path=src.path,
            field=column,
            hint="convert the id column to integers or strings",
        )
    if (pa.types.is_timestamp(typ) or pa.types.is_date(typ)) and kind == "int":
        # unix seconds (UTC for zoned timestamps); sub-second parts are dropped
        return pc.cast(values, pa.timestamp("s", tz=getattr(typ, "tz", None)), safe=False).cast(pa.int64())
    if kind == "int" and pa.types.is_string(typ) and _first_false(pc.match_substring_regex(values, _FLOAT_RE)) == 0:
        return _iso_times(src, column, values)  # the first value is not a number: dates
    if pa.types.is_string(typ):
        bad = _first_false(pc.match_substring_regex(values, _FLOAT_RE))
        if bad is not None:
            text = str(values[bad].as_py())[:40]
            raise _value_error(
                src,
                column,
                bad,
                f"{text!r} is not {_EXPECTED[kind]}",
                f"{column!r} must hold {_EXPECTED[kind]}{' (e.g. unix seconds)' if kind == 'int' else ''} on "
                "every line; fix that value, or map another column in the source config",
            )
        if kind == "int" and _first_false(pc.match_substring_regex(values, _INT_RE)) is None:
            with contextlib.suppress(pa.ArrowInvalid):  # beyond the int64 range: reported below
                return values.cast(pa.int64())
        values = values.cast(pa.float64())  # e.g. '881250949.0' (checked to be whole below)
    if kind == "float" and (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        return values.cast(pa.float64())
    if kind == "int" and pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if kind == "int" and pa.types.is_floating(values.type):
        bad = _first_false(pc.equal(pc.floor(values), values))
        if bad is not None:
            raise _value_error(
                src,
                column,
                bad,
                f"{values[bad].as_py()!r} is not {_EXPECTED[kind]}",
                f"{column!r} must hold whole numbers (e.g. unix seconds)",
            )
        return values.cast(pa.int64())
    raise DataError(
        f"expected {_EXPECTED[kind]} column, found type {values.type}",
        path=src.path,
        field=column,
        hint="convert the column to numbers",
    )


def _iso_times(src: _File, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO dates or date-times (``2024-03-01``, ``2024-03-01T12:30:00``, optionally with ``Z`` or an
    offset) as unix seconds; times without a zone are read as UTC. Every value must be such a date."""
    bad = _first_false(pc.match_substring_regex(values, _DATE_RE))
    if bad is None:
        for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
            with contextlib.suppress(pa.ArrowInvalid):
                return pc.divide(values.cast(typ).cast(pa.int64()), 1_000_000)
        bad = next((row for row in range(len(values)) if not _parses_as_time(str(values[row].as_py()))), None)
        if bad is None:  # every value parses alone: zoned and zone-less values are mixed
            zoned = pc.match_substring_regex(values, r"(Z|[+-][0-9]{2}:?[0-9]{2})$")
            bad = _first_false(pc.equal(zoned, zoned[0])) or 0
    text = str(values[bad].as_py())[:40]
    raise _value_error(
        src,
        column,
        bad,
        f"{text!r} is neither a number nor an ISO date",
        f"{column!r} must hold unix times or ISO dates (e.g. 2024-03-01 or 2024-03-01T12:30:00) on every line,"
        " all with a zone offset or all without",
    )


def _parses_as_time(text: str) -> bool:
    for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        with contextlib.suppress(pa.ArrowInvalid):
            pa.array([text]).cast(typ)
            return True
    return False


def _read_columns(src: _File, kinds: dict[str, Kind], rename: dict[str, str] | None = None) -> pa.Table:
    """Read and convert the named columns of a file; optionally rename them."""
    table = _read_parquet(src, kinds) if src.parquet else _read_delimited(src, kinds)
    converted = {}
    for column, kind in kinds.items():
        try:
            converted[(rename or {}).get(column, column)] = _convert(src, column, table.column(column), kind)
        except pa.ArrowException as exc:  # a cast the checks did not foresee (e.g. uint64 overflow)
            raise DataError(f"cannot convert the column: {exc}", path=src.path, field=column) from exc
    return pa.table(converted)


def _position_within_user(users: pa.ChunkedArray) -> npt.NDArray[np.int64]:
    """Each row's 0-based position among its user's rows, in file order (used when there is no time)."""
    codes = np.asarray(pc.dictionary_encode(users.combine_chunks()).indices.to_numpy(zero_copy_only=False))
    n = len(codes)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    ranks = np.arange(n, dtype=np.int64)
    group_start = np.maximum.accumulate(np.where(first, ranks, 0))
    position = np.empty(n, dtype=np.int64)
    position[order] = ranks - group_start
    return position


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found" if not path.exists() else f"{what}: not a file", path=path, hint=hint)
    return path


# ------------------------------------------------------------------------------------------ readers
_ML100K_ITEM_FIELDS = (
    *("item", "title", "release_date", "video_release_date", "imdb_url"),
    *(f"genre{i}" for i in range(19)),
)


def _ml100k_files(cfg: SourceConfig) -> list[Path]:
    root = resolve_data_path(cfg.path)
    folder = root.parent if root.is_file() else root
    data = _require_file(
        root if root.is_file() else folder / "u.data",
        "MovieLens-100K ratings (u.data)",
        "point path at the ml-100k folder that holds u.data and u.item",
    )
    item = folder / "u.item"
    return [data, item] if item.is_file() else [data]


def _read_ml100k(cfg: SourceConfig, files: list[Path]) -> RawLog:
    data = _File(files[0], "\t", names=("user", "item", "rating", "timestamp"))
    interactions = _read_columns(data, {"user": "int", "item": "int", "timestamp": "int", "rating": "float"})
    items = None
    if len(files) > 1:
        item_file = _File(files[1], "|", names=_ML100K_ITEM_FIELDS, encoding="latin-1")
        items = _read_columns(item_file, {"item": "int", "title": "str"})
    return RawLog(interactions, items)


def _seqrecbench_files(cfg: SourceConfig) -> list[Path]:
    root = resolve_data_path(cfg.path)
    data = _require_file(
        root / "derived" / "interactions.tsv.gz",
        "SeqRecBench interactions",
        "point path at a SeqRecBench dataset folder (e.g. seqrecbench/amazon2014-beauty) that holds "
        "derived/interactions.tsv.gz",
    )
    items = root / "derived" / "items.tsv"
    return [data, items] if items.is_file() else [data]


def _read_seqrecbench(cfg: SourceConfig, files: list[Path]) -> RawLog:
    rename = {"user_id": "user", "item_id": "item"}
    interactions = _read_columns(
        _File(files[0], "\t"), {"user_id": "int", "item_id": "int", "timestamp": "int"}, rename
    )
    items = None
    if len(files) > 1:
        items = _read_columns(_File(files[1], "\t"), {"item_id": "int", "title": "str"}, rename)
    return RawLog(interactions, items)


def _single_file(cfg: SourceConfig) -> list[Path]:
    path = resolve_data_path(cfg.path)
    return [_require_file(path, f"{cfg.format} data file", "point path at the data file itself, not a folder")]


_TOKEN = re.compile(rb"[^\s]+|\n")


def _read_s3rec(cfg: SourceConfig, files: list[Path]) -> RawLog:
    """``user item item ...`` per line; the timestamp is the item's position within its user."""
    path = files[0]
    tokens = np.array([*_TOKEN.findall(_open_bytes(path)), b"\n"])
    is_newline = tokens == b"\n"
    line = np.cumsum(is_newline) - is_newline  # 0-based line index of each token
    words, word_line = tokens[~is_newline], line[~is_newline]
    if len(words) == 0:
        raise _empty_error(path)
    first = np.ones(len(words), dtype=bool)  # the first word of a line is its user
    first[1:] = word_line[1:] != word_line[:-1]
    numeric = np.char.isdigit(words) & (np.char.str_len(words) <= 18)
    if not numeric.all():
        bad = int(np.flatnonzero(~numeric)[0])
        raise DataError(
            f"{words[bad].decode(errors='replace')[:40]!r} is not an integer id",
            path=path,
            line=int(word_line[bad]) + 1,
            field="user" if first[bad] else "item",
            hint="every line must be 'user_id item_id item_id ...' with integer ids separated by spaces",
        )
    values = words.astype(np.int64)
    owner = values[first][np.cumsum(first) - 1]
    users = pa.chunked_array([owner[~first]])
    table = pa.table({"user": users, "item": values[~first]})
    if table.num_rows == 0:
        raise DataError("no line lists any item", path=path, hint="lines must be 'user item item ...'")
    return RawLog(table.append_column("timestamp", pa.array(_position_within_user(users))))


def _read_sasrec(cfg: SourceConfig, files: list[Path]) -> RawLog:
    """``user item`` per line (chronological within user); the timestamp is the position within user."""
    table = _read_columns(_File(files[0], " ", names=("user", "item")), {"user": "int", "item": "int"})
    return RawLog(table.append_column("timestamp", pa.array(_position_within_user(table.column("user")))))


def _table_file(path: Path, sep: str | None) -> _File:
    name = path.name.lower()
    base = name.removesuffix(".gz").removesuffix(".bz2")
    if base.endswith((".parquet", ".pq")):
        return _File(path)
    if sep is None:
        if base.endswith(".csv"):
            sep = ","
        elif base.endswith((".tsv", ".txt", ".tab")):
            sep = "\t"
        else:
            raise DataError(
                "cannot tell the table format from the file extension",
                path=path,
                field="sep",
                hint="use .csv, .tsv, .txt, .parquet (optionally .gz for csv/tsv), or set sep in the source config",
            )
    return _File(path, sep, quoting=sep == ",")


def _items_path(cfg: SourceConfig, interactions: Path) -> Path | None:
    if cfg.items_path is None:
        return None
    candidate = Path(cfg.items_path).expanduser()
    if not candidate.is_absolute() and (interactions.parent / candidate).is_file():
        return interactions.parent / candidate
    return resolve_data_path(candidate)


def _table_files(cfg: SourceConfig) -> list[Path]:
    files = _single_file(cfg)
    items = _items_path(cfg, files[0])
    return files if items is None else [*files, items]


def _table_columns(cfg: SourceConfig, path: Path) -> tuple[dict[str, Kind], dict[str, str]]:
    """A ``table`` source's columns: each mapped column's kind, and its name in a :class:`RawLog` (``user``,
    ``item``, ``timestamp``, ``rating``). Raises DataError when one column is mapped twice."""
    kinds: dict[str, Kind] = {cfg.user_col: "id", cfg.item_col: "id"}
    rename = {cfg.user_col: "user", cfg.item_col: "item"}
    if cfg.time_col is not None:
        kinds[cfg.time_col], rename[cfg.time_col] = "int", "timestamp"
    if cfg.rating_col is not None:
        kinds[cfg.rating_col], rename[cfg.rating_col] = "float", "rating"
    mapped = [cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col]
    twice = [column for column in set(mapped) if column is not None and mapped.count(column) > 1]
    if twice:
        raise DataError(
            "the same column is mapped twice",
            path=path,
            field=twice[0],
            hint="user_col, item_col, time_col and rating_col must name different columns",
        )
    return kinds, rename


def _read_item_table(cfg: SourceConfig, files: list[Path]) -> pa.Table | None:
    """A ``table`` source's item table (id and text columns), or ``None`` when it has none."""
    if len(files) < 2:
        return None
    item_kinds: dict[str, Kind] = {cfg.items_id_col: "id"}
    item_kinds.update({column: "str" for column in cfg.text_cols if column != cfg.items_id_col})
    return _read_columns(_table_file(files[1], None), item_kinds, {cfg.items_id_col: "item"})


def _read_table(cfg: SourceConfig, files: list[Path]) -> RawLog:
    src = _table_file(files[0], cfg.sep)
    kinds, rename = _table_columns(cfg, src.path)
    table = _read_columns(src, kinds, rename)
    if cfg.time_col is None:
        table = table.append_column("timestamp", pa.array(_position_within_user(table.column("user"))))
    items = _read_item_table(cfg, files)
    return RawLog(table.select(["user", "item", "timestamp", *(["rating"] if cfg.rating_col else [])]), items)


class Reader(NamedTuple):
    """A source format: which files it reads, and how."""

    files: Callable[[SourceConfig], list[Path]]
    read: Callable[[SourceConfig, list[Path]], RawLog]


READERS: dict[str, Reader] = {
    "ml100k": Reader(_ml100k_files, _read_ml100k),
    "seqrecbench": Reader(_seqrecbench_files, _read_seqrecbench),
    "s3rec": Reader(_single_file, _read_s3rec),
    "sasrec": Reader(_single_file, _read_sasrec),
    "table": Reader(_table_files, _read_table),
}


def _reader(cfg: SourceConfig) -> Reader:
    reader = READERS.get(cfg.format)
    if reader is None:
        raise DataError(
            f"unknown source format {cfg.format!r}", field="format", hint=f"use one of: {', '.join(READERS)}"
        )
    return reader


def source_files(cfg: SourceConfig) -> list[Path]:
    """The files :func:`read_source` would read (resolved; raises DataError if a required one is missing)."""
    return _reader(cfg).files(cfg)


def read_source(cfg: SourceConfig) -> RawLog:
    """Read a raw dataset as configured; see :class:`RawLog`."""
    reader = _reader(cfg)
    files = reader.files(cfg)
    for path in files:
        if path.stat().st_size == 0:
            raise _empty_error(path)
    raw = reader.read(cfg, files)
    if raw.interactions.num_rows == 0:
        raise _empty_error(files[0])
    raw.source = {"format": cfg.format, "path": cfg.path, "files": [str(path) for path in files]}
    return raw
