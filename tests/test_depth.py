"""Adaptive reasoning depth: signals against direct computations, halting rules on hand-made cases, the
router's cross-fitting and that no selector reads labels at inference."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from thinkrec.eval import depth
from thinkrec.eval.metrics import metrics_from_ranks, per_sample


def _signals(n: int = 6, k1: int = 3, n_items: int = 15, d: int = 4, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, k1, d, generator=g)
    items = torch.randn(n_items, d, generator=g)
    scores = torch.einsum("bkd,nd->bkn", states, items) / 0.5
    return states, scores


def test_step_signals_match_a_direct_computation() -> None:
    states, scores = _signals()
    scores[0, :, 3] = float("-inf")  # a masked history item
    history = np.arange(6) + 1
    data = depth.step_data(scores, states, history, groups=[7, 7, 8, 8, 9, 9], top_k=4)
    n, k1, n_items = scores.shape
    for i in range(n):
        dists = []
        for k in range(k1):
            row = [float(x) for x in scores[i, k]]
            finite = [x for x in row if x != -math.inf]
            z = sum(math.exp(x) for x in finite)
            p = [math.exp(x) / z if x != -math.inf else 0.0 for x in row]
            dists.append(p)
            assert data.entropy[i, k] == pytest.approx(-sum(q * math.log(q) for q in p if q > 0), rel=1e-9)
            top = sorted(finite, reverse=True)
            assert data.margin[i, k] == pytest.approx(top[0] - top[1], rel=1e-6)
            assert data.norm[i, k] == pytest.approx(math.sqrt(sum(float(x) ** 2 for x in states[i, k])), rel=1e-6)
        for k in range(1, k1):
            a, b = states[i, k].tolist(), states[i, k - 1].tolist()
            cos = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
                sum(x * x for x in a) * sum(y * y for y in b)
            )
            assert data.cosine[i, k - 1] == pytest.approx(cos, rel=1e-6)
            top_now = set(sorted(range(n_items), key=lambda j: -float(scores[i, k, j]))[:4])
            top_before = set(sorted(range(n_items), key=lambda j: -float(scores[i, k - 1, j]))[:4])
            assert data.overlap[i, k - 1] == len(top_now & top_before) / 4
            p, q = dists[k], dists[k - 1]
            kl = sum(x * math.log(x / y) for x, y in zip(p, q, strict=True) if x > 0)
            assert data.kl[i, k - 1] == pytest.approx(kl, rel=1e-6, abs=1e-12)
    assert data.history.tolist() == history.tolist()
    assert data.groups.tolist() == [7, 7, 8, 8, 9, 9]
    assert data.gains is None
    both = depth.StepData.concat([data.subset(np.arange(3)), data.subset(np.arange(3, 6))])
    assert np.array_equal(both.entropy, data.entropy) and np.array_equal(both.groups, data.groups)


def _made(
    overlap: list[list[float]] | None = None,
    kl: list[list[float]] | None = None,
    entropy: list[list[float]] | None = None,
    history: list[int] | None = None,
    gains: Any = None,
) -> depth.StepData:
    """StepData with the given signals (K = number of transition columns) and neutral values elsewhere."""
    given = next(x for x in (overlap, kl, entropy) if x is not None)
    n = len(given)
    k = len(given[0]) - (1 if given is entropy else 0)
    ones = np.ones((n, k + 1))
    return depth.StepData(
        entropy=np.asarray(entropy, dtype=np.float64) if entropy is not None else ones.copy(),
        margin=ones.copy(),
        norm=ones.copy(),
        cosine=np.ones((n, k)),
        overlap=np.asarray(overlap, dtype=np.float64) if overlap is not None else np.zeros((n, k)),
        kl=np.asarray(kl, dtype=np.float64) if kl is not None else np.full((n, k), 9.0),
        history=np.asarray(history if history is not None else [5] * n, dtype=np.int64),
        groups=np.arange(n, dtype=np.int64),
        gains=gains,
    )


def test_agreement_halting_on_hand_made_cases() -> None:
    # K = 3; column j compares step j+1 with step j
    data = _made(overlap=[[0.9, 0.1, 0.1], [0.2, 0.8, 0.1], [0.1, 0.2, 0.3], [0.2, 0.2, 0.95]])
    current = depth.Agree(0.75).choose(data)
    assert current.step.tolist() == [1, 2, 3, 3]
    assert current.steps_used.tolist() == [1, 2, 3, 3]
    previous = depth.Agree(0.75, use="previous").choose(data)
    assert previous.step.tolist() == [0, 1, 3, 2]  # no agreement: step K
    assert previous.steps_used.tolist() == [1, 2, 3, 3]
    fallback = depth.Agree(0.75, use="previous", fallback=0).choose(data)
    assert fallback.step.tolist() == [0, 1, 0, 2] and fallback.steps_used.tolist() == [1, 2, 3, 3]
    by_kl = depth.Agree(0.05, "kl").choose(_made(kl=[[0.01, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert by_kl.step.tolist() == [1, 3] and by_kl.steps_used.tolist() == [1, 3]


def test_entropy_halting_on_hand_made_cases() -> None:
    data = _made(entropy=[[5.0, 4.0, 4.5], [5.0, 4.0, 3.0], [5.0, 5.5, 3.0], [5.0, 4.95, 4.0]])
    choice = depth.EntropyStop().choose(data)
    assert choice.step.tolist() == [1, 2, 0, 2]
    assert choice.steps_used.tolist() == [2, 2, 1, 2]
    # a tolerance: a fall of less than 0.1 nats counts as stopping
    assert depth.EntropyStop(0.1).choose(data).step.tolist() == [1, 2, 0, 0]


def test_fixed_mean_and_weighted_user_vectors() -> None:
    states, _ = _signals(n=4)
    data = _made(overlap=[[0.0, 0.0]] * 4)
    fixed = depth.Fixed(1).choose(data)
    assert fixed.hard and fixed.step.tolist() == [1] * 4 and fixed.steps_used.tolist() == [1] * 4
    assert torch.equal(fixed.user_vectors(states), states[:, 1])
    mean = depth.mean_of_steps(3).choose(data)
    assert not mean.hard and mean.steps_used.tolist() == [2] * 4
    assert torch.allclose(mean.user_vectors(states), states.mean(1))
    with pytest.raises(ValueError):
        _ = mean.step
    with pytest.raises(ValueError):
        depth.Fixed(3).choose(data)


def test_simplex_grid() -> None:
    grid = depth.simplex_grid(3, 4)
    assert len(grid) == 15  # C(4 + 2, 2)
    assert all(sum(w) == pytest.approx(1.0) and min(w) >= 0 for w in grid)
    assert (0.25, 0.25, 0.5) in grid and len(set(grid)) == len(grid)


def test_choice_gains_are_the_chosen_steps_metric() -> None:
    ranks = np.array([[0, 30, 4], [2, 1, 50]])  # [n, K+1]
    gains = np.stack([per_sample(ranks[:, k], "NDCG@20") for k in range(3)], axis=1)
    data = _made(overlap=[[0.0, 0.0]] * 2, gains=gains)
    got = depth.Choice.of_steps([2, 1], 3).gains(data)
    assert got.tolist() == pytest.approx([1 / math.log2(4 + 2), 1 / math.log2(1 + 2)])
    assert depth.oracle_gap_closed(0.12, 0.10, 0.20) == pytest.approx(0.2)
    assert math.isnan(depth.oracle_gap_closed(0.1, 0.1, 0.1))
    assert depth.steps_histogram(depth.Choice.of_steps([0, 2, 2, 1], 3), 3) == [0.25, 0.25, 0.5]


class _Blind:
    """A selector that fails if it is shown labels."""

    name = "blind"

    def choose(self, data: depth.StepData) -> depth.Choice:
        assert data.gains is None
        return depth.Choice.of_steps(np.zeros(len(data), dtype=np.int64), data.n_steps)


def test_tune_picks_the_best_gain_then_the_cheapest_and_hides_labels() -> None:
    gains = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    data = _made(overlap=[[0.0, 0.0]] * 3, gains=gains)
    best, table = depth.tune([depth.Fixed(0), depth.Fixed(2), depth.Fixed(1), _Blind()], data)
    assert best == depth.Fixed(1)  # r_1 and r_2 tie on gain; r_1 runs fewer steps
    assert [row[1] for row in table] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert depth.best_fixed_step(data) == 1


def test_cross_tune_chooses_each_half_with_the_other_half() -> None:
    # users 0..3 (two samples each): the first half of the users gains from step 0, the second from step 2
    groups = np.repeat(np.arange(4), 2)
    data = _made(overlap=[[0.0, 0.0]] * 8)
    data = depth.StepData(**{**data.__dict__, "groups": groups})
    half = depth.user_halves(groups)
    gains = np.zeros((8, 3))
    gains[half, 0] = 1.0
    gains[~half, 2] = 1.0
    held = depth.cross_tune([depth.Fixed(0), depth.Fixed(2)], data.with_gains(gains))
    # each half gets the step the *other* half prefers: nothing is tuned on the samples it is scored on
    assert held.step[half].tolist() == [2] * int(half.sum())
    assert held.step[~half].tolist() == [0] * int((~half).sum())


def _synthetic(n_users: int, per_user: int, seed: int) -> depth.StepData:
    """Samples whose best step is decided by the history length: short histories gain from step 0, long
    ones from step 2; the other signals are noise."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    history = rng.integers(1, 200, n)
    long = history > 100
    gains = rng.random((n, 3)) * 0.2
    gains[~long, 0] += 0.5
    gains[long, 2] += 0.6
    k1 = 3
    return depth.StepData(
        entropy=rng.normal(size=(n, k1)),
        margin=rng.random((n, k1)),
        norm=rng.random((n, k1)) + 1,
        cosine=rng.random((n, k1 - 1)),
        overlap=rng.random((n, k1 - 1)),
        kl=rng.random((n, k1 - 1)),
        history=history.astype(np.int64),
        groups=np.repeat(np.arange(n_users) + seed * 10_000, per_user).astype(np.int64),
        gains=gains,
    )


@pytest.mark.parametrize("which", ["all", "prefix"])
def test_router_learns_a_predictable_depth_with_cross_fitting(which: depth.Features) -> None:
    valid, test = _synthetic(80, 10, 1), _synthetic(80, 10, 2)
    fit = depth.fit_router(valid, which)
    assert len(fit.router.models) == 2
    assert test.gains is not None and valid.gains is not None
    best_fixed = test.gains[:, depth.best_fixed_step(valid)].mean()
    chosen = fit.router.choose(test.with_gains(None))
    assert chosen.gains(test).mean() > best_fixed + 0.2
    assert fit.held_out.gains(valid).mean() > valid.gains[:, depth.best_fixed_step(valid)].mean() + 0.2
    long = test.history > 100
    assert np.mean(chosen.step[long] == 2) > 0.9 and np.mean(chosen.step[~long] == 0) > 0.9
    cost = chosen.steps_used
    assert (cost == chosen.step).all() if which == "prefix" else (cost == 2).all()
    # the cross-fitting halves split users, never one user's samples
    half = depth.user_halves(valid.groups)
    assert not set(valid.groups[half]) & set(valid.groups[~half])


class _Sealed:
    """Stands for test labels: any use of it raises."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a test label was read ({name})")

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError("a test label was read")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a test label was read")

    def __len__(self) -> int:
        raise AssertionError("a test label was read")


def test_no_selector_reads_test_labels() -> None:
    valid, test = _synthetic(60, 8, 3), _synthetic(60, 8, 4)
    garbage = test.with_gains(np.random.default_rng(0).random(cast(np.ndarray, test.gains).shape))
    sealed = test.with_gains(cast(np.ndarray, _Sealed()))
    selectors: list[Any] = [depth.fit_router(valid, "all").router, depth.fit_router(valid, "prefix").router]
    for candidates in depth.halting_candidates(valid.with_gains(None)).values():
        selectors.append(depth.tune(candidates, valid)[0])
    selectors += [depth.Fixed(1), depth.mean_of_steps(3)]
    for selector in selectors:
        reference = selector.choose(test)
        for other in (garbage, sealed):
            got = selector.choose(other)
            assert np.array_equal(got.weights, reference.weights) and np.array_equal(
                got.steps_used, reference.steps_used
            )
    # fitting reads validation labels only: the same router whatever the test samples hold
    again = depth.fit_router(valid, "all")
    assert np.array_equal(again.router.choose(sealed).weights, selectors[0].choose(test).weights)
    with pytest.raises(ValueError, match="labelled"):
        depth.fit_router(test.with_gains(None))


def test_learned_step_weights_favour_the_informative_step() -> None:
    g = torch.Generator().manual_seed(0)
    n, n_items, d = 400, 30, 8
    items = torch.randn(n_items, d, generator=g)
    targets = torch.randint(0, n_items, (n,), generator=g)
    informative = items[targets] * 2
    noise = torch.randn(n, d, generator=g) * 2
    states = torch.stack([noise, informative, noise.flip(0)], dim=1)
    weights = depth.fit_step_weights(states, targets, lambda u: u @ items.T)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[1] > 0.6
    chosen = depth.Fixed(weights=weights).choose(_made(overlap=[[0.0, 0.0]] * n))
    assert torch.allclose(chosen.user_vectors(states), (torch.tensor(weights)[None, :, None] * states).sum(1))


def test_prefix_router_needs_step_zero_only_and_selectors_round_trip_through_json() -> None:
    import json

    valid, test = _synthetic(60, 8, 5), _synthetic(60, 8, 6)
    prefix = depth.fit_router(valid, "prefix").router
    full = prefix.choose(test.with_gains(None))
    only_zero = prefix.choose(test.first_steps(1).with_gains(None))
    assert np.array_equal(full.weights, only_zero.weights) and np.array_equal(full.steps_used, only_zero.steps_used)
    everything = depth.fit_router(valid, "all").router
    with pytest.raises(ValueError, match="reads all"):
        everything.choose(test.first_steps(1))
    selectors: list[Any] = [
        prefix,
        everything,
        depth.Agree(0.5, "kl", "previous", 0),
        depth.EntropyStop(-0.2),
        depth.Fixed(2),
        depth.mean_of_steps(3),
    ]
    for selector in selectors:
        back = depth.selector_from_json(json.loads(json.dumps(depth.selector_to_json(selector))))
        assert back.name == selector.name
        assert np.array_equal(back.choose(test).weights, selector.choose(test).weights)


def test_choose_steps_is_step_data_then_choose() -> None:
    states, scores = _signals(n=5)
    choice = depth.choose_steps(depth.Agree(0.25, use="previous"), scores, states, [3] * 5, top_k=4)
    direct = depth.Agree(0.25, use="previous").choose(depth.step_data(scores, states, [3] * 5, top_k=4))
    assert np.array_equal(choice.weights, direct.weights)
    assert choice.user_vectors(states).shape == (5, 4)


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny PRL run (K = 2) trained on a small CSV log where users walk the catalogue."""
    from helpers import train_walk_prl_run

    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    train_walk_prl_run(tmp_path)
    return tmp_path


def test_benchmark_end_to_end_fits_on_validation_only(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import json

    from benchmarks.quality import depth as bench
    from thinkrec.eval.evaluator import EvalResult

    run = shop / "run"
    bench.main([str(run), "--metric", "NDCG@5", "--out", str(shop / "a"), "--control", str(run)])
    record = json.loads((shop / "a" / "depth.jsonl").read_text().splitlines()[-1])
    names = [row["name"] for row in record["rows"]]
    assert {"fixed r_0", "fixed r_2", "mean of steps", "entropy", "router (all signals)"} <= set(names)
    saved = EvalResult.load(run / "test_ranks.npz")
    fixed = {row["name"]: row for row in record["rows"]}
    for k in range(3):  # the benchmark's step ranks are the ones training saved
        assert fixed[f"fixed r_{k}"]["test"]["NDCG@5"] == pytest.approx(
            metrics_from_ranks(saved.step_ranks[k], [5])["NDCG@5"]
        )
    assert record["oracle"]["test"]["NDCG@5"] == pytest.approx(
        metrics_from_ranks(saved.step_ranks.min(0), [5])["NDCG@5"]
    )
    assert (shop / "a" / "depth-run.png").stat().st_size > 1000

    # the same analysis with the test targets scrambled: every selector chosen and every test choice's cost
    # is unchanged (only validation labels are fitted on); only the test scores move
    from thinkrec.runs import load_data as real_load

    def scrambled(cfg: Any) -> Any:
        ds, split = real_load(cfg)
        targets = np.random.default_rng(0).permutation(split.test.targets)
        return ds, dataclasses.replace(split, test=dataclasses.replace(split.test, targets=targets))

    monkeypatch.setattr(bench, "load_data", scrambled)
    bench.main([str(run), "--metric", "NDCG@5", "--out", str(shop / "b")])
    other = json.loads((shop / "b" / "depth.jsonl").read_text().splitlines()[-1])
    assert (shop / "a" / "depth-run-selectors.json").read_text() == (
        shop / "b" / "depth-run-selectors.json"
    ).read_text()
    for a, b in zip(record["rows"], other["rows"], strict=True):
        assert a["name"] == b["name"] and a["valid"] == b["valid"]
        assert a["steps_test"] == b["steps_test"] and a["steps_hist_test"] == b["steps_hist_test"]


def test_recency_is_a_router_signal_when_given() -> None:
    valid = _synthetic(40, 8, 7)
    with_recency = valid.with_gains(valid.gains)
    with_recency = depth.StepData(
        **{**with_recency.__dict__, "recency": np.random.default_rng(0).exponential(3600.0, len(valid))}
    )
    assert depth.features(with_recency).shape[1] == depth.features(valid).shape[1] + 1
    router = depth.fit_router(with_recency, "prefix").router
    assert len(router.choose(with_recency.with_gains(None)).step) == len(valid)
    with pytest.raises(ValueError, match="features"):
        router.choose(valid)
    both = depth.StepData.concat([with_recency.subset(np.arange(5)), with_recency.subset(np.arange(5, 9))])
    assert both.recency is not None and np.array_equal(both.recency, cast(np.ndarray, with_recency.recency)[:9])
    assert depth.StepData.concat([valid.subset(np.arange(3)), with_recency.subset(np.arange(3))]).recency is None


def test_user_means_against_a_loop() -> None:
    from benchmarks.quality.depth import user_means

    users = np.array([5, 2, 5, 9, 2, 5])
    values = np.array([1.0, 0.0, 0.5, 0.25, 1.0, 0.0])
    expected = [np.mean([v for v, u in zip(values, users, strict=True) if u == user]) for user in (2, 5, 9)]
    assert user_means(values, users).tolist() == pytest.approx(expected)


def test_float32_signals_with_a_temperature_match_the_float64_reference() -> None:
    states, scaled = _signals(n=7, n_items=40)
    raw = scaled * 0.5  # _signals divides by a temperature of 0.5
    raw[2, :, 5] = float("-inf")  # masked history items, in every step
    raw[4, :, [0, 9]] = float("-inf")
    reference = depth.step_data(raw / 0.5, states, [4] * 7, top_k=6)
    steps = [raw[:, k].float() for k in range(3)]
    fast = depth.block_signals(steps, states.float(), top_k=6, temperature=0.5, masked=True)
    for name in depth.SIGNALS:
        assert fast[name].dtype == torch.float32
        assert np.allclose(fast[name].double().numpy(), getattr(reference, name), rtol=1e-5, atol=1e-5), name
    # only what is asked for is computed; the rest is NaN
    needs = depth.Needs(frozenset({"entropy", "norm"}), first=1)
    some = depth.block_signals(steps, states.float(), needs, top_k=6, temperature=0.5, masked=True)
    assert set(some) == {"entropy", "norm"}
    assert np.allclose(some["entropy"][:, 0].double().numpy(), reference.entropy[:, 0], rtol=1e-5)
    assert torch.isnan(some["entropy"][:, 1:]).all() and torch.isnan(some["norm"][:, 1:]).all()
    data = depth.signal_data({k: v.numpy() for k, v in some.items()}, 3, [4] * 7)
    assert np.isnan(data.kl).all() and data.entropy.shape == (7, 3) and data.kl.shape == (7, 2)


def _fit_input(valid: depth.StepData) -> depth.FitData:
    n = len(valid)
    return depth.FitData(valid, torch.zeros(n, valid.n_steps, 0), torch.zeros(n, dtype=torch.long), lambda u: u)


def test_every_fitted_selector_reads_only_the_signals_it_declares() -> None:
    """A selector given only what its ``needs`` name (the rest NaN) chooses exactly as with every signal: what
    evaluation and serving rely on when they compute only those."""
    valid, test = _synthetic(60, 8, 11), _synthetic(60, 8, 12)
    full = test.with_gains(None)
    for kind in depth.SELECTORS.values():
        if kind.fit is None:
            selector = depth.build_selector(kind.name, 3)
        elif kind.fit_states:
            continue  # step weights: fit on states (tested below), read no signal
        else:
            fit_needs = kind.fit_needs
            seen = _only(valid, fit_needs).with_gains(valid.gains)
            selector = kind.fit(_fit_input(seen))
            again = kind.fit(_fit_input(valid))  # the fit reads only its own signals too
            assert depth.selector_to_json(selector) == depth.selector_to_json(again), kind.name
        needs = depth.needs_of(selector)
        got, want = selector.choose(_only(full, needs)), selector.choose(full)
        assert np.array_equal(got.weights, want.weights) and np.array_equal(got.steps_used, want.steps_used), kind.name
    assert depth.needs_of(_Blind()) == depth.ALL_SIGNALS  # a selector that does not say gets everything


def _only(data: depth.StepData, needs: depth.Needs) -> depth.StepData:
    """``data`` with every signal ``needs`` does not name (or of a step after ``needs.first``) set to NaN."""
    kept: dict[str, Any] = {}
    for name in depth.SIGNALS:
        values = getattr(data, name).copy()
        last = needs.steps(data.n_steps) - (0 if name in depth.STEP_SIGNALS else 1)
        values[:, max(0, last) :] = np.nan
        kept[name] = values if name in needs.signals else np.full_like(values, np.nan)
    return depth.StepData(**{**data.__dict__, **kept})


def test_best_fixed_chooses_the_best_single_read_out_on_validation() -> None:
    """Among every step alone and the mean of steps, the highest mean validation gain; a tie goes to a single
    step before the mean and to the earlier step. Only gains are read, never test samples."""

    def fit(gains: list[list[float]], mean: list[float] | None) -> depth.Fixed:
        data = _made(overlap=[[0.0, 0.0]] * len(gains), gains=np.asarray(gains, dtype=np.float64))
        given = _fit_input(data)
        if mean is not None:
            given = dataclasses.replace(given, mean_gains=np.asarray(mean, dtype=np.float64))
        chosen = depth.fit_best_fixed(given)
        assert isinstance(chosen, depth.Fixed)
        return chosen

    gains = [[0.0, 1.0, 0.5], [0.5, 0.0, 0.5]]  # step means 0.25, 0.5, 0.5
    assert fit(gains, [0.6, 0.6]) == depth.Fixed(weights=(1 / 3,) * 3, label="best fixed on validation: mean of steps")
    chosen = fit(gains, [0.5, 0.4])  # the mean (0.45) loses to r_1 (0.5), which ties r_2 and is earlier
    assert (chosen.step, chosen.weights, chosen.name) == (1, None, "best fixed on validation: fixed r_1")
    assert fit(gains, [0.5, 0.5]).step == 1  # a step ties the mean: the single step (cheaper) wins
    assert fit(gains, None).step == 1  # no mean gains given: steps only
    choice = chosen.choose(_made(overlap=[[0.0, 0.0]] * 2))
    assert choice.hard and list(choice.step) == [1, 1] and list(choice.steps_used) == [1, 1]
    assert depth.selector_from_json(depth.selector_to_json(chosen)) == chosen


def test_selector_names_parse_build_and_fail_with_the_valid_names() -> None:
    assert depth.selector_names() == [
        "fixed[:k]",
        "mean",
        "best-fixed",
        "weights",
        "agree",
        "agree-kl",
        "entropy",
        "router",
        "router-prefix",
    ]
    assert depth.build_selector("fixed", 3) == depth.Fixed(2)
    assert depth.build_selector("fixed:0", 3) == depth.Fixed(0)
    assert depth.build_selector("mean", 4) == depth.mean_of_steps(4)
    kind, argument = depth.parse_selector(" router ")
    assert kind.name == "router" and argument is None and kind.fitted
    for bad, says in [
        ("bogus", "unknown depth selector 'bogus'; choose one of: fixed[:k], mean, best-fixed, weights"),
        ("mean:1", "takes no argument"),
        ("fixed:x", "whole number"),
        ("fixed:-1", "whole number"),
        ("", "unknown depth selector"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            depth.parse_selector(bad)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        depth.build_selector("fixed:3", 3)
    with pytest.raises(ValueError, match="fit on validation"):
        depth.build_selector("router", 3)
    with pytest.raises(ValueError, match="registered already"):
        depth.register_selector(depth.SELECTORS["mean"])
    with pytest.raises(ValueError, match="plain word"):
        depth.register_selector(depth.SelectorKind("a:b", "x", build=lambda n, _: depth.Fixed(0)))
    assert (depth.Needs(frozenset({"kl"})) | depth.Needs(frozenset({"norm"}), 1)) == depth.Needs(
        frozenset({"kl", "norm"})
    )
    assert depth.NO_SIGNALS | depth.Needs(frozenset({"norm"}), 1) == depth.Needs(frozenset({"norm"}), 1)


def test_compare_runs_reads_the_saved_ranks(shop: Path) -> None:
    """The two-sided comparison: a run against itself differs by nothing; its numbers are the run's own."""
    import json

    from benchmarks.quality import compare_runs

    run = shop / "run"
    assert compare_runs.main(["--a", str(run), "--b", str(run), "--names", "one,same", "--out", str(shop / "c")]) == 0
    summary = json.loads((shop / "c.json").read_text())
    saved = json.loads((run / "results.json").read_text())["test"]["metrics"]
    assert summary["a"]["metrics"]["NDCG@20"]["mean"] == pytest.approx(saved["NDCG@20"])
    assert summary["b_minus_a"]["samples_pooled"]["mean_diff"] == 0.0
    steps = summary["a"]["steps"]
    assert set(steps) >= {"r_0", "r_1", "r_2", "oracle (analysis)"}
    assert steps["oracle (analysis)"] >= max(steps[f"r_{k}"] for k in range(3))
    assert steps["r_2"] == pytest.approx(saved["NDCG@20"])  # PRL scores with its last step
    assert "one" in (shop / "c.md").read_text()

    # a read-out per side: B scored with the mean of steps (then with r_0) against A as the run scores
    assert compare_runs.main(["--a", str(run), "--b", str(run), "--b-readout", "mean", "--out", str(shop / "m")]) == 0
    mean = json.loads((shop / "m.json").read_text())
    assert mean["b"]["readout"] == "mean" and mean["a"]["readout"] == "inference"
    assert mean["b"]["metrics"]["NDCG@20"]["mean"] == pytest.approx(steps["mean of steps"])
    diff = mean["b_minus_a"]["samples_pooled"]["mean_diff"]
    assert diff == pytest.approx(steps["mean of steps"] - saved["NDCG@20"]) and diff != 0.0
    assert "B (mean)" in (shop / "m.md").read_text()
    assert compare_runs.main(["--a", str(run), "--b", str(run), "--b-readout", "r_0", "--out", str(shop / "r0")]) == 0
    first = json.loads((shop / "r0.json").read_text())["b"]
    assert first["readout"] == "r_0" and first["metrics"]["NDCG@20"]["mean"] == pytest.approx(steps["r_0"])
    assert steps["r_0"] != pytest.approx(saved["NDCG@20"])  # r_0 is not the inference read-out here
    with pytest.raises(SystemExit, match="no read-out 'r_3'"):
        compare_runs.main(["--a", str(run), "--b", str(run), "--a-readout", "r_3"])


def test_depth_benchmark_names_runs_apart_when_their_folders_share_a_name() -> None:
    from benchmarks.harness import run_labels

    assert run_labels([Path("out/erl/t=2/s1")]) == ["s1"]
    assert run_labels([Path("out/erl/t=2/s1"), Path("out/prl/t=2/s1")]) == ["erl-t=2-s1", "prl-t=2-s1"]
    assert run_labels([Path("a/x/s1"), Path("a/y/s1"), Path("a/y/s2")]) == ["x-s1", "y-s1", "y-s2"]
    assert run_labels([Path("a/s1"), Path("a/s1")]) == ["0-s1", "1-s1"]
    assert run_labels([Path("/work/r/s1"), Path("q/s1")]) == ["r-s1", "q-s1"]
    assert run_labels([Path("/s1"), Path("x/s1")]) == ["s1", "x-s1"]  # never "/" (the root) in a label
