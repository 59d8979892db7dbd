"""The prepared dataset: every user's chronological item sequence in compressed-row form.

Internal ids: users are ``0..n_users-1``; items are ``1..n_items`` and ``0`` is reserved for padding
(:data:`PAD`). External ids (as they appear in the source files) are kept in ``user_ids`` /
``item_ids`` so results can be reported in the user's own ids.

A prepared dataset is saved once as Parquet + JSON (:meth:`SequenceDataset.save`) and loads with
:meth:`SequenceDataset.load` in well under a second for MovieLens-1M-sized data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from thinkrec.errors import DataError

PAD = 0
FORMAT_VERSION = 1

IntArray = npt.NDArray[np.int64]


@dataclass
class SequenceDataset:
    """Chronological item sequences of all users (CSR layout).

    Attributes:
        name: a short dataset name (used in run directories and reports).
        offsets: ``int64[n_users + 1]``; user ``u``'s interactions are ``items[offsets[u]:offsets[u+1]]``.
        items: ``int64[n_interactions]`` internal item ids in ``1..n_items``, oldest first per user.
        timestamps: ``int64[n_interactions]`` (unix seconds, or the position when a source has no time).
        user_ids: external user ids, index = internal user id.
        item_ids: external item ids, index = internal item id - 1.
        item_text: text columns of items (e.g. ``title``), each a list with one entry per internal item id
            *including* the padding id 0 at index 0 (an empty string).
        meta: provenance: source files, filters applied and counts before/after.
    """

    name: str
    offsets: IntArray
    items: IntArray
    timestamps: IntArray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_text: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
            raise ValueError("offsets must start at 0 and end at len(items)")
        if len(self.timestamps) != len(self.items):
            raise ValueError("timestamps and items must have the same length")
        if len(self.user_ids) != self.n_users:
            raise ValueError("user_ids must have one entry per user")
        for column, values in self.item_text.items():
            if len(values) != self.n_items + 1:
                raise ValueError(f"item_text[{column!r}] must have n_items + 1 entries (index 0 = padding)")

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        """Number of real items (the embedding table has ``n_items + 1`` rows, row 0 = padding)."""
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> IntArray:
        return np.diff(self.offsets)

    @property
    def user_index(self) -> IntArray:
        """The internal user id of every interaction (``int64[n_interactions]``)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)

    def sequence(self, user: int) -> IntArray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @property
    def titles(self) -> list[str] | None:
        return self.item_text.get("title")

    def describe(self) -> dict[str, Any]:
        """Summary statistics (counts, sequence lengths, density, time span)."""
        lengths = self.lengths
        stats: dict[str, Any] = {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "seq_len_min": int(lengths.min()) if len(lengths) else 0,
            "seq_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "seq_len_median": float(np.median(lengths)) if len(lengths) else 0.0,
            "seq_len_max": int(lengths.max()) if len(lengths) else 0,
            "time_min": int(self.timestamps.min()) if self.n_interactions else None,
            "time_max": int(self.timestamps.max()) if self.n_interactions else None,
            "text_columns": sorted(self.item_text),
        }
        return stats

    # ------------------------------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> Path:
        """Write the dataset atomically: a temp folder is filled, then renamed over ``directory``."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            user_index = self.user_index
            pq.write_table(
                pa.table({"user": user_index, "item": self.items, "timestamp": self.timestamps}),
                tmp / "interactions.parquet",
            )
            pq.write_table(pa.table({"external_id": pa.array(self.user_ids)}), tmp / "users.parquet")
            item_columns: dict[str, Any] = {"external_id": pa.array(self.item_ids)}
            for column, values in self.item_text.items():
                item_columns[f"text_{column}"] = pa.array(values[1:], type=pa.string())
            pq.write_table(pa.table(item_columns), tmp / "items.parquet")
            meta = {"format_version": FORMAT_VERSION, "name": self.name, "meta": self.meta}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            if target.exists():
                backup = target.with_name(f".{target.name}.old")
                if backup.exists():
                    shutil.rmtree(backup)
                os.replace(target, backup)
                os.replace(tmp, target)
                shutil.rmtree(backup)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | Path) -> SequenceDataset:
        """Load a dataset written by :meth:`save`."""
        path = Path(directory)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise DataError(
                "not a prepared thinkrec dataset (no meta.json)",
                path=path,
                hint="prepare it first: thinkrec data prepare --help",
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"prepared with format version {meta.get('format_version')}, this thinkrec reads {FORMAT_VERSION}",
                path=meta_path,
                hint="prepare the dataset again with this version",
            )
        inter = pq.read_table(path / "interactions.parquet")
        users = pq.read_table(path / "users.parquet").column("external_id").to_numpy(zero_copy_only=False)
        items_table = pq.read_table(path / "items.parquet")
        user_col = inter.column("user").to_numpy()
        counts = np.bincount(user_col, minlength=len(users))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        item_text = {
            name.removeprefix("text_"): ["", *items_table.column(name).to_pylist()]
            for name in items_table.column_names
            if name.startswith("text_")
        }
        return cls(
            name=meta["name"],
            offsets=offsets,
            items=inter.column("item").to_numpy(),
            timestamps=inter.column("timestamp").to_numpy(),
            user_ids=users,
            item_ids=items_table.column("external_id").to_numpy(zero_copy_only=False),
            item_text=item_text,
            meta=meta.get("meta", {}),
        )
