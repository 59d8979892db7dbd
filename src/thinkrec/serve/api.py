"""The Python API behind :mod:`thinkrec` (``thinkrec.load``, ``thinkrec.fit``, :class:`Run`).

External ids in, tables out. Inputs may be pandas DataFrames, pyarrow Tables, anything that speaks the Arrow
stream protocol (polars, DuckDB results) or a dict of columns. Outputs are **pandas DataFrames when pandas is
installed, else pyarrow Tables** (``output="arrow"`` / ``"pandas"`` asks for one of them). Recommendations go
through the same path as ``thinkrec recommend`` and the HTTP API (:mod:`thinkrec.serve.service`), so the
three answer alike.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thinkrec.errors import ThinkrecError
from thinkrec.serve.recommender import ExternalId, Recommends
from thinkrec.serve.service import (
    check_k,
    check_output,
    internal_ids,
    load_recommender,
    recommend,
    top_rows,
    user_history,
)

Output = Literal["auto", "pandas", "arrow"]
EVAL_BATCH = 256  # histories per recommend call when evaluating


def to_arrow(data: Any, what: str) -> pa.Table:
    """A pyarrow Table of ``data``: a pyarrow Table, a pandas DataFrame, an Arrow stream (``__arrow_c_stream__``)
    or a dict of columns."""
    if isinstance(data, pa.Table):
        return data
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    try:
        return pa.table(data)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise ThinkrecError(
            f"{what}: expected a pandas DataFrame, a pyarrow Table or a dict of columns, got {type(data).__name__}"
        ) from exc


def _need_columns(table: pa.Table, what: str, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ThinkrecError(f"{what}: missing column(s) {missing}; found {table.column_names}")


def _output(table: pa.Table, output: Output) -> Any:
    if output == "arrow" or (output == "auto" and find_spec("pandas") is None):
        return table
    if output not in ("auto", "pandas"):
        raise ThinkrecError(f"output must be 'auto', 'pandas' or 'arrow', got {output!r}")
    if find_spec("pandas") is None:
        raise ThinkrecError("output='pandas' needs pandas: pip install pandas")
    return table.to_pandas()


def _time_values(table: pa.Table, what: str) -> list[int] | None:
    """The ``time`` column as whole seconds (numbers as they are; dates, timestamps and ISO strings as unix
    seconds), or ``None`` when the table has no ``time`` column."""
    if "time" not in table.column_names:
        return None
    column = table.column("time")
    typ = column.type
    try:
        if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
            column = pc.cast(column, pa.timestamp("s", tz=getattr(typ, "tz", None)), safe=False)
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
            column = pc.cast(column, pa.timestamp("s"), safe=False)
        return [int(v) for v in pc.cast(column, pa.int64(), safe=False).to_pylist()]
    except (pa.ArrowException, TypeError) as exc:
        raise ThinkrecError(f"{what}: the time column must hold numbers, dates or ISO date strings ({exc})") from None


def _histories(table: pa.Table, what: str) -> tuple[list[Any], list[list[Any]]]:
    """Per user (first-seen order): their items, ordered by ``time`` when the table has it (else as given)."""
    _need_columns(table, what, ["user", "item"])
    users = table.column("user").to_pylist()
    items = table.column("item").to_pylist()
    seconds = _time_values(table, what)
    order = np.argsort(np.asarray(seconds), kind="stable") if seconds is not None else range(len(users))
    grouped: dict[Any, list[Any]] = {}
    for i in order:
        grouped.setdefault(users[i], []).append(items[i])
    return list(grouped), list(grouped.values())


class Run:
    """A trained run (``thinkrec train`` / ``thinkrec llm train`` / :func:`fit`), loaded for recommending.

    Attributes:
        run_dir: the run directory.
        recommender: the loaded model behind the :class:`~thinkrec.serve.recommender.Recommends` interface.
        results: the run's ``results.json`` (metrics of its own validation and test split), ``{}`` if absent.
    """

    def __init__(self, run_dir: str | Path, recommender: Recommends) -> None:
        self.run_dir = Path(run_dir)
        self.recommender = recommender
        path = self.run_dir / "results.json"
        self.results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __repr__(self) -> str:
        facts = self.recommender.describe()
        return f"Run({str(self.run_dir)!r}, kind={facts['kind']!r}, items={facts['n_items']})"

    def describe(self) -> dict[str, Any]:
        """Model facts: kind, number of items, history length, reasoning steps, dataset."""
        return self.recommender.describe()

    def recommend(
        self,
        users: Iterable[ExternalId] | None = None,
        *,
        histories: Any = None,
        k: int = 10,
        exclude_seen: bool = False,
        steps: int | None = None,
        depth: str | None = None,
        output: Output = "auto",
    ) -> Any:
        """Top-``k`` items per user as a table with columns ``user, rank, item, title, score`` (best first).

        Give ``users`` (external user ids of the run's dataset: recommends what comes after their whole
        history) or ``histories``: a table with columns ``user, item[, time]`` (one row per interaction,
        ordered by ``time`` when present, else as given) or a mapping ``{user: [item, ...]}`` (oldest first).
        Item ids are external. ``exclude_seen``: never recommend an item of the history; ``steps``: latent
        reasoning steps (reasoning models; default the trained K); ``depth``: a depth selector that chooses
        each user's step (default: the one :func:`load` set; it must be fit already). Unknown ids raise
        :class:`ThinkrecError`.
        """
        check_k(k, "k")
        rec = self.recommender
        if (users is None) == (histories is None):
            raise ThinkrecError("give either users (ids of the run's dataset) or histories, not both")
        keys: list[Any]
        times: list[list[int]] | None = None
        if isinstance(users, str | int):  # one id, not an iterable of its characters
            users = [users]
        if users is not None:
            found = [user_history(rec, u, what="users") for u in users]
            keys = [f.user for f in found]
            paths = [f.items for f in found]
            times = [[*f.times, f.now] for f in found]
            for f in found:
                if not f.items:
                    raise ThinkrecError(f"users: user {f.user!r} has no history")
        else:
            if isinstance(histories, Mapping):
                keys, raw = list(histories), [list(v) for v in histories.values()]
            else:
                keys, raw = _histories(to_arrow(histories, "histories"), "histories")
            paths = [internal_ids(rec.vocabulary, h, f"history of user {u!r}") for u, h in zip(keys, raw, strict=True)]
        columns: dict[str, list[Any]] = {"user": [], "rank": [], "item": [], "title": [], "score": []}
        for start in range(0, len(paths), EVAL_BATCH):
            part = slice(start, start + EVAL_BATCH)
            top = recommend(
                rec,
                paths[part],
                k,
                steps=steps,
                exclude_seen=exclude_seen,
                times=times[part] if times else None,
                depth=depth,
            )
            for name, values in top_rows(rec, top, keys[part]).items():
                columns[name].extend(values)
        return _output(_rows_table(columns), output)

    def item_embeddings(self, output: Output = "auto") -> Any:
        """Every item's output vector with its external id: columns ``item, title, embedding`` (a list of
        floats per item), in internal-id order. These are the vectors user vectors are scored against."""
        vocab = self.recommender.vocabulary
        try:
            vectors = self.recommender.item_vectors().float().numpy()
        except ValueError as exc:
            raise ThinkrecError(str(exc)) from None
        flat = pa.array(vectors.reshape(-1), pa.float32())
        table = pa.table(
            {
                "item": _ids(vocab.external),
                "title": pa.array(vocab.titles, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        return _output(table, output)

    def evaluate(
        self,
        test: Any,
        history: Any = None,
        *,
        ks: Sequence[int] = (10, 20),
        exclude_seen: bool = False,
    ) -> dict[str, float]:
        """Full-catalogue NDCG/HR/MRR at each ``ks`` on your own split.

        ``test``: a table with columns ``user, item[, time]``, one row per target. Each target is ranked after
        the user's history: the rows of ``history`` (``user, item[, time]``) of that user, only those earlier
        than the target when both have ``time``; without ``history``, the user's whole sequence in the run's
        dataset. History items the model does not know are skipped; targets it does not know cannot be
        ranked and are counted in ``skipped_targets``, as are targets whose user has no known history.
        """
        cut_offs = [check_k(int(k), "ks") for k in ks]
        rec = self.recommender
        targets = to_arrow(test, "test")
        _need_columns(targets, "test", ["user", "item"])
        target_times = _time_values(targets, "test")
        by_user: dict[str, list[tuple[int | None, int]]] = {}  # user -> (time, internal item), oldest first
        if history is not None:
            past = to_arrow(history, "history")
            _need_columns(past, "history", ["user", "item"])
            seconds = _time_values(past, "history")
            users, items = past.column("user").to_pylist(), past.column("item").to_pylist()
            order = np.argsort(np.asarray(seconds), kind="stable") if seconds is not None else range(len(users))
            for i in order:
                internal = rec.vocabulary.internal(items[i])
                if internal is not None:
                    by_user.setdefault(str(users[i]), []).append((seconds[i] if seconds else None, internal))
        batch: list[list[int]] = []
        wanted: list[int] = []
        ranks: list[int] = []
        skipped = 0
        top_k = max(cut_offs)

        def flush() -> None:
            if not batch:
                return
            top = recommend(rec, batch, top_k, exclude_seen=exclude_seen)
            for row, target in enumerate(wanted):
                found = [item for item, _ in top.row(row)]
                ranks.append(found.index(target) if target in found else top_k)
            batch.clear()
            wanted.clear()

        for row, (user, item) in enumerate(
            zip(targets.column("user").to_pylist(), targets.column("item").to_pylist(), strict=True)
        ):
            target = rec.vocabulary.internal(item)
            if history is None:
                try:
                    past_items = rec.user_history(user).items
                except KeyError:
                    past_items = []
            else:
                when = target_times[row] if target_times is not None else None
                past_items = [i for t, i in by_user.get(str(user), []) if when is None or t is None or t < when]
            if target is None or not past_items:
                skipped += 1
                continue
            batch.append(past_items)
            wanted.append(target)
            if len(batch) == EVAL_BATCH:
                flush()
        flush()
        from thinkrec.eval.metrics import metrics_from_ranks

        report: dict[str, float] = dict(metrics_from_ranks(ranks, cut_offs))
        report["n_samples"] = len(ranks)
        report["skipped_targets"] = skipped
        return report


def _ids(values: Sequence[ExternalId]) -> pa.Array:
    return pa.array(values, pa.int64() if all(isinstance(v, int) for v in values) else pa.string())


def _rows_table(columns: dict[str, list[Any]]) -> pa.Table:
    return pa.table(
        {
            "user": pa.array(columns["user"]) if columns["user"] else pa.array([], pa.string()),
            "rank": pa.array(columns["rank"], pa.int32()),
            "item": _ids(columns["item"]),
            "title": pa.array(columns["title"], pa.string()),
            "score": pa.array(columns["score"], pa.float32()),
        }
    )


def load(run_dir: str | Path, checkpoint: str = "best", ann: bool = False, depth: str | None = None) -> Run:
    """Load a run directory written by ``thinkrec train``, ``thinkrec llm train`` or :func:`fit`.
    ``checkpoint``: ``"best"`` or ``"last"``; ``ann``: approximate top-K (FAISS, the ``ann`` extra); ``depth``:
    the default depth selector of a reasoning run (default its ``eval.depth``), fit on the run's validation
    samples now if it has not been."""
    return Run(run_dir, load_recommender(run_dir, checkpoint, ann, depth))


def fit(
    config: Any = None,
    interactions: Any = None,
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    name: str = "own",
) -> Run:
    """Train a sequence model and return the loaded :class:`Run` (``thinkrec train`` from Python; the name is
    not ``train`` because :mod:`thinkrec.train` is the package of the trainer).

    ``config``: a preset name (``"ml100k-sasrec"``), a config file, a
    :class:`~thinkrec.config.schema.RunConfig` or a dict (``None``: the defaults). ``interactions``: your own
    data instead of the config's dataset, a table with columns ``user, item[, time][, text]`` (``time``:
    numbers, dates or timestamps; ``text``: the item's title, shown in recommendations). It is written to
    ``<run_dir>/data/`` and read like a ``format = "table"`` source named ``name``; the config's split,
    model and training settings apply, its preparation filters do not (set them with ``overrides``).
    ``overrides``: dotted settings applied last, as on the command line (``"train.epochs=5"``).
    """
    from pydantic import ValidationError

    from thinkrec.config.loader import apply_overrides, format_validation_error, load_config
    from thinkrec.config.schema import RunConfig
    from thinkrec.errors import ConfigError
    from thinkrec.runs import train as train_run

    if isinstance(config, RunConfig):
        data: dict[str, Any] = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        data = json.loads(json.dumps(config))  # a deep copy: overrides must not change the caller's dict
    else:
        data = load_config(str(config) if config is not None else None).model_dump(mode="json")
    table = to_arrow(interactions, "interactions") if interactions is not None else None
    if table is not None:
        data = _own_source(data, table, name)
    try:
        cfg = RunConfig.model_validate(apply_overrides(data, list(overrides)))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "thinkrec.fit")) from None
    out = Path(run_dir or cfg.default_run_dir())
    check_output(out / "config.json", "run_dir")
    if table is not None:  # the files go into the run directory, which is known only now
        files = _write_own_data(table, out / "data")
        source = cfg.data.source.model_copy(update=files)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": source})})
    train_run(cfg, out)
    return load(out)


def _own_source(data: dict[str, Any], table: pa.Table, name: str) -> dict[str, Any]:
    """``data`` with its dataset replaced by ``table`` (file paths filled in by :func:`_write_own_data`)."""
    _need_columns(table, "interactions", ["user", "item"])
    source: dict[str, Any] = {
        "format": "table",
        "path": "interactions.parquet",
        "user_col": "user",
        "item_col": "item",
        "time_col": "time" if "time" in table.column_names else None,
    }
    if "text" in table.column_names:
        source |= {"items_path": "items.parquet", "items_id_col": "item", "text_cols": ["text"]}
    section = dict(data.get("data") or {})
    section.update({"name": name, "source": source, "prepare": {}})
    return {**data, "data": section}


def _write_own_data(table: pa.Table, folder: Path) -> dict[str, str]:
    """``interactions.parquet`` (and ``items.parquet`` with each item's first text) in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["user", "item", *(["time"] if "time" in table.column_names else [])]
    paths = {"path": str((folder / "interactions.parquet").resolve())}
    _write_parquet(table.select(columns), folder / "interactions.parquet")
    if "text" in table.column_names:
        pairs = table.select(["item", "text"]).group_by("item", use_threads=False).aggregate([("text", "first")])
        items = pa.table({"item": pairs.column("item"), "text": pairs.column("text_first")})
        _write_parquet(items, folder / "items.parquet")
        paths["items_path"] = str((folder / "items.parquet").resolve())
    return paths


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file in the same folder, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
