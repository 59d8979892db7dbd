"""Batch mode: Parquet/CSV/JSONL in, Parquet/CSV out, independent of the chunk size, unknown ids counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from test_serve_common import external_ids, make_run
from thinkrec.cli.main import main
from thinkrec.errors import ThinkrecError
from thinkrec.serve.batch import recommend_file
from thinkrec.serve.recommender import Recommender

EXT = external_ids()
USERS = [f"u{i}" for i in range(11)]
HISTORIES = [[EXT[(3 * u + j) % len(EXT)] for j in range(1 + u % 5)] for u in range(len(USERS))]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def rec(run_dir: Path) -> Recommender:
    return Recommender.from_run(run_dir)


def write_parquet(path: Path, histories: list[list[int]]) -> Path:
    pq.write_table(pa.table({"user": USERS[: len(histories)], "items": histories}), path)
    return path


def write_csv(path: Path, histories: list[list[int]]) -> Path:
    lines = ["user,items"] + [f'{u},"{" ".join(map(str, h))}"' for u, h in zip(USERS, histories, strict=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, histories: list[list[int]]) -> Path:
    rows = [json.dumps({"user": u, "items": h}) for u, h in zip(USERS, histories, strict=False)]
    path.write_text("\n".join(rows) + "\n")
    return path


def read(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def test_parquet_round_trip_matches_the_recommender(rec: Recommender, tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "in.parquet", HISTORIES)
    summary = recommend_file(rec, src, tmp_path / "out.parquet", k=3, progress=False)
    assert summary.users == summary.users_written == len(USERS)
    assert summary.rows_written == 3 * len(USERS) and summary.unknown_items == 0
    rows = read(tmp_path / "out.parquet")
    assert [r["user"] for r in rows[:3]] == ["u0"] * 3 and [r["rank"] for r in rows[:3]] == [1, 2, 3]
    internal = [[rec.vocabulary.internal(i) or 0 for i in h] for h in HISTORIES]
    top = rec.recommend(internal, k=3)
    for u, user in enumerate(USERS):
        mine = [r for r in rows if r["user"] == user]
        assert [r["item"] for r in mine] == [rec.vocabulary.external_id(i) for i, _ in top.row(u)]
        assert [r["title"] for r in mine] == [rec.vocabulary.title(i) for i, _ in top.row(u)]
        assert [r["score"] for r in mine] == pytest.approx([s for _, s in top.row(u)], rel=1e-5)
    assert list(tmp_path.glob(".*tmp")) == []


WRITERS = {".parquet": write_parquet, ".csv": write_csv, ".jsonl": write_jsonl}


@pytest.mark.parametrize("suffix", list(WRITERS))
@pytest.mark.parametrize("out", ["out.parquet", "out.csv"])
def test_formats_and_chunk_sizes_give_the_same_rows(rec: Recommender, tmp_path: Path, suffix: str, out: str) -> None:
    src = WRITERS[suffix](tmp_path / f"in{suffix}", HISTORIES)
    reference: list[tuple[Any, ...]] = []
    for chunk in (1, 4, 1000):
        dst = tmp_path / f"{chunk}-{out}"
        recommend_file(rec, src, dst, k=4, chunk_size=chunk, progress=False)
        rows: list[tuple[Any, ...]] = [
            (str(r["user"]), r["rank"], r["item"], r["title"], round(float(r["score"]), 4)) for r in read(dst)
        ]
        assert len(rows) == 4 * len(USERS)
        reference = reference or rows
        assert rows == reference


def test_unknown_ids_are_skipped_and_counted(rec: Recommender, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f'user,items\na,"{EXT[0]},999999 {EXT[1]}"\nb,"424242"\nc,\nd,"{EXT[0]} {EXT[1]}"\n')
    summary = recommend_file(rec, src, tmp_path / "out.csv", k=2, progress=False)
    assert summary.unknown_items == 2
    assert summary.users == 4 and summary.users_written == 2 and summary.users_without_known_items == 2
    rows = read(tmp_path / "out.csv")
    assert [r["user"] for r in rows] == ["a", "a", "d", "d"]
    assert [r["item"] for r in rows[:2]] == [r["item"] for r in rows[2:]]  # same known history


def test_internal_ids(rec: Recommender, tmp_path: Path) -> None:
    internal = [[rec.vocabulary.internal(i) or 0 for i in h] for h in HISTORIES]
    a = recommend_file(
        rec, write_parquet(tmp_path / "i.parquet", internal), tmp_path / "i.csv", id_type="internal", progress=False
    )
    recommend_file(rec, write_parquet(tmp_path / "e.parquet", HISTORIES), tmp_path / "e.csv", progress=False)
    assert a.unknown_items == 0
    assert read(tmp_path / "i.csv") == read(tmp_path / "e.csv")


def test_bad_inputs_are_clear_errors_and_leave_no_output(rec: Recommender, tmp_path: Path) -> None:
    with pytest.raises(ThinkrecError, match="not found"):
        recommend_file(rec, tmp_path / "missing.parquet", tmp_path / "out.parquet", progress=False)
    pq.write_table(pa.table({"user": ["a"], "history": [[1]]}), tmp_path / "cols.parquet")
    with pytest.raises(ThinkrecError, match="missing column"):
        recommend_file(rec, tmp_path / "cols.parquet", tmp_path / "out.parquet", progress=False)
    with pytest.raises(ThinkrecError, match="extension"):
        recommend_file(rec, write_parquet(tmp_path / "in.parquet", HISTORIES), tmp_path / "out.xlsx", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cols.parquet", "in.parquet"]


def test_cli_batch(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_csv(tmp_path / "in.csv", HISTORIES)
    dst = tmp_path / "top.parquet"
    assert main(["recommend", str(run_dir), "--batch", str(src), "--output", str(dst), "-k", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["users_written"] == len(USERS) and summary["rows_written"] == 2 * len(USERS)
    assert pq.read_metadata(dst).num_rows == 2 * len(USERS)
    assert main(["recommend", str(run_dir), "--batch", str(src)]) == 2
    assert "--output" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["out.parquet", "out.csv"])
def test_batch_output_gets_the_usual_file_mode(rec: Recommender, tmp_path: Path, out: str) -> None:
    import os
    import stat

    src = write_parquet(tmp_path / "in.parquet", HISTORIES)
    old = os.umask(0o022)
    try:
        recommend_file(rec, src, tmp_path / out, k=3, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / out).stat().st_mode) == 0o644  # not mkstemp's 0o600
