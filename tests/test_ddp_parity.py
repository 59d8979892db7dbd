"""The data-parallel parity benchmark's verdict: Welch's test and the 2-SD rule on hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scale.ddp_parity import summarise, train_command, welch_p


def test_welch_p_against_a_hand_computed_value() -> None:
    # means 2 and 3, variances 1 and 1, n = 3 each: t = -1 / sqrt(2/3) = -1.2247, df = 4, two-sided p = 0.2879
    assert welch_p([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(0.2879, abs=1e-4)
    assert welch_p([1.0], [2.0, 3.0]) is None


def _record(processes: int, seed: int, ndcg: float) -> dict[str, object]:
    return {"processes": processes, "seed": seed, "best_epoch": 3, "test": {"NDCG@10": ndcg}}


def test_the_verdict_is_two_standard_deviations_of_the_one_process_runs() -> None:
    one = [_record(1, s, v) for s, v in ((1, 0.10), (2, 0.12), (3, 0.14))]  # mean 0.12, SD 0.02
    inside = summarise([*one, *(_record(2, s, 0.155) for s in (1, 2, 3))], "NDCG@10", 2)["verdict"]
    assert inside["difference_in_sd"] == pytest.approx(1.75) and inside["within_2sd"]
    outside = summarise([*one, *(_record(2, s, 0.165) for s in (1, 2, 3))], "NDCG@10", 2)["verdict"]
    assert outside["difference_in_sd"] == pytest.approx(2.25) and not outside["within_2sd"]


def test_the_two_arms_run_the_same_command_but_for_the_launcher() -> None:
    single = train_command("p", 1, 7, Path("/r/a"), ["train.epochs=2"])
    multi = train_command("p", 2, 7, Path("/r/b"), ["train.epochs=2"])
    assert single[1:3] == ["-m", "thinkrec.cli.main"]
    assert multi[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert single[3:-1] == multi[7:-1] and "train.seed=7" in single
