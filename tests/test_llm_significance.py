"""Paired bootstrap and McNemar (thinkrec.eval.significance) against hand computations, and the LLM run
comparison built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thinkrec.eval.metrics import metrics_from_ranks
from thinkrec.eval.significance import mcnemar, paired_bootstrap


def test_mcnemar_exact_binomial_by_hand() -> None:
    # 2 samples only a hits, 8 only b hits, 5 both, 5 neither: n = 10 discordant, k = 2
    a = [1] * 2 + [0] * 8 + [1] * 5 + [0] * 5
    b = [0] * 2 + [1] * 8 + [1] * 5 + [0] * 5
    r = mcnemar(a, b)
    assert (r.n, r.only_a, r.only_b, r.method) == (20, 2, 8, "exact binomial")
    assert r.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375


def test_mcnemar_chi_square_by_hand_and_symmetry() -> None:
    a = [1] * 10 + [0] * 30 + [1] * 60
    b = [0] * 10 + [1] * 30 + [1] * 60
    r = mcnemar(a, b)
    assert r.method.startswith("chi-square") and r.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))  # 0.002663...
    assert r.p_value == pytest.approx(0.0026636, abs=1e-6)
    assert mcnemar(b, a).p_value == pytest.approx(r.p_value)
    assert mcnemar([1, 0], [1, 0]).p_value == 1.0


def test_paired_bootstrap_constant_and_null_differences() -> None:
    a = np.array([0.1, 0.2, 0.3, 0.4])
    r = paired_bootstrap(a, a + 0.5, resamples=200)
    assert r.mean_diff == pytest.approx(0.5) and r.ci_low == pytest.approx(0.5) and r.ci_high == pytest.approx(0.5)
    assert r.p_value == 0.0
    same = paired_bootstrap(a, a, resamples=200)
    assert same.mean_diff == 0.0 and same.p_value == 1.0


def test_paired_bootstrap_matches_a_hand_resampling() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50) + 0.05
    r = paired_bootstrap(a, b, resamples=500, seed=7)
    draws = np.random.default_rng(7).integers(0, 50, size=(500, 50))
    means = (b - a)[draws].mean(axis=1)
    assert r.ci_low == pytest.approx(np.quantile(means, 0.025)) and r.ci_high == pytest.approx(
        np.quantile(means, 0.975)
    )
    assert r.p_value == pytest.approx(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_llm_compare_table_tests_every_row_against_the_reference() -> None:
    from benchmarks.llm.llm_compare import markdown, paired_columns

    samples = [[u, 3] for u in range(6)]
    reports = {
        "ref": {"ranks": [0, 0, 50, 50, 50, 50], "samples": samples},
        "better": {"ranks": [0, 0, 0, 0, 50, 50], "samples": samples},
        "worse": {"ranks": [50, 50, 50, 50, 50, 50], "samples": samples},
    }
    tests = paired_columns(reports, "ref", k=20)
    assert set(tests) == {"better", "worse"}
    assert (tests["better"]["HR@20"]["only_a"], tests["better"]["HR@20"]["only_b"]) == (0, 2)
    assert (tests["worse"]["HR@20"]["only_a"], tests["worse"]["HR@20"]["only_b"]) == (2, 0)
    assert tests["worse"]["NDCG@20"]["mean_diff"] == pytest.approx(-2 / 6)
    rows = {name: {**metrics_from_ranks(np.asarray(r["ranks"]), [5, 10, 20]), "n": 6} for name, r in reports.items()}
    table = markdown(rows, tests, "ref", k=20)
    assert "| ref (reference) | 6 |" in table and table.count("| – | – |") == 1
    with pytest.raises(ValueError, match="different samples"):
        paired_columns({**reports, "other": {"ranks": [0] * 6, "samples": [[9, 9]] * 6}}, "ref", k=20)


def test_llm_compare_rows_of_runs_with_the_same_settings_get_their_folders() -> None:
    from pathlib import Path

    from benchmarks.llm.llm_compare import row_names
    from thinkrec.llm.config import load_llm_config

    a, b = load_llm_config(None, []), load_llm_config(None, ["recpo.seed=7"])  # seed: not in the name
    names = row_names([Path("runs/x/s1"), Path("runs/y/s1")], [a, b])
    assert len(set(names)) == 2 and names[0].endswith("[x-s1]") and names[1].endswith("[y-s1]")
    c = load_llm_config(None, ["recpo.lr=0.5"])
    assert "[" not in "".join(row_names([Path("runs/x/s1"), Path("runs/y/s1")], [a, c]))
    # the row says which step's weights were tested (best validation), not only how long the run trained
    named = row_names([Path("runs/x/s1"), Path("runs/y/s1")], [a, c], [0, None])
    assert "weights of step 0" in named[0] and "weights of step" not in named[1]


def test_llm_compare_trains_and_accepts_sasrec_only_on_the_llm_split() -> None:
    from pathlib import Path

    from benchmarks.llm.llm_compare import check_same_data, split_overrides
    from thinkrec.config.loader import load_config
    from thinkrec.llm.config import load_llm_config

    llm = load_llm_config("benchmarks/llm/llm_ml100k_coldstart.toml")
    engine = load_config("ml100k-time-sasrec")  # 80/10/10 by interactions; the LLM configs cut the time span
    with pytest.raises(SystemExit, match="another source or split"):
        check_same_data(engine, llm, Path("runs/x"))
    check_same_data(load_config("ml100k-time-sasrec", split_overrides(llm)), llm, Path("runs/x"))
