"""A realistic synthetic interaction log of any size, written to Parquet in row groups.

The shape of a real e-commerce / streaming log, without its content:

- **users** have power-law activity: a user's share of the rows is drawn from a Pareto distribution
  (``--user-alpha``), with at least ``--min-user`` rows each, so a few users have thousands of rows and
  most have a handful;
- **items** have Zipf popularity (``--item-exponent``, about 1 for retail): item ranks are scattered over
  random external ids, so an id's size says nothing about its popularity;
- **sessions**: a user's rows come in sessions (geometric length, mean ``--session-mean``) minutes apart,
  sessions days apart (exponential gaps); within a session the next item is often a neighbour of the
  previous one (``--locality``: a stand-in for "same category"), so there is a sequential signal to learn;
- **timestamps** are unix seconds: each user starts at a random time within ``--days`` days, and rows of a
  user never go back in time; a few exact duplicates (``--duplicates``) exercise deduplication;
- a **rating** column (1-5, skewed high) exercises ``min_rating``.

Users are generated a block at a time and each block is written as one row group (rows of a block sorted by
time), so a 50-million-row log is never in memory at once: memory is one block of ``--row-group`` rows.

    python -m benchmarks.scale.synthetic_log --rows 50000000 --out benchmarks/out/scale/log-50M.parquet
    python -m benchmarks.scale.synthetic_log --rows 20000 --out /tmp/tiny.parquet   # a check that it runs

The config that prepares it (``format = "table"`` reads Parquet):

    [data.source]
    format = "table"
    path = "/abs/path/log-50M.parquet"
    user_col = "user_id"
    item_col = "item_id"
    time_col = "timestamp"
    rating_col = "rating"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = 1_600_000_000  # 2020-09-13, unix seconds
SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()), ("rating", pa.float32())]
)


def user_lengths(rows: int, users: int, alpha: float, min_user: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per user: Pareto shares, at least ``min_user`` each, summing to exactly ``rows``."""
    if users * min_user > rows:
        raise SystemExit(f"--users {users} x --min-user {min_user} exceeds --rows {rows}")
    weights = rng.pareto(alpha, users) + 1.0
    extra = rows - users * min_user
    lengths = np.floor(weights / weights.sum() * extra).astype(np.int64)
    short = extra - int(lengths.sum())  # the rounding remainder, one row each to the heaviest users
    lengths[np.argsort(-weights)[:short]] += 1
    return lengths + min_user


def zipf_cdf(items: int, exponent: float) -> np.ndarray:
    """The cumulative distribution of item popularity ranks 0..items-1 (Zipf)."""
    p = 1.0 / np.arange(1, items + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


def block(
    lengths: np.ndarray,
    first_user: int,
    cdf: np.ndarray,
    item_ids: np.ndarray,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> pa.Table:
    """The rows of users ``first_user ..`` with the given lengths, sorted by time."""
    n = int(lengths.sum())
    user = np.repeat(np.arange(first_user, first_user + len(lengths), dtype=np.int64), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(n) - starts  # the row's index within its user
    # sessions: a new one starts with probability 1 / session_mean at every row after a user's first
    new_session = (rng.random(n) < 1.0 / args.session_mean) | (position == 0)
    gaps = np.where(
        new_session,
        rng.exponential(args.session_gap_days * 86400.0, n),  # days between sessions
        rng.exponential(120.0, n),  # minutes between the rows of a session
    ).astype(np.int64)
    gaps[position == 0] = rng.integers(0, args.days * 86400, int((position == 0).sum()))  # the user's start
    cumulative = np.cumsum(gaps)
    timestamp = START + cumulative - np.repeat(cumulative[np.cumsum(lengths) - lengths], lengths) + gaps[starts]
    # items: a popular item at a session start, else often a neighbour of the previous item's rank
    rank = np.searchsorted(cdf, rng.random(n))
    neighbour = ~new_session & (rng.random(n) < args.locality)
    if neighbour.any():
        previous = np.flatnonzero(neighbour) - 1
        # a neighbour of the session's last fresh draw (a session's rows are consecutive, and start fresh)
        fresh = np.flatnonzero(~neighbour)
        anchor = fresh[np.searchsorted(fresh, previous, side="right") - 1]
        steps = rng.integers(-3, 4, int(neighbour.sum()))
        rank[neighbour] = np.clip(rank[anchor] + steps, 0, len(cdf) - 1)
    item = item_ids[rank]
    rating = np.clip(np.round(rng.normal(4.0, 1.0, n)), 1, 5).astype(np.float32)
    if args.duplicates > 0:  # exact repeats of a row (same user, item and time), as double-logged events
        repeat = np.flatnonzero(rng.random(n) < args.duplicates)
        take = np.sort(np.concatenate([np.arange(n), repeat]))
        user, item, timestamp, rating = user[take], item[take], timestamp[take], rating[take]
    order = np.argsort(timestamp, kind="stable")
    return pa.table(
        {"user_id": user[order], "item_id": item[order], "timestamp": timestamp[order], "rating": rating[order]},
        schema=SCHEMA,
    )


def generate(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    users = args.users or max(1, args.rows // 40)
    items = args.items or max(10, args.rows // 100)
    lengths = user_lengths(args.rows, users, args.user_alpha, args.min_user, rng)
    cdf = zipf_cdf(items, args.item_exponent)
    item_ids = rng.permutation(np.arange(items, dtype=np.int64) * 7 + 1_000)  # external ids, scattered
    lengths = rng.permutation(lengths)  # activity unrelated to the user id
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    t0 = time.perf_counter()
    written = 0
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        first = 0
        while first < users:
            bounds = np.cumsum(lengths[first:])
            last = first + max(1, int(np.searchsorted(bounds, args.row_group, side="right")))
            table = block(lengths[first:last], first + 1, cdf, item_ids, args, rng)
            writer.write_table(table, row_group_size=table.num_rows)
            written += table.num_rows
            first = last
    tmp.replace(out)
    summary = {
        "path": str(out),
        "rows": written,
        "users": users,
        "items": items,
        "seconds": round(time.perf_counter() - t0, 2),
        "bytes": out.stat().st_size,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True, help="interactions before duplicates (e.g. 50000000)")
    p.add_argument("--out", required=True, help="the Parquet file to write")
    p.add_argument("--users", type=int, default=None, help="number of users (default rows / 40)")
    p.add_argument("--items", type=int, default=None, help="number of items (default rows / 100)")
    p.add_argument("--user-alpha", type=float, default=1.5, help="Pareto shape of user activity (smaller: heavier)")
    p.add_argument("--item-exponent", type=float, default=1.0, help="Zipf exponent of item popularity")
    p.add_argument("--min-user", type=int, default=5, help="rows of the least active user")
    p.add_argument("--session-mean", type=float, default=6.0, help="mean rows per session")
    p.add_argument("--session-gap-days", type=float, default=3.0, help="mean days between a user's sessions")
    p.add_argument("--locality", type=float, default=0.5, help="chance that a session row is a neighbour item")
    p.add_argument("--days", type=int, default=365, help="span of the users' first interactions, in days")
    p.add_argument("--duplicates", type=float, default=0.002, help="share of rows logged twice")
    p.add_argument("--row-group", type=int, default=1_000_000, help="rows per row group (the memory bound)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(json.dumps(generate(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
