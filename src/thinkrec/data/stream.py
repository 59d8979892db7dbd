"""Read a big interaction table in batches, straight into id codes, so preparing it never holds the raw table.

A ``table`` source (Parquet, or an uncompressed CSV/TSV) is scanned twice with :mod:`pyarrow.dataset`, a
batch of rows at a time: the first pass collects the distinct user and item ids, the second turns every
batch's ids into their index among them (int32) next to its timestamps. What stays in memory is those
codes and timestamps (16 bytes a row instead of the raw columns and their copies), so a log of tens of
millions of rows prepares in a few GiB. Each batch's values are converted by the readers' own conversion,
so the prepared dataset is the one the whole-table path builds (``tests/test_data_stream.py`` checks it).

Anything out of the ordinary (a compressed file, a value the typed read rejects, a missing column, an empty
file) makes :func:`read_coded` return ``None``: the caller then reads the whole table the usual way, which
also reports a bad value with its line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from thinkrec.data.config import SourceConfig

# The readers' own file layout and value conversion, so both paths read values identically.
from thinkrec.data.readers import (
    _READ_TYPES,
    Kind,
    _convert,
    _File,
    _position_within_user,
    _read_item_table,
    _table_columns,
    _table_file,
    source_files,
)
from thinkrec.errors import DataError

BATCH_ROWS = 1 << 18
"""Rows per scanned batch: memory beyond the codes is a few such batches (and one Parquet row group)."""


class _CannotStream(Exception):
    """The source needs the whole-table reader."""


@dataclass
class CodedLog:
    """A log with its ids replaced by codes: ``user[r]`` indexes ``user_values`` (ascending distinct external
    ids), ``item[r]`` ``item_values``; ``time`` and ``rating`` (``None``: no ratings) per row, in file order."""

    user_values: pa.Array
    user: npt.NDArray[np.integer[Any]]
    item_values: pa.Array
    item: npt.NDArray[np.integer[Any]]
    time: npt.NDArray[np.int64]
    rating: npt.NDArray[np.floating[Any]] | None
    items: pa.Table | None  # the item table with text columns (as RawLog.items)
    source: dict[str, Any]


class _Distinct:
    """The distinct values of an id column, gathered batch by batch (int64, or strings once one is seen)."""

    def __init__(self) -> None:
        self.ints = np.zeros(0, dtype=np.int64)
        self.strings: pa.Array | None = None

    def add(self, values: pa.ChunkedArray) -> None:
        if pa.types.is_integer(values.type):
            self.ints = np.union1d(self.ints, np.unique(values.to_numpy()))
        else:
            found = pc.unique(values.combine_chunks())
            self.strings = found if self.strings is None else pc.unique(pa.concat_arrays([self.strings, found]))

    def sorted(self) -> pa.Array:
        """Ascending, as the whole-table path orders them: a column with any non-integer id is all strings
        (an all-integer batch's values, written back as text, are the text that was read)."""
        if self.strings is None:
            return pa.array(self.ints, type=pa.int64())
        every = pa.concat_arrays([self.strings, pa.array(self.ints, type=pa.int64()).cast(pa.string())])
        every = pc.unique(every)
        return every.take(pc.sort_indices(every))


def _codes(values: pa.ChunkedArray, distinct: pa.Array, ints: npt.NDArray[np.int64] | None) -> np.ndarray:
    """Every value's index in ``distinct`` (int32)."""
    if ints is not None:
        return np.asarray(np.searchsorted(ints, values.to_numpy()), dtype=np.int32)
    found = pc.index_in(values.cast(pa.string()), value_set=distinct)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int32)


def _scan(src: _File, kinds: dict[str, Kind], batch_rows: int) -> Iterator[pa.Table]:
    """The file's columns ``kinds``, typed as the whole-table reader first tries them, a batch at a time."""
    if src.parquet:
        # no pre-buffering: it reads ahead whole row groups, and the read-ahead is what bounds memory here
        options = pads.ParquetFragmentScanOptions(pre_buffer=False)
        fmt: pads.FileFormat = pads.ParquetFileFormat(default_fragment_scan_options=options)
    else:
        read, parse = src.options()
        convert = pacsv.ConvertOptions(
            column_types={column: _READ_TYPES[kind] for column, kind in kinds.items()},
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        fmt = pads.CsvFileFormat(parse_options=parse, convert_options=convert, read_options=read)
    dataset = pads.dataset(str(src.path), format=fmt)
    missing = [column for column in kinds if column not in dataset.schema.names]
    if missing:
        raise _CannotStream(f"missing column {missing[0]!r}")
    batches = dataset.to_batches(
        columns=list(kinds), batch_size=batch_rows, batch_readahead=1, fragment_readahead=1, use_threads=False
    )
    for batch in batches:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _converted(src: _File, table: pa.Table, kinds: dict[str, Kind], rename: dict[str, str]) -> dict[str, Any]:
    return {rename[column]: _convert(src, column, table.column(column), kind) for column, kind in kinds.items()}


def read_coded(cfg: SourceConfig, batch_rows: int = BATCH_ROWS) -> CodedLog | None:
    """The coded log of a ``table`` source, read in batches; ``None`` when this source is read whole instead
    (see the module docstring)."""
    if cfg.format != "table":
        return None
    files = source_files(cfg)
    try:
        src = _table_file(files[0], cfg.sep)
        if not src.parquet and files[0].suffix.lower() in (".gz", ".bz2"):
            return None
        return _read_coded(cfg, files, src, batch_rows)
    except (_CannotStream, DataError, pa.ArrowException, OSError):
        return None


def _read_coded(cfg: SourceConfig, files: list[Path], src: _File, batch_rows: int) -> CodedLog | None:
    kinds, rename = _table_columns(cfg, src.path)  # a column mapped twice: DataError, the whole-table reader explains
    users, items = _Distinct(), _Distinct()
    n = 0
    for table in _scan(src, kinds, batch_rows):  # pass 1: the distinct ids
        columns = _converted(src, table, kinds, rename)
        users.add(columns["user"])
        items.add(columns["item"])
        n += table.num_rows
    if n == 0:
        return None
    user_values, item_values = users.sorted(), items.sorted()
    user_ints = user_values.to_numpy() if pa.types.is_integer(user_values.type) else None
    item_ints = item_values.to_numpy() if pa.types.is_integer(item_values.type) else None
    user = np.empty(n, dtype=np.int32)
    item = np.empty(n, dtype=np.int32)
    time = np.empty(n, dtype=np.int64)
    rating = np.empty(n, dtype=np.float64) if cfg.rating_col is not None else None
    start = 0
    for table in _scan(src, kinds, batch_rows):  # pass 2: codes, timestamps and ratings
        columns = _converted(src, table, kinds, rename)
        end = start + table.num_rows
        user[start:end] = _codes(columns["user"], user_values, user_ints)
        item[start:end] = _codes(columns["item"], item_values, item_ints)
        if cfg.time_col is not None:
            time[start:end] = columns["timestamp"].to_numpy()
        if rating is not None:
            rating[start:end] = columns["rating"].to_numpy()
        start = end
    if start != n:
        raise _CannotStream("the file changed while it was read")
    if cfg.time_col is None:
        time = _position_within_user(pa.chunked_array([user]))
    item_table = _read_item_table(cfg, files)
    source = {"format": cfg.format, "path": cfg.path, "files": [str(path) for path in files]}
    return CodedLog(user_values, user, item_values, item, time, rating, item_table, source)
