"""Offline batch recommendation: histories from Parquet/CSV/JSONL in, top-K rows to Parquet/CSV out.

Input: one user per row, a ``user`` column and an ``items`` column (oldest item first) that is a list
(Parquet, JSONL) or a space/comma-separated string (CSV). Ids are external (the dataset's) or internal
(1..N). The file is streamed in chunks of ``chunk_size`` rows with pyarrow datasets, so memory is bounded by
one chunk (plus its score matrix, itself bounded by the recommender's memory budget), whatever the file size.

Output: ``user, rank, item, title, score`` (``item`` = external id, ``rank`` from 1), in Parquet or CSV by
the output's extension, written to a temporary file in the same folder and renamed when complete, so a
crash never leaves a half-written output. Unknown item ids are skipped and counted; users with no known
item are counted and left out. In CSV and JSONL inputs the ``user`` column is read as text.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from tqdm import tqdm

from thinkrec.errors import DataError, ThinkrecError
from thinkrec.serve.recommender import Recommends
from thinkrec.serve.service import check_k, check_output, top_rows

IdType = Literal["internal", "external"]
INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json"}
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass
class BatchSummary:
    """What a batch run did; ``unknown_items`` counts skipped history entries."""

    users: int = 0
    users_written: int = 0
    users_without_known_items: int = 0
    unknown_items: int = 0
    rows_written: int = 0
    depth: str | None = None  # the depth selector that chose each user's reasoning step, if any
    steps_used_total: int = 0  # with depth: reasoning steps the choices needed, summed over the users written

    def as_dict(self) -> dict[str, int | str | float | None]:
        out: dict[str, int | str | float | None] = dict(asdict(self))
        if self.depth is None:
            del out["depth"], out["steps_used_total"]
        else:
            out["steps_used_mean"] = self.steps_used_total / max(1, self.users_written)
        return out


def _format(path: Path, formats: dict[str, str], what: str) -> str:
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise ThinkrecError(f"{path}: unsupported {what} extension {path.suffix!r}; use one of {sorted(formats)}")
    return fmt


def _dataset(path: Path) -> pads.Dataset:
    if not path.is_file():
        raise DataError("input file not found", path=path)
    fmt = _format(path, INPUT_FORMATS, "input")
    file_format: Any = fmt
    if fmt == "csv":
        file_format = pads.CsvFileFormat(
            convert_options=pacsv.ConvertOptions(column_types={"user": pa.string(), "items": pa.string()})
        )
    try:
        dataset = pads.dataset(str(path), format=file_format)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read: {exc}", path=path) from exc
    missing = {"user", "items"} - set(dataset.schema.names)
    if missing:
        raise DataError(
            f"missing column(s) {sorted(missing)}; found {dataset.schema.names}",
            path=path,
            hint="one user per row with a 'user' column and an 'items' column (a list, or in CSV a string"
            " of ids separated by spaces or commas)",
        )
    return dataset


def _tokens(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def _user_type(dataset: pads.Dataset, fmt: str) -> pa.DataType:
    return dataset.schema.field("user").type if fmt == "parquet" else pa.string()


class _Resolver:
    """Turns raw history entries into internal ids, counting the unknown ones."""

    def __init__(self, rec: Recommends, id_type: IdType) -> None:
        self.rec = rec
        self.id_type = id_type

    def __call__(self, raw: list[Any], summary: BatchSummary) -> list[int]:
        out: list[int] = []
        for token in raw:
            item = self._internal(token)
            if item is None:
                summary.unknown_items += 1
            else:
                out.append(item)
        return out

    def _internal(self, token: Any) -> int | None:
        if self.id_type == "external":
            return self.rec.vocabulary.internal(token)
        try:
            value = int(token)
        except (TypeError, ValueError):
            return None
        n_items = self.rec.vocabulary.n_items
        return value if 1 <= value <= n_items and str(token).strip() == str(value) else None


def _chunks(dataset: pads.Dataset, chunk_size: int) -> Iterator[pa.RecordBatch]:
    try:
        yield from dataset.to_batches(columns=["user", "items"], batch_size=chunk_size)
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot read a chunk: {exc}", path=str(dataset.files[0])) from exc


def _output_schema(rec: Recommends, user_type: pa.DataType) -> pa.Schema:
    item_type = pa.int64() if all(isinstance(e, int) for e in rec.vocabulary.external) else pa.string()
    return pa.schema(
        [
            ("user", user_type),
            ("rank", pa.int32()),
            ("item", item_type),
            ("title", pa.string()),
            ("score", pa.float32()),
        ]
    )


class _Writer:
    """Parquet or CSV writer to a temporary file, renamed onto ``path`` by :meth:`commit`."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.fmt = _format(path, OUTPUT_FORMATS, "output")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0o666 under the umask, as any new file (mkstemp would make it 0o600); O_EXCL: never another's file
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self.schema = schema
        self._writer: pq.ParquetWriter | pacsv.CSVWriter = (
            pq.ParquetWriter(str(self.tmp), schema) if self.fmt == "parquet" else pacsv.CSVWriter(str(self.tmp), schema)
        )

    def write(self, columns: dict[str, list[Any]]) -> None:
        self._writer.write_table(pa.table(columns, schema=self.schema))

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


def recommend_file(
    rec: Recommends,
    input_path: str | Path,
    output_path: str | Path,
    k: int = 10,
    id_type: IdType = "external",
    chunk_size: int = 1024,
    exclude_seen: bool = False,
    progress: bool = True,
    depth: str | None = None,
) -> BatchSummary:
    """Write the top-``k`` of every user of ``input_path`` to ``output_path``; returns counts.

    ``depth``: a depth selector name (default: the recommender's own, e.g. set by ``--depth``). Refuses an
    output that is the input file (it would be replaced by the answers)."""
    src, dst = Path(input_path), Path(output_path)
    if chunk_size < 1:
        raise ThinkrecError("chunk size must be at least 1")
    check_k(k)
    dataset = _dataset(src)
    _format(dst, OUTPUT_FORMATS, "output")
    check_output(dst, "output", inputs=[src])
    fmt = _format(src, INPUT_FORMATS, "input")
    summary = BatchSummary()
    resolve = _Resolver(rec, id_type)
    writer = _Writer(dst, _output_schema(rec, _user_type(dataset, fmt)))
    total = dataset.count_rows() if fmt == "parquet" else None
    try:
        with tqdm(total=total, unit="user", desc="recommend", disable=not progress) as bar:
            for chunk in _chunks(dataset, chunk_size):
                users = chunk.column("user").to_pylist()
                raw = chunk.column("items").to_pylist()
                kept_users, histories = [], []
                for user, items in zip(users, raw, strict=True):
                    history = resolve(_tokens(items), summary)
                    if history:
                        kept_users.append(user)
                        histories.append(history)
                    else:
                        summary.users_without_known_items += 1
                summary.users += len(users)
                bar.update(len(users))
                if not histories:
                    continue
                options: dict[str, Any] = {} if depth is None else {"depth": depth}
                try:
                    top = rec.recommend(histories, k, exclude_seen=exclude_seen, per_step=False, **options)
                except ValueError as exc:  # the model's refusal (e.g. a depth selector not fit): the user's
                    raise ThinkrecError(str(exc)) from None
                if top.steps_used is not None:
                    summary.depth = top.depth
                    summary.steps_used_total += int(top.steps_used.sum())
                columns = top_rows(rec, top, kept_users)
                writer.write(columns)
                summary.users_written += len(kept_users)
                summary.rows_written += len(columns["user"])
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return summary
