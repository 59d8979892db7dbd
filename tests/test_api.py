"""The public Python API: ``import thinkrec`` is cheap; ``load`` / ``Run.recommend`` / ``item_embeddings`` /
``evaluate`` take external ids and give tables that match the recommendation path of the CLI and HTTP API."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import thinkrec
from test_serve_common import N_ITEMS, external_ids, make_run
from thinkrec.serve.recommender import MAX_K, Recommender

EXT = external_ids()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def run(run_dir: Path) -> thinkrec.Run:
    return thinkrec.load(run_dir)


def rows(table: object) -> list[dict[str, object]]:
    if isinstance(table, pa.Table):
        return table.to_pylist()
    return table.to_dict("records")  # type: ignore[attr-defined]


def test_import_is_cheap_and_the_api_is_documented() -> None:
    code = "import sys, thinkrec; print(sorted(m for m in ('torch', 'pyarrow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert set(thinkrec.__all__) == {"Run", "ThinkrecError", "__version__", "fit", "load"}
    for name in thinkrec.__all__:
        assert name == "__version__" or getattr(thinkrec, name).__doc__, name
    assert "pandas" in (thinkrec.__doc__ or "")
    with pytest.raises(AttributeError):
        _ = thinkrec.no_such_name  # type: ignore[attr-defined]


def test_recommend_for_histories_matches_the_recommender(run: thinkrec.Run, run_dir: Path) -> None:
    table = run.recommend(histories={"a": [EXT[0], EXT[5]], "b": [str(EXT[9])]}, k=4, output="arrow")
    assert isinstance(table, pa.Table) and table.column_names == ["user", "rank", "item", "title", "score"]
    rec = Recommender.from_run(run_dir)
    top = rec.recommend([[1, 6], [10]], k=4)
    got = rows(table)
    assert [r["user"] for r in got] == ["a"] * 4 + ["b"] * 4 and [r["rank"] for r in got] == [1, 2, 3, 4] * 2
    assert [r["item"] for r in got] == [rec.vocabulary.external_id(i) for b in (0, 1) for i, _ in top.row(b)]
    assert [r["title"] for r in got][:4] == [rec.vocabulary.title(i) for i, _ in top.row(0)]
    assert got[0]["score"] == pytest.approx(top.row(0)[0][1], rel=1e-5)


def test_history_tables_are_ordered_by_time(run: thinkrec.Run) -> None:
    events = pa.table({"user": ["x", "x", "x"], "item": [EXT[2], EXT[0], EXT[1]], "time": [30, 10, 20]})
    ordered = run.recommend(histories={"x": [EXT[0], EXT[1], EXT[2]]}, k=5, output="arrow")
    assert rows(run.recommend(histories=events, k=5, output="arrow")) == rows(ordered)
    dates = events.set_column(2, "time", pa.array(["2024-01-03", "2024-01-01", "2024-01-02"]))
    assert rows(run.recommend(histories=dates, k=5, output="arrow")) == rows(ordered)


def test_bad_calls_are_thinkrec_errors(run: thinkrec.Run) -> None:
    with pytest.raises(thinkrec.ThinkrecError, match="not in this model's catalogue"):
        run.recommend(histories={"a": [EXT[0], 5]})
    with pytest.raises(thinkrec.ThinkrecError, match="either users"):
        run.recommend()
    with pytest.raises(thinkrec.ThinkrecError, match=f"1..{MAX_K}"):
        run.recommend(histories={"a": [EXT[0]]}, k=MAX_K + 1)
    with pytest.raises(thinkrec.ThinkrecError, match="missing column"):
        run.recommend(histories=pa.table({"who": ["a"], "item": [EXT[0]]}))
    with pytest.raises(thinkrec.ThinkrecError, match="no such run directory"):
        thinkrec.load("/nonexistent/run")


def test_item_embeddings_carry_external_ids(run: thinkrec.Run, run_dir: Path) -> None:
    table = run.item_embeddings(output="arrow")
    assert table.column("item").to_pylist() == EXT and table.num_rows == N_ITEMS
    vectors = torch.tensor(table.column("embedding").to_pylist())
    torch.testing.assert_close(vectors, Recommender.from_run(run_dir).model.item_vectors().detach())


def test_evaluate_on_an_own_split(run: thinkrec.Run) -> None:
    history = pa.table({"user": ["a", "a", "b", "b"], "item": [EXT[0], EXT[1], EXT[2], EXT[3]], "time": [1, 2, 1, 5]})
    first = run.recommend(histories={"a": [EXT[0], EXT[1]], "b": [EXT[2]]}, k=10, output="arrow").to_pylist()
    hit_a = next(r["item"] for r in first if r["user"] == "a" and r["rank"] == 3)  # rank 3 for a
    test = pa.table({"user": ["a", "b", "c", "a"], "item": [hit_a, first[-1]["item"], EXT[0], 999], "time": [3] * 4})
    report = run.evaluate(test, history=history, ks=[1, 10])
    # a: rank 3 (0-based 2); b: only its item before time 3 counts, the target is its 10th; c: no history; 999 unknown
    assert report["n_samples"] == 2 and report["skipped_targets"] == 2
    assert report["HR@1"] == 0.0 and report["HR@10"] == 1.0
    assert report["MRR@10"] == pytest.approx((1 / 3 + 1 / 10) / 2)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed")
def test_pandas_in_and_out(run: thinkrec.Run) -> None:
    import pandas as pd

    frame = pd.DataFrame({"user": ["a", "a"], "item": [EXT[0], EXT[1]]})
    out = run.recommend(histories=frame, k=3)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["user", "rank", "item", "title", "score"]
    assert out["item"].tolist() == [r["item"] for r in rows(run.recommend(histories={"a": EXT[:2]}, k=3))]
    embeddings = run.item_embeddings()
    assert isinstance(embeddings, pd.DataFrame) and embeddings["item"].tolist() == EXT
    dated = pd.DataFrame(
        {"user": ["a", "a"], "item": [EXT[1], EXT[0]], "time": pd.to_datetime(["2024-01-02", "2024-01-01"])}
    )
    assert run.recommend(histories=dated, k=3).equals(out)
    test = pd.DataFrame({"user": ["a"], "item": [out["item"][0]], "time": pd.to_datetime(["2024-01-03"])})
    assert run.evaluate(test, history=dated, ks=[1])["HR@1"] == 1.0


def test_fit_on_a_dict_of_columns_with_dates_and_titles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        (f"u{u}", (u + i) % 15 + 1, f"2024-03-{i + 1:02d}", f"Lamp {(u + i) % 15 + 1}")
        for u in range(30)
        for i in range(8)
    ]
    users, items, days, names = (list(c) for c in zip(*rows, strict=True))
    columns = {"user": users, "item": items, "time": days, "text": names}
    quick = ["train.epochs=1", "model.hidden=16", "train.progress=false"]
    run = thinkrec.fit("ml100k-sasrec", interactions=columns, overrides=quick, run_dir=tmp_path / "run")
    assert run.describe()["dataset"] == "own" and run.describe()["n_items"] == 15
    assert "NDCG@10" in run.results["test"]["metrics"]
    top = run.recommend("u3", k=3, output="arrow").to_pylist()
    assert [r["user"] for r in top] == ["u3"] * 3 and all(r["title"].startswith("Lamp ") for r in top)
    assert (tmp_path / "run" / "data" / "items.parquet").exists()
    with pytest.raises(thinkrec.ThinkrecError, match=r"train\.epochz"):
        thinkrec.fit("ml100k-sasrec", interactions=columns, overrides=["train.epochz=1"], run_dir=tmp_path / "r2")
    with pytest.raises(thinkrec.ThinkrecError, match="missing column"):
        thinkrec.fit("ml100k-sasrec", interactions={"who": ["a"], "item": [1]}, run_dir=tmp_path / "r3")
