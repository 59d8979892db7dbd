"""The reproduction benchmark keeps a small record of every finished run, and rebuilds its table from records alone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.quality import cold_items, selection_table
from benchmarks.quality import rearec_repro as repro


@pytest.fixture
def out(real_dataset: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ML-100K in place, a private cache, and the benchmark's output folder."""
    real_dataset("ml-100k")
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "out"


def test_table_is_rebuilt_from_records_without_run_directories(out: Path) -> None:
    tiny = ["model.hidden=8", "model.layers=1", "train.batch_size=512"]
    argv = ["--dataset", "ml100k", "--seeds", "1", "--variants", "base,erl", "--epochs", "3", "--out", str(out), *tiny]
    assert repro.main(argv) == 0
    table = json.loads((out / "rearec-ml100k-time.json").read_text())
    provenance = table.pop("provenance")  # who wrote the table: machine, versions, commit, command
    assert provenance["torch"] and provenance["machine"]["cores"] >= 1 and "commit" in provenance["thinkrec"]
    records = out / "records" / "ml100k-time"
    assert sorted(p.name for p in records.iterdir()) == ["sasrec-erl-s1", "sasrec-s1"]
    assert sorted(p.name for p in (records / "sasrec-s1").iterdir()) == [
        "config.json",
        "log.jsonl",
        "results.json",
        "test_ranks.npz",
        "test_unseen_ranks.npz",
    ]

    # the cold-item analysis reads a record's saved ranks, and equals re-scoring the run's checkpoint
    run_dir = out / "runs" / "ml100k-time" / "sasrec-s1"
    from_record = cold_items.cold_item_report(records / "sasrec-s1", max_train=20, k=20)
    for name in ("test_ranks.npz", "test_unseen_ranks.npz"):
        (run_dir / name).unlink()
    rescored = cold_items.cold_item_report(run_dir, max_train=20, k=20)
    assert 0 < from_record["cold"]["n_samples"] < from_record["all"]["n_samples"]
    assert from_record["unseen"]["n_samples"] > 0  # the time split's targets never seen in training
    pooled = from_record["cold_and_unseen (<= 20, 0 included)"]
    assert pooled["n_samples"] == from_record["cold"]["n_samples"] + from_record["unseen"]["n_samples"]
    for part in ("all", "cold", "unseen", "cold_and_unseen (<= 20, 0 included)"):
        assert from_record[part] == pytest.approx(rescored[part])
    cold_table = cold_items.summary_table([from_record, rescored], k=20).splitlines()
    assert cold_table[0].count("|") == 6 and cold_table[2].startswith("| sasrec (IDs) (2) | ")
    assert f"{from_record['unseen']['NDCG@20']:.4f} ± 0.0000" in cold_table[2]
    results = json.loads((records / "sasrec-s1" / "results.json").read_text())  # training reported them too
    unseen = results["test_unseen_targets"]
    assert unseen["n_samples"] == from_record["unseen"]["n_samples"] and "never occurs in training" in unseen["note"]
    assert unseen["metrics"]["NDCG@20"] == pytest.approx(from_record["unseen"]["NDCG@20"])

    # a fresh clone has the records and no run directories (checkpoints are not committed): same table,
    # nothing trained
    shutil.rmtree(out / "runs")
    (out / "rearec-ml100k-time.json").unlink()
    assert repro.main(argv) == 0
    assert not (out / "runs").exists()
    rebuilt = json.loads((out / "rearec-ml100k-time.json").read_text())
    assert rebuilt.pop("provenance")["thinkrec"] == provenance["thinkrec"]
    assert rebuilt == table
    assert table["overrides"] == {"all": tiny}

    # a tagged table gets its own files and leaves the folder's main table alone
    main_md = (out / "rearec-ml100k-time.md").read_text()
    (out / "rearec-ml100k-time.md").write_text("kept")
    assert repro.main(["--report-tag", "subset", *argv]) == 0
    tagged = json.loads((out / "rearec-ml100k-time-subset.json").read_text())
    assert "provenance" in tagged
    assert {k: v for k, v in tagged.items() if k != "provenance"} == table
    assert (out / "rearec-ml100k-time-subset.md").read_text() == main_md
    assert (out / "rearec-ml100k-time.md").read_text() == "kept"

    # a per-variant override reaches that variant only: the base record still matches, the ERL one does not
    with pytest.raises(SystemExit, match=r"sasrec-erl-s1 was trained with other settings \(reasoning\.erl_lambda\)"):
        repro.main(["--erl", "reasoning.erl_lambda=0.5", *argv])
    assert repro.main(["--prl", "reasoning.prl_alpha=2.0", *argv]) == 0  # no PRL variant here: nothing changes

    # a record made with other settings is refused, not mixed into a table
    with pytest.raises(SystemExit, match=r"model\.hidden"):
        repro.main([*argv[:-3], "model.hidden=16", *tiny[1:]])


def test_selection_table_chooses_on_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    selection = selection_table

    def fake_run(name: str, kind: str, lam: float, valid: list[float], test: float) -> Path:
        run = tmp_path / name
        run.mkdir()
        config = {"reasoning": {"kind": kind, "erl_lambda": lam}, "train": {"seed": 1, "valid_metric": "NDCG@20"}}
        (run / "config.json").write_text(json.dumps(config))
        log = [{"epoch": e, "valid": {"NDCG@20": v, "NDCG@10": 1.0 - v}} for e, v in enumerate(valid)]
        (run / "log.jsonl").write_text("\n".join(json.dumps(row) for row in log) + "\n")
        (run / "results.json").write_text(json.dumps({"test": {"metrics": {"NDCG@20": test}}}))
        return run

    runs = [
        fake_run("a", "erl", 0.001, [0.05, 0.08, 0.07], test=0.09),  # best test, lower validation
        fake_run("b", "erl", 0.01, [0.06, 0.07, 0.09], test=0.06),
        fake_run("c", "prl", 0.01, [0.04], test=0.05),
    ]
    stem = tmp_path / "tables" / "selection"
    argv = [*map(str, runs), "--keys", "reasoning.erl_lambda", "--save", str(tmp_path / "saved"), "--out", str(stem)]
    assert selection.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = printed["rows"]
    assert "machine" in printed["provenance"] and printed["time"]
    assert json.loads(stem.with_suffix(".json").read_text())["rows"] == rows
    assert "| **yes** |" in stem.with_suffix(".md").read_text()
    by_run = {row["run"]: row for row in rows}
    assert [by_run[r]["chosen"] for r in "abc"] == [False, True, True]
    assert (by_run["a"]["best_epoch"], by_run["a"]["valid"]) == (1, 0.08)
    assert by_run["b"]["reasoning.erl_lambda"] == 0.01 and by_run["b"]["test_NDCG@20"] == 0.06
    assert sorted(p.name for p in (tmp_path / "saved" / "a").iterdir()) == ["config.json", "log.jsonl", "results.json"]
    # the saved copies rebuild the same rows
    assert selection.main([str(tmp_path / "saved" / r) for r in "abc"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])["rows"]
    assert [row["valid"] for row in again] == [row["valid"] for row in rows]


def test_per_user_means_average_seeds_then_each_users_samples() -> None:
    """The per-user test weighs users equally: seeds first, then each user's samples (by hand: NDCG@20 of
    rank r is 1 / log2(r + 2) below 20, else 0)."""
    import numpy as np

    from thinkrec.eval.evaluator import EvalResult

    def run(ranks: list[int]) -> dict[str, object]:
        result = EvalResult.empty(len(ranks), 1, "last", None)
        result.ranks[:] = np.asarray(ranks)
        return {"result": result}

    users = np.array([7, 3, 7, 7])
    runs = [run([0, 1, 30, 2]), run([2, 1, 0, 40])]
    gain = {0: 1.0, 1: 1 / np.log2(3), 2: 0.5}  # rank 30 and 40: 0
    sample = [(gain[0] + gain[2]) / 2, gain[1], (0 + gain[0]) / 2, (gain[2] + 0) / 2]
    expected = [sample[1], (sample[0] + sample[2] + sample[3]) / 3]  # users in sorted order: 3, 7
    np.testing.assert_allclose(repro.per_user(runs, users), expected)


def test_released_setup_trains_its_own_presets_into_their_own_folders(out: Path) -> None:
    tiny = ["model.hidden=8", "model.ffn=16", "model.layers=1"]
    argv = ["--dataset", "ml100k", "--setup", "released", "--seeds", "1", "--variants", "base", "--epochs", "1"]
    assert repro.main([*argv, "--out", str(out), *tiny]) == 0
    table = json.loads((out / "rearec-ml100k-time-released.json").read_text())
    assert (
        table["setup"] == "released" and "research code's setup" in (out / "rearec-ml100k-time-released.md").read_text()
    )
    assert not (out / "records" / "ml100k-time").exists()
    config = json.loads((out / "records" / "ml100k-time-released" / "sasrec-s1" / "config.json").read_text())
    assert config["model"]["norm"] == "post" and config["model"]["positions"] == "from_start"  # setups/released
    assert config["train"]["sample_mode"] == "last" and config["train"]["batch_size"] == 2048
    with pytest.raises(SystemExit, match="only sasrec"):
        repro.main([*argv, "--backbone", "gru4rec", "--out", str(out)])
    with pytest.raises(SystemExit, match="time protocol only"):
        repro.main([*argv, "--protocol", "loo", "--out", str(out)])
