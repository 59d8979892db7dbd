"""Configuration of a raw data source and of the preparation pipeline (rating filter, dedup, k-core, ...).

Both models forbid unknown keys, so a typo in a config file is an error, not a silently ignored setting.
Every field has a description; the CLI prints them as help.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_dataset_name(name: str) -> str:
    """``name`` if it is a plain name (letters, digits, '.', '_' and '-', not starting with '.', '_' or '-'):
    it names the dataset's cache folder and the default run directory, so a path (``../x``, ``a/b``) could
    write outside them."""
    if not DATASET_NAME.match(name):
        raise ValueError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            " (it names a folder, so no path separators and no '..')"
        )
    return name


SourceFormat = Literal["ml100k", "seqrecbench", "s3rec", "sasrec", "table"]
DedupMode = Literal["none", "exact", "first"]


class SourceConfig(BaseModel):
    """Where a raw dataset lives and how to read it."""

    model_config = ConfigDict(extra="forbid")

    format: SourceFormat = Field(
        description=(
            "file layout: 'ml100k' (MovieLens-100K u.data + u.item), 'seqrecbench'"
            " (derived/interactions.tsv.gz + derived/items.tsv), 's3rec' (one user per line:"
            " 'user item item ...'), 'sasrec' ('user item' pairs, one per line), 'table' (any"
            " CSV/TSV/Parquet interaction table, see the *_col options)"
        )
    )
    path: str = Field(
        description=(
            "the dataset folder or file: relative to the config file's folder when it exists there, else to the"
            " data directory ($THINKREC_DATA_DIR), e.g. 'ml-100k', 'seqrecbench/amazon2014-beauty',"
            " 's3rec/Beauty.txt', 'sasrec-video-games/Video.txt', or an absolute path"
        )
    )
    user_col: str = Field(default="user_id", description="table: the column holding the user id")
    item_col: str = Field(default="item_id", description="table: the column holding the item id")
    time_col: str | None = Field(
        default="timestamp",
        description=(
            "table: the column holding the time: numbers (e.g. unix seconds), ISO dates or date-times"
            " ('2024-03-01', '2024-03-01T12:30:00', read as UTC unix seconds) or Parquet date/timestamp"
            " columns; null = no time, the position of the row within its user (in file order) is used instead"
        ),
    )
    rating_col: str | None = Field(
        default=None, description="table: the column holding a numeric rating (needed for min_rating)"
    )
    sep: str | None = Field(
        default=None,
        description=(
            "table: the field separator; null = from the extension (.csv -> ',', .tsv/.txt -> tab, also"
            " .csv.gz/.tsv.gz/.txt.gz; .parquet is read as Parquet). CSV fields may be double-quoted;"
            " tab- and other-separated files are read without quoting"
        ),
    )
    items_path: str | None = Field(
        default=None,
        description=(
            "table: an optional item table (CSV/TSV/Parquet) with item text; a relative path is looked up"
            " next to the config file, then next to the interaction file, then under the data directory"
        ),
    )
    items_id_col: str = Field(default="item_id", description="table: the item id column of the item table")
    text_cols: list[str] = Field(
        default_factory=lambda: ["title"],
        description="table: the text columns of the item table to keep (HTML entities are unescaped)",
    )
    title_col: str | None = Field(
        default=None,
        description=(
            "table: the item text column shown as the title by recommend, serve and the Python API (one of"
            " text_cols); null = the first of text_cols"
        ),
    )

    @model_validator(mode="after")
    def _title_is_a_text_column(self) -> SourceConfig:
        if self.title_col is not None and self.title_col not in self.text_cols:
            raise ValueError(
                f"title_col {self.title_col!r} is not one of text_cols {self.text_cols}; add it to text_cols"
            )
        return self


class PrepareConfig(BaseModel):
    """How raw interactions are filtered and turned into per-user sequences."""

    model_config = ConfigDict(extra="forbid")

    min_rating: float | None = Field(
        default=None,
        description=(
            "keep only interactions with rating >= min_rating (null = keep all); the source must have ratings"
        ),
    )
    user_min: int = Field(default=0, ge=0, description="k-core: every kept user has at least this many interactions")
    item_min: int = Field(default=0, ge=0, description="k-core: every kept item has at least this many interactions")
    dedup: DedupMode = Field(
        default="exact",
        description=(
            "duplicate interactions: 'none' = keep all; 'exact' = drop rows identical in (user, item,"
            " timestamp), keeping the first in file order; 'first' = keep only each (user, item)'s earliest"
            " interaction (ties: first in file order)"
        ),
    )
    max_users: int | None = Field(
        default=None,
        ge=1,
        description=(
            "keep a seeded random subset of this many users (for demos); drawn after the k-core filter, so"
            " the item minimum may no longer hold within the subset"
        ),
    )
    seed: int = Field(default=0, description="random seed of the max_users subset")
