"""Cheap depth selectors: the signals read inside the scoring pass equal the earlier separate pass bit for bit,
and halting (a sample that stopped gets no further reasoning step) gives the selector ranks and choices of
the per-step evaluation, in evaluation and in serving, with the stopped rows not run further."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from thinkrec.cli.main import main
from thinkrec.eval import depth
from thinkrec.eval.evaluator import DepthPlan, evaluate
from thinkrec.inference.folded import FoldedEncoder
from thinkrec.inference.runner import FoldedRunner, PlainRunner
from thinkrec.runs import evaluation_report, load_data, load_run, run_selector

from helpers import train_walk_prl_run

SELECTORS = [
    "agree",
    "agree-kl",
    "entropy",
    "router",
    "router-prefix",
    "fixed:0",
    "fixed:1",
    "mean",
    "weights",
    "best-fixed",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny PRL run (K = 2, 60 items, so top-20 lists are a third of the catalogue), its selectors fit."""
    root = tmp_path_factory.mktemp("halting")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THINKREC_CACHE_DIR", str(root / "cache"))
        mp.chdir(root)
        train_walk_prl_run(root, n_users=90, n_items=60, length=12)
        cfg, model = load_run("run")
        _, split = load_data(cfg)
        for name in SELECTORS:
            run_selector("run", name, model, cfg, data=lambda: split)
        yield root


@pytest.fixture()
def loaded(run: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(run / "cache"))
    monkeypatch.chdir(run)
    cfg, model = load_run("run")
    _, split = load_data(cfg)
    return cfg, model, split


# --- the signals inside the scoring pass -----------------------------------------------------------------


def _reference_signals(
    scores: Sequence[torch.Tensor],
    states: torch.Tensor,
    needs: depth.Needs,
    top_k: int,
    temperature: float,
    masked: bool,
) -> dict[str, torch.Tensor]:
    """The signals as the separate pass before this change computed them (verbatim arithmetic: every step's
    scores held, an unclamped ``exp``)."""
    n_steps = len(scores)
    b, n_items = scores[0].shape
    want, last = needs.signals, needs.steps(n_steps)
    out = {name: torch.full((b, n_steps if name in depth.STEP_SIGNALS else n_steps - 1), math.nan) for name in want}
    inv_t = 1.0 / temperature
    spread = "entropy" in want or "kl" in want
    k = min(top_k, n_items)
    n_top = max(k if "overlap" in want else 0, min(2, n_items) if "margin" in want else 0)
    before: tuple[torch.Tensor, torch.Tensor] | None = None
    before_top: torch.Tensor | None = None
    for step in range(last):
        s = scores[step]
        if spread:
            z = torch.add(s.amax(dim=1, keepdim=True) * -inv_t, s, alpha=inv_t)
            if masked:
                z.clamp_(min=depth.MASKED)
            e = z.exp()
            total = e.sum(dim=1)
            log_total = total.log()
            mean_z = depth._row_dot(e, z) / total
            if "entropy" in want:
                out["entropy"][:, step] = log_total - mean_z
            if "kl" in want and before is not None:
                kl = mean_z - depth._row_dot(e, before[0]) / total - log_total + before[1]
                out["kl"][:, step - 1] = kl.clamp_min(0)
            before = (z, log_total)
        if n_top:
            top = s.topk(n_top, dim=1)
            if "margin" in want:
                out["margin"][:, step] = (top.values[:, 0] - top.values[:, min(1, n_top - 1)]) * inv_t
            if "overlap" in want:
                now = top.indices[:, :k]
                if before_top is not None:
                    shared = (now[:, :, None] == before_top[:, None, :]).any(dim=2).sum(dim=1)
                    out["overlap"][:, step - 1] = shared.float() / k
                before_top = now
    st = states[:, :last].float()
    if "norm" in want:
        out["norm"][:, :last] = st.norm(dim=-1)
    if "cosine" in want and last > 1:
        out["cosine"][:, : last - 1] = torch.nn.functional.cosine_similarity(st[:, 1:], st[:, :-1], dim=-1)
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_signals_in_the_scoring_pass_equal_the_separate_pass_bit_for_bit(masked: bool) -> None:
    """Sharp distributions (T = 0.07: most exponents underflow to subnormals, which the clamp avoids)."""
    g = torch.Generator().manual_seed(3)
    states = torch.randn(64, 3, 16, generator=g) * 2
    items = torch.randn(500, 16, generator=g)
    scores = [states[:, k] @ items.T for k in range(3)]
    if masked:  # the history: the same items in every step
        history = torch.randint(0, 500, (64, 8), generator=g)
        for s in scores:
            s[torch.arange(64)[:, None], history] = float("-inf")
    z = (scores[0] - scores[0].amax(1, keepdim=True)) / 0.07
    assert float((z < -87.4).float().mean()) > 0.3  # the regime the clamp is for
    for needs in (depth.ALL_SIGNALS, depth.Needs(frozenset(depth.STEP_SIGNALS), first=1)):
        want = _reference_signals(scores, states, needs, 20, 0.07, masked)
        got = depth.block_signals([s.clone() for s in scores], states, needs, 20, 0.07, masked)
        assert set(got) == set(want)
        for name in want:
            assert torch.equal(got[name].nan_to_num(7.0), want[name].nan_to_num(7.0)), name


def test_per_step_evaluation_reads_the_signals_it_used_to(loaded: tuple[Any, Any, Any]) -> None:
    cfg, model, split = loaded
    for mask in (False, True):
        eval_cfg = cfg.eval.model_copy(update={"mask_history": mask})
        result = evaluate(model, split, split.valid, eval_cfg, depth=DepthPlan(collect=depth.ALL_SIGNALS))
        assert result.depth is not None
        states = _states(model, split, split.valid)
        n_steps = states.shape[1]
        history = _histories(model, split, split.valid) if mask else None
        scores = []
        for k in range(n_steps):
            s = states[:, k] @ model.item_vectors().detach().T
            if history is not None:
                from thinkrec.eval.halting import mask_items

                mask_items(s, history)
            scores.append(s)
        temperature = float(model.scorer.temperature)
        want = _reference_signals(scores, states, depth.ALL_SIGNALS, depth.TOP_K, temperature, mask)
        for name, value in want.items():
            got = result.depth.signals[name]
            assert np.allclose(got, value.double().numpy(), rtol=1e-5, atol=1e-6, equal_nan=True), name


def _histories(model: Any, split: Any, samples: Any) -> torch.Tensor:
    from thinkrec.data.batches import eval_histories

    return torch.from_numpy(eval_histories(split, samples, model.backbone.max_len))


def _states(model: Any, split: Any, samples: Any) -> torch.Tensor:
    from thinkrec.data.batches import position_ids

    inputs = _histories(model, split, samples)
    with torch.no_grad():
        return model.encode(inputs, position_ids(inputs.shape[1], model.backbone.max_len))


# --- halting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [False, True])
def test_halting_evaluation_gives_the_per_step_evaluations_selector_ranks(
    loaded: tuple[Any, Any, Any], mask: bool
) -> None:
    cfg, model, split = loaded
    eval_cfg = cfg.eval.model_copy(update={"mask_history": mask})
    stopped_early = 0
    for name in SELECTORS:
        fitted = run_selector("run", name, model, cfg, eval_cfg, data=lambda: split)
        plan = DepthPlan(selector=fitted.selector)
        for samples in (split.valid, split.test):
            full = evaluate(model, split, samples, eval_cfg, depth=plan)
            halted = evaluate(model, split, samples, eval_cfg, per_step=False, depth=plan)
            a, b = full.depth, halted.depth
            assert a is not None and b is not None and b.halting and halted.mode == "depth"
            assert np.array_equal(a.ranks, b.ranks), name
            assert np.array_equal(a.steps_used, b.steps_used), name
            assert np.array_equal(a.weights, b.weights), name
            assert np.array_equal(halted.ranks, b.ranks)
            # the reasoning steps ran for exactly the samples that had not stopped
            assert b.steps_used is not None
            rows = np.sum(b.step_rows, axis=0).tolist()
            assert rows == [int((b.steps_used >= k).sum()) for k in (1, 2)], name
            stopped_early += int((b.steps_used < 2).sum())
    assert stopped_early > 0


@dataclass(frozen=True)
class ByUser:
    """A hand-made selector: step ``user % 3``, which needs exactly that many steps (no signal)."""

    name: str = "by user"

    @property
    def needs(self) -> depth.Needs:
        return depth.NO_SIGNALS

    def choose(self, data: depth.StepData) -> depth.Choice:
        return depth.Choice.of_steps(data.groups % 3, data.n_steps)


def test_rows_that_stopped_are_not_run_further(loaded: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model, split = loaded
    calls: list[tuple[int, int]] = []
    extend = FoldedEncoder.extend_slot

    def counted(self: FoldedEncoder, tokens: torch.Tensor, cache: Any, step: int) -> torch.Tensor:
        calls.append((step, tokens.shape[0]))
        return extend(self, tokens, cache, step)

    monkeypatch.setattr(FoldedEncoder, "extend_slot", counted)
    samples = split.test
    plan = DepthPlan(selector=ByUser())
    halted = evaluate(model, split, samples, cfg.eval, per_step=False, depth=plan)
    assert halted.depth is not None and halted.depth.steps_used is not None
    chosen = samples.users % 3
    assert np.array_equal(halted.depth.steps_used, chosen)
    ran = {step: sum(n for s, n in calls if s == step) for step in (1, 2)}
    assert ran == {1: int((chosen >= 1).sum()), 2: int((chosen == 2).sum())}
    assert 0 < ran[2] < ran[1] < len(samples)  # some rows stopped at r_0, more at r_1
    calls.clear()
    full = evaluate(model, split, samples, cfg.eval, depth=plan)
    assert full.depth is not None and np.array_equal(full.depth.ranks, halted.depth.ranks)
    assert {step: sum(n for s, n in calls if s == step) for step in (1, 2)} == {1: len(samples), 2: len(samples)}
    # fixed:0 runs no reasoning step at all
    calls.clear()
    evaluate(model, split, samples, cfg.eval, per_step=False, depth=DepthPlan(selector=depth.Fixed(0)))
    assert calls == []


def test_the_runners_halt_alike(loaded: tuple[Any, Any, Any]) -> None:
    """The folded runner skips the stopped rows' steps; the plain one computes them and replays the same
    decisions: the states of the steps each row reached agree, the rest are NaN."""
    _, model, split = loaded
    inputs = _histories(model, split, split.test)
    stop_at = torch.arange(len(inputs)) % 3

    def halt(step: int, rows: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        assert states.shape == (len(rows), model.backbone.hidden_size)
        return stop_at[rows] == step

    with torch.no_grad():
        folded = FoldedRunner.from_model(model).encode_halting(inputs, 16, halt)
        plain = PlainRunner(model).encode_halting(inputs, 16, halt)
        every = FoldedRunner.from_model(model).encode_passes(inputs, 16)
    assert torch.equal(folded.reached, stop_at) and torch.equal(plain.reached, stop_at)
    assert folded.step_rows == [int((stop_at >= 1).sum()), int((stop_at >= 2).sum())]
    assert plain.step_rows == [len(inputs), len(inputs)]
    reached = torch.arange(3)[None, :] <= stop_at[:, None]
    assert torch.isnan(folded.states[~reached]).all() and torch.isnan(plain.states[~reached]).all()
    assert torch.allclose(folded.states[reached], every[reached], atol=1e-5)
    assert torch.allclose(plain.states[reached], every[reached], atol=1e-5)


def test_halting_choices_equal_the_full_choices_on_random_signals() -> None:
    """A choice that needs steps 0..k reads no signal after k: on signals known up to step k only (the
    rest NaN), the rows whose steps used are <= k get the choice the full signals give."""
    rng = np.random.default_rng(0)
    n, k1 = 400, 4
    data = depth.StepData(
        entropy=rng.normal(3, 0.3, (n, k1)),
        margin=rng.exponential(1, (n, k1)),
        norm=rng.uniform(1, 2, (n, k1)),
        cosine=rng.uniform(0.5, 1, (n, k1 - 1)),
        overlap=rng.integers(0, 21, (n, k1 - 1)) / 20,
        kl=rng.exponential(0.2, (n, k1 - 1)),
        history=rng.integers(1, 50, n),
        groups=np.arange(n),
    )
    selectors: list[depth.Selector] = [
        depth.Agree(0.7),
        depth.Agree(0.5, use="previous", fallback=1),
        depth.Agree(0.1, "kl"),
        depth.EntropyStop(0.0),
        depth.EntropyStop(-0.1),
        depth.Fixed(1),
    ]
    for selector in selectors:
        full = selector.choose(data)
        for k in range(k1 - 1):
            known = data.first_steps(k + 1)
            pad = {
                name: np.concatenate([getattr(known, name), np.full((n, k1 - 1 - k), np.nan)], axis=1)
                for name in depth.SIGNALS
            }
            prefix = selector.choose(depth.StepData(**pad, history=data.history, groups=data.groups))
            done = prefix.steps_used <= k
            assert np.array_equal(prefix.weights[done], full.weights[done]), selector.name
            assert np.array_equal(prefix.steps_used[done], full.steps_used[done]), selector.name
            assert np.array_equal(done, full.steps_used <= k), selector.name


def test_evaluate_without_steps_reports_the_halting_selector(loaded: tuple[Any, Any, Any]) -> None:
    cfg, model, split = loaded
    fitted = run_selector("run", "router-prefix", model, cfg, fit=False)
    report, result = evaluation_report(model, split, cfg, "test", cfg.eval, depth=fitted, per_step=False)
    found = report["depth"]
    assert "reasoning" not in report and "metrics" not in found["fixed_k"] and "mean_of_steps" not in found
    assert found["metrics"] == pytest.approx(report["metrics"])
    assert found["steps_used"]["rows_per_step"] == [
        int((result.depth.steps_used >= k).sum())
        for k in (1, 2)  # type: ignore[union-attr]
    ]
    assert "halts" in found["note"]


@pytest.mark.parametrize("name", ["entropy", "agree", "router-prefix", "fixed:1", "mean", "router"])
def test_serving_halts_and_returns_the_full_computations_top_k(run: Path, name: str) -> None:
    from thinkrec.serve.recommender import Recommender

    rec = Recommender.from_run(run / "run")
    n = rec.n_items
    histories = [[(7 * u + j) % n + 1 for j in range(2 + u % 9)] for u in range(40)]
    for exclude in (False, True):
        full = rec.recommend(histories, 5, depth=name, per_step=True, exclude_seen=exclude)
        halted = rec.recommend(histories, 5, depth=name, per_step=False, exclude_seen=exclude)
        assert halted.step_ids is None and halted.halted_step_rows is not None
        assert torch.equal(full.ids, halted.ids) and torch.equal(full.scores, halted.scores)
        assert full.steps_used is not None and halted.steps_used is not None
        assert torch.equal(full.steps_used, halted.steps_used)
        assert halted.halted_step_rows == [int((halted.steps_used >= k).sum()) for k in (1, 2)]


def test_cli_evaluate_no_steps_halts(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(run / "run"), "--depth", "router-prefix", "--no-steps"]) == 0
    out = capsys.readouterr().out
    assert "depth: router-prefix" in out and "halting: reasoning steps computed for r_1:" in out
    assert "fixed r_2" not in out and "reasoning steps" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_halting_under_bf16_autocast_ranks_as_the_per_step_evaluation(loaded: tuple[Any, Any, Any]) -> None:
    """The halting callback runs inside the encoder's autocast region; its scores stay float32."""
    cfg, model, split = loaded
    eval_cfg = cfg.eval.model_copy(update={"autocast": "bf16"})
    for name in ("entropy", "router-prefix"):
        plan = DepthPlan(selector=run_selector("run", name, model, cfg, fit=False).selector)
        full = evaluate(model, split, split.test, eval_cfg, depth=plan)
        halted = evaluate(model, split, split.test, eval_cfg, per_step=False, depth=plan)
        assert full.depth is not None and halted.depth is not None
        assert np.array_equal(full.depth.ranks, halted.depth.ranks), name
        assert np.array_equal(full.depth.steps_used, halted.depth.steps_used), name


def test_paired_benchmark_without_the_table_compares_halting(run: Path, tmp_path: Path) -> None:
    from benchmarks.speed import depth_paired

    records = tmp_path / "paired.jsonl"
    argv = [str(run / "run"), "--depth", "router-prefix", "--rounds", "2", "--threads", "1", "--no-steps"]
    assert depth_paired.main([*argv, "--records", str(records)]) == 0
    summary = [json.loads(line) for line in records.read_text().splitlines()][-1]
    assert summary["kind"] == "summary" and summary["per_step_table"] is False
    assert "halting" in summary["selector_side"] and "--no-steps" in summary["baseline"]
    assert len(summary["rows_per_step"]) == 2 and summary["rows_per_step"][0] >= summary["rows_per_step"][1]
    assert summary["fixed_k_metrics"] == summary["inference_mode_metrics"]
