"""Turn a :class:`~thinkrec.data.readers.RawLog` into a :class:`~thinkrec.data.dataset.SequenceDataset`.

Pipeline (all vectorised with numpy/pyarrow): rating threshold -> dedup -> iterative k-core -> optional
seeded user subset -> internal ids (users ``0..``, items ``1..``, both in ascending order of external id)
-> per-user chronological order (stable: ties keep file order) -> item text aligned to internal ids, HTML
entities unescaped. ``meta`` records the source, every step with its parameters and the counts after it.

:func:`load_or_prepare` caches the result under ``<cache>/datasets/<name>-<hash>``; the hash covers both
configs, the dataset format version, this pipeline's version and the source files' sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from thinkrec import paths
from thinkrec.data.config import PrepareConfig, SourceConfig, check_dataset_name
from thinkrec.data.dataset import FORMAT_VERSION, SequenceDataset
from thinkrec.data.readers import RawLog, read_source, source_files
from thinkrec.data.stream import CodedLog, read_coded
from thinkrec.errors import ConfigError, DataError

PIPELINE_VERSION = 1
"""Bump when :func:`prepare` changes its output for the same input (invalidates cached datasets)."""

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Codes = npt.NDArray[np.integer[Any]]  # id codes: int64 from a whole table, int32 streamed


def _factorize(values: pa.ChunkedArray) -> tuple[pa.Array, IntArray]:
    """``(sorted distinct values, code of every row)``; codes follow the ascending order of the values."""
    array = values.combine_chunks()
    distinct = pc.unique(array)
    distinct = distinct.take(pc.sort_indices(distinct))
    codes = pc.index_in(array, value_set=distinct).to_numpy(zero_copy_only=False)
    return distinct, np.asarray(codes, dtype=np.int64)


def _counts(step: str, user: Codes, item: Codes, rows: IntArray, **params: Any) -> dict[str, Any]:
    return {
        "step": step,
        **params,
        "users": int(np.count_nonzero(np.bincount(user[rows]))) if len(rows) else 0,
        "items": int(np.count_nonzero(np.bincount(item[rows]))) if len(rows) else 0,
        "interactions": len(rows),
    }


def _dedup(user: Codes, item: Codes, time: IntArray, rows: IntArray, mode: str) -> IntArray:
    """Rows kept by ``exact`` (first of identical user/item/time) or ``first`` (earliest per user/item)."""
    # one key per (user, item) makes a 2-key sort (faster than 3 keys); codes are < the row count, so the
    # product cannot overflow int64 for any table that fits in memory
    pair = user[rows].astype(np.int64) * (int(item.max()) + 1) + item[rows]
    order = np.lexsort((time[rows], pair))  # stable: equal keys keep file order
    pair = pair[order]
    repeat = np.zeros(len(rows), dtype=bool)
    repeat[1:] = pair[1:] == pair[:-1]
    del pair  # the big temporaries go as soon as they are used (streamed logs of tens of millions of rows)
    if mode == "exact":
        t = time[rows][order]
        repeat[1:] &= t[1:] == t[:-1]
        del t
    drop = np.zeros(len(rows), dtype=bool)
    drop[order] = repeat
    return rows[~drop]


def _k_core(user: Codes, item: Codes, rows: IntArray, user_min: int, item_min: int) -> tuple[IntArray, int]:
    """Drop users/items below their minimum count, repeatedly, until nothing changes."""
    iterations = 0
    while True:
        iterations += 1
        u, i = user[rows], item[rows]
        ok = (np.bincount(u) >= user_min)[u] & (np.bincount(i) >= item_min)[i]  # bool gathers: 1 byte a row
        if ok.all() or not ok.any():
            return (rows if ok.all() else rows[:0]), iterations
        rows = rows[ok]


def _require_rows(rows: IntArray, source: dict[str, Any], message: str, field: str, hint: str) -> None:
    if len(rows) == 0:
        raise DataError(message, path=_source_path(source), field=field, hint=hint)


def _source_path(source: dict[str, Any]) -> str | None:
    files = source.get("files") or [None]
    return None if files[0] is None else str(files[0])


def _dense(codes: npt.NDArray[np.integer[Any]], size: int) -> tuple[IntArray, npt.NDArray[np.int32]]:
    """``(the codes present, in ascending order; every code's index among them)``: ``np.unique`` with
    ``return_inverse`` without its sort (the codes are below ``size``)."""
    present = np.bincount(codes, minlength=size) > 0
    remap = (np.cumsum(present) - 1).astype(np.int32)
    return np.flatnonzero(present).astype(np.int64), remap[codes]


def _to_numpy(ids: pa.Array) -> np.ndarray:
    if pa.types.is_integer(ids.type):
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(ids.to_pylist(), dtype=object)


def _item_text(items: pa.Table | None, item_ids: pa.Array) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Text columns aligned to internal item ids (index 0 = padding ""), HTML-unescaped."""
    if items is None:
        return {}, {}
    ids = items.column("item").combine_chunks()
    keys = item_ids
    if ids.type != keys.type:  # e.g. int ids in the log, non-numeric ids somewhere in the item table
        ids, keys = ids.cast(pa.string()), keys.cast(pa.string())
    position = np.asarray(pc.fill_null(pc.index_in(ids, value_set=keys), -1).to_numpy(), dtype=np.int64)
    first_rows = np.unique(position, return_index=True)[1]  # first item-table row of every matched id
    first_rows = first_rows[position[first_rows] >= 0]
    targets = (position[first_rows] + 1).tolist()
    text: dict[str, list[str]] = {}
    for column in items.column_names:
        if column == "item":
            continue
        values = items.column(column).take(pa.array(first_rows, type=pa.int64())).to_pylist()
        aligned = [""] * (len(item_ids) + 1)
        for target, value in zip(targets, values, strict=True):
            aligned[target] = html.unescape(value) if value else ""
        text[column] = aligned
    stats = {
        "columns": sorted(text),
        "items_with_row": len(targets),
        "items_without_row": len(item_ids) - len(targets),
        "unused_rows": int(np.count_nonzero(position < 0)),
        "duplicate_rows": int(np.count_nonzero(position >= 0)) - len(targets),
    }
    return text, stats


def prepare(raw: RawLog, cfg: PrepareConfig, name: str) -> SequenceDataset:
    """Filter ``raw`` as configured and build the per-user chronological sequences."""
    table = raw.interactions
    user_values, user = _factorize(table.column("user"))
    item_values, item = _factorize(table.column("item"))
    time = np.asarray(table.column("timestamp").to_numpy(), dtype=np.int64)
    rating = np.asarray(table.column("rating").to_numpy(), dtype=np.float64) if raw.has_rating else None
    log = CodedLog(user_values, user, item_values, item, time, rating, raw.items, raw.source)
    return prepare_coded(log, cfg, name)


def prepare_coded(log: CodedLog, cfg: PrepareConfig, name: str) -> SequenceDataset:
    """:func:`prepare` from id codes (what a streamed read produces: :mod:`thinkrec.data.stream`)."""
    user, item, time, source = log.user, log.item, log.time, log.source
    rows = np.arange(len(user), dtype=np.int64)
    steps = [_counts("read", user, item, rows)]
    _require_rows(rows, source, "the source has no interactions", "path", "check the source path")

    if cfg.min_rating is not None:
        if log.rating is None:
            raise DataError(
                f"min_rating={cfg.min_rating} is set but the {source.get('format', '')} source has no ratings",
                path=_source_path(source),
                field="min_rating",
                hint="remove min_rating, or (format 'table') set rating_col to the rating column",
            )
        rows = rows[log.rating[rows] >= cfg.min_rating]
        steps.append(_counts("min_rating", user, item, rows, min_rating=cfg.min_rating))
        _require_rows(rows, source, f"no interaction has rating >= {cfg.min_rating}", "min_rating", "lower min_rating")

    if cfg.dedup != "none":
        rows = _dedup(user, item, time, rows, cfg.dedup)
        steps.append(_counts("dedup", user, item, rows, mode=cfg.dedup))

    if cfg.user_min > 1 or cfg.item_min > 1:
        rows, iterations = _k_core(user, item, rows, cfg.user_min, cfg.item_min)
        steps.append(
            _counts(
                "k_core",
                user,
                item,
                rows,
                user_min=cfg.user_min,
                item_min=cfg.item_min,
                iterations=iterations,
            )
        )
        _require_rows(
            rows,
            source,
            f"every user was filtered away by the k-core filter (user_min={cfg.user_min}, "
            f"item_min={cfg.item_min}, {iterations} iterations)",
            "user_min",
            "lower user_min and/or item_min in the prepare config",
        )

    if cfg.max_users is not None:
        present = np.unique(user[rows])
        if cfg.max_users < len(present):
            chosen = np.random.default_rng(cfg.seed).choice(present, size=cfg.max_users, replace=False)
            rows = rows[np.isin(user[rows], chosen)]
        steps.append(_counts("max_users", user, item, rows, max_users=cfg.max_users, seed=cfg.seed))

    # internal ids in ascending order of external id (codes already follow that order)
    kept_users, user_new = _dense(user[rows], len(log.user_values))
    kept_items, item_new = _dense(item[rows], len(log.item_values))
    time_kept = time[rows]
    del rows
    order = np.lexsort((time_kept, user_new))  # stable: ties keep file order
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_new, minlength=len(kept_users)), out=offsets[1:])
    del user_new
    item_ids = log.item_values.take(pa.array(kept_items, type=pa.int64()))
    item_text, text_stats = _item_text(log.items, item_ids)

    meta: dict[str, Any] = {
        "source": source,
        "prepare": cfg.model_dump(mode="json"),
        "pipeline_version": PIPELINE_VERSION,
        "steps": steps,
        "text": text_stats,
    }
    return SequenceDataset(
        name=name,
        offsets=offsets,
        items=item_new[order].astype(np.int64) + 1,
        timestamps=time_kept[order],
        user_ids=_to_numpy(log.user_values.take(pa.array(kept_users, type=pa.int64()))),
        item_ids=_to_numpy(item_ids),
        item_text=item_text,
        meta=meta,
    )


def prepare_source(source: SourceConfig, prep: PrepareConfig, name: str, stream: bool = True) -> SequenceDataset:
    """Read ``source`` and prepare it: a big table is streamed in batches (:mod:`thinkrec.data.stream`, the
    same dataset in bounded memory), any other source read whole (also ``stream=False``)."""
    coded = read_coded(source) if stream else None
    if coded is not None:
        return prepare_coded(coded, prep, name)
    return prepare(read_source(source), prep, name)


# -------------------------------------------------------------------------------------------- cache
def cache_key(source: SourceConfig, prep: PrepareConfig) -> str:
    """A 16-hex-digit hash of both configs, the format/pipeline versions and the source files' stats."""
    files = []
    for path in source_files(source):
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "source": source.model_dump(mode="json"),
        "prepare": prep.model_dump(mode="json"),
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "files": files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_or_prepare(
    source: SourceConfig, prep: PrepareConfig, name: str, cache_root: Path | None = None
) -> SequenceDataset:
    """Load the prepared dataset from the cache, or read + prepare + cache it.

    The cache folder is ``(cache_root or paths.cache_dir()) / "datasets" / f"{name}-{hash}"``. A damaged or
    outdated cache entry is rebuilt.
    """
    try:
        check_dataset_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    key = cache_key(source, prep)
    target = Path(cache_root if cache_root is not None else paths.cache_dir()) / "datasets" / f"{name}-{key}"
    if (target / "meta.json").exists():
        try:
            return SequenceDataset.load(target)
        except (DataError, OSError, ValueError, KeyError, pa.ArrowException):
            pass  # damaged or from another version: prepare again below
    dataset = prepare_source(source, prep, name)
    dataset.meta["cache_key"] = key
    dataset.save(target)
    return dataset
