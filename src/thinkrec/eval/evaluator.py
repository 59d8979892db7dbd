"""Full-catalogue evaluation, chunked so memory stays bounded."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from thinkrec.blocking import block_scores, rows_per_block
from thinkrec.data.batches import eval_histories, trim
from thinkrec.data.split import EvalSamples, Split
from thinkrec.errors import ThinkrecError
from thinkrec.eval.depth import (
    NO_SIGNALS,
    STEP_SIGNALS,
    TOP_K,
    Needs,
    Selector,
    SignalPass,
    needs_of,
    signal_data,
)
from thinkrec.eval.halting import HaltingRows, mask_items
from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.eval.protocol import EvalConfig
from thinkrec.inference.runner import Runner, model_device, runner_for
from thinkrec.models.model import SeqRecModel
from thinkrec.parallel import resolve_workers, row_workers
from thinkrec.precision import warn_slow_bf16
from thinkrec.storage import atomic_write_bytes


@dataclass(frozen=True)
class DepthPlan:
    """Adaptive depth in an evaluation (:mod:`thinkrec.eval.depth`): a ``selector`` choosing each sample's
    steps from label-free signals of that sample's per-step scores (its choice is ranked too), and/or
    signals to ``collect`` for every sample (and with ``keep_states`` the states: what fitting a selector on
    validation samples reads)."""

    selector: Selector | None = None
    collect: Needs = NO_SIGNALS
    keep_states: bool = False
    top_k: int = TOP_K

    @property
    def needs(self) -> Needs:
        """The signals computed per piece: the selector's and the collected ones."""
        return (needs_of(self.selector) if self.selector is not None else NO_SIGNALS) | self.collect


@dataclass
class DepthOutput:
    """What an evaluation with a :class:`DepthPlan` gives besides every step's ranks."""

    ranks: np.ndarray | None  # int64 [n]: ranks of the selector's choice (with a selector)
    weights: np.ndarray | None  # float64 [n, K+1]: the chosen step weights (one-hot: a chosen step)
    steps_used: np.ndarray | None  # int64 [n]: reasoning steps the choice needed
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # collected: name -> [n, K+1] or [n, K]
    states: torch.Tensor | None = None  # collected states [n, K+1, d]
    # per piece: seconds spent on the signals and the choice, on whichever worker thread ran the piece
    # (halting: the whole piece, encoding included)
    selector_seconds: list[float] = field(default_factory=list)
    # halting (no per-step table): per piece, the rows each reasoning step 1..K was computed for
    step_rows: list[list[int]] = field(default_factory=list)
    halting: bool = False  # whether the reasoning steps of samples that stopped were skipped


@dataclass
class EvalResult:
    """Ranks of every sample for every reasoning step (``[K+1, n]``) and for the chosen inference mode."""

    ranks: np.ndarray  # int64 [n] for the configured inference mode
    step_ranks: np.ndarray  # int64 [K+1, n]; row k scores with step k alone
    mean_ranks: np.ndarray | None  # int64 [n] when K > 0: scoring with the mean of steps
    mode: str = "last"  # the inference mode of ``ranks``: 'last', 'mean' or 'step <k>'
    depth: DepthOutput | None = None  # with a DepthPlan: the selector's ranks and choices, collected signals

    @classmethod
    def empty(cls, n: int, k_plus_1: int, mode: str, step: int | None) -> EvalResult:
        """Zero ranks of ``n`` samples and ``K + 1`` steps, for the inference mode ``mode`` (and ``step``)."""
        return cls(
            ranks=np.zeros(n, dtype=np.int64),
            step_ranks=np.zeros((k_plus_1, n), dtype=np.int64),
            mean_ranks=np.zeros(n, dtype=np.int64) if k_plus_1 > 1 else None,
            mode=mode if mode != "step" else f"step {step}",
        )

    def metrics(self, ks: list[int]) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, ks)

    def save(self, path: Path) -> None:
        """Write the per-sample ranks to ``path`` (``.npz``, atomically; uint16 when they fit, so a Beauty
        test set takes ~100 KB): significance tests and subgroup analyses read them without the model."""
        named = {"ranks": self.ranks, "step_ranks": self.step_ranks}
        if self.mean_ranks is not None:
            named["mean_ranks"] = self.mean_ranks
        if self.depth is not None and self.depth.ranks is not None and self.depth.steps_used is not None:
            named["depth_ranks"] = self.depth.ranks  # the adaptive-depth selector's ranks and steps used
            named["depth_steps_used"] = self.depth.steps_used
        top = max(int(a.max(initial=0)) for a in named.values())
        dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.int64
        arrays = {name: a.astype(dtype) for name, a in named.items()}
        buffer = io.BytesIO()
        arrays["mode"] = np.array(self.mode)
        np.savez_compressed(buffer, allow_pickle=False, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> EvalResult:
        """The ranks :meth:`save` wrote (as int64)."""
        try:
            with np.load(path) as arrays:
                depth = None
                if "depth_ranks" in arrays:
                    used = arrays["depth_steps_used"].astype(np.int64)
                    depth = DepthOutput(arrays["depth_ranks"].astype(np.int64), None, used)
                return cls(
                    ranks=arrays["ranks"].astype(np.int64),
                    step_ranks=arrays["step_ranks"].astype(np.int64),
                    mean_ranks=arrays["mean_ranks"].astype(np.int64) if "mean_ranks" in arrays else None,
                    mode=str(arrays["mode"]),
                    depth=depth,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ThinkrecError(
                f"{path}: not a ranks file written by thinkrec ({exc}); delete it and re-evaluate"
            ) from exc


def _ranks(
    model: SeqRecModel,
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor | None,
) -> np.ndarray:
    """Pessimistic 0-based rank of each target column; history items are set to -inf when given.

    Scores are computed in cache-sized row blocks; each block's target score is read from the same
    block, so ties are judged on identical numbers. The scorer's temperature is left out: dividing by a
    positive number does not change an order, and it would cost a pass over every block. The ranks are
    counted on the users' device and come back as a numpy array.
    """
    ranks = torch.empty(len(users), dtype=torch.long, device=users.device)
    block = rows_per_block(items.shape[0])
    users, items = model.scorer.prepare(users, items)  # e.g. cosine: normalised once, not per block
    for start in range(0, len(users), block):
        rows = slice(start, start + block)
        scores = block_scores(users[rows], items).float()
        if history is not None:
            mask_items(scores, history[rows])
        ranks[rows] = target_ranks(scores, targets[rows], overwrite=True)
    result: np.ndarray = ranks.cpu().numpy()
    return result


def _step_ranks_and_signals(
    model: SeqRecModel,
    states: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor | None,
    needs: Needs,
    top_k: int,
) -> tuple[list[np.ndarray], dict[str, torch.Tensor], float]:
    """Every step's ranks (as :func:`_ranks` of ``states[:, k]`` computes them, block for block, so the ranks
    are the same numbers) and the signals ``needs`` names, read from the same score blocks before the rank
    count overwrites them: per row block, step by step, so each step's block is scored, read for the signals
    (:class:`~thinkrec.eval.depth.SignalPass`) and counted while it is in cache, and no second pass over the
    scores is made; and the seconds the signals took."""
    k1 = states.shape[1]
    prepared = [model.scorer.prepare(states[:, k], items) for k in range(k1)]
    ranks = torch.empty(k1, len(states), dtype=torch.long, device=states.device)
    block = rows_per_block(items.shape[0])
    parts: list[dict[str, torch.Tensor]] = []
    seconds = 0.0
    temperature = float(model.scorer.temperature)
    for start in range(0, len(states), block):
        rows = slice(start, start + block)
        signals: SignalPass | None = None
        for k, (users, step_items) in enumerate(prepared):
            s = block_scores(users[rows], step_items).float()
            if history is not None:
                mask_items(s, history[rows])
            if signals is None:
                b, n = s.shape
                signals = SignalPass(k1, b, n, needs, top_k, temperature, history is not None, s.dtype, s.device)
            if signals.reads:  # the signals of step k from its block while it is in cache, then the count
                t0 = time.perf_counter()
                signals.add(s)
                seconds += time.perf_counter() - t0
            else:
                signals.step += 1
            ranks[k, rows] = target_ranks(s, targets[rows], overwrite=True)
        assert signals is not None
        t0 = time.perf_counter()
        parts.append(signals.result(states[rows]))
        seconds += time.perf_counter() - t0
    found = {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if parts else {}
    return list(ranks.cpu().numpy()), found, seconds


def encode_in_blocks(
    model: SeqRecModel, inputs: torch.Tensor, steps: int | None, cfg: EvalConfig, runner: Runner | None = None
) -> torch.Tensor:
    """User states ``[B, K+1, d]`` of left-padded histories ``inputs [B, W]`` (on the model's device), encoded
    by ``runner`` (default: :func:`~thinkrec.inference.runner.runner_for` the model) in passes of at most
    ``cfg.encode_tokens`` positions: one pass over thousands of histories streams every activation through
    main memory (ML-100K's 943 x 50 test histories: several times slower than in passes), while passes of a
    few dozen rows pay every operation's fixed cost many times."""
    runner = runner_for(model) if runner is None else runner
    # one autocast region for all passes: the weights are cast to bf16 once, not once per pass
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
        return runner.encode_passes(inputs, pass_rows(inputs, cfg), steps).float()


def pass_rows(inputs: torch.Tensor | np.ndarray, cfg: EvalConfig) -> int:
    """Rows of each encoder pass over histories ``inputs [B, W]`` (:func:`encode_in_blocks`)."""
    return max(1, cfg.encode_tokens // max(1, inputs.shape[1]))


def history_chunks(
    split: Split, samples: EvalSamples, max_len: int, size: int
) -> Iterator[tuple[np.ndarray, EvalSamples, np.ndarray]]:
    """The evaluation's chunks of at most ``size`` samples, shortest history first (so each chunk is trimmed to
    little padding): sample indices, the samples, and their left-padded histories ``[n, max_len]``."""
    order = np.argsort(np.minimum(samples.positions, max_len), kind="stable")
    for start in range(0, len(samples), size):
        sl = order[start : start + size]
        part = samples.subset(sl)
        yield sl, part, eval_histories(split, part, max_len)


def chunk_size(cfg: EvalConfig, n_items: int) -> int:
    budget = cfg.memory_budget_mb * 2**20 // (4 * max(1, n_items))
    return max(1, min(cfg.batch_size, budget))


# a piece of a chunk: sample indices, the samples, their histories trimmed to the chunk's width, and untrimmed
Piece = tuple[np.ndarray, EvalSamples, np.ndarray, np.ndarray]


def pieces(
    chunks: Iterable[tuple[np.ndarray, EvalSamples, np.ndarray]],
    cfg: EvalConfig,
    parts: int,
    done: Callable[[], object],
) -> Iterator[Piece]:
    """The chunks, each cut at pass boundaries into up to ``parts`` pieces of whole encoder passes: the pieces
    keep the chunk's width, so every pass (and a reasoning cache's width) is the chunk's own. ``done`` is
    called after each chunk."""
    for sl, part, history in chunks:
        (inputs,) = trim(history)
        rows = pass_rows(inputs, cfg)
        passes = -(-len(sl) // rows)
        per = -(-passes // parts) * rows  # whole passes per piece
        for a in range(0, len(sl), per):
            cut = slice(a, a + per)
            yield sl[cut], part.subset(np.arange(len(sl))[cut]), inputs[cut], history[cut]
        done()


def pieces_per_chunk(chunks: int, workers: int) -> int:
    """Whole chunks with one worker, or when there are enough for every worker to take two; else two pieces
    per worker of each chunk (ML-100K's 943 test users are one chunk of four passes)."""
    return 1 if workers == 1 or chunks >= 2 * workers else 2 * workers


def inference_mode(cfg: EvalConfig, k_plus_1: int) -> tuple[str, int | None]:
    """The configured user vector (``'last'``, ``'mean'`` or ``'step'`` and its step) for ``K + 1`` states."""
    # 'auto' is resolved from reasoning.kind by RunConfig; a bare EvalConfig treats it as 'last'.
    mode, step = (cfg.inference, cfg.inference_step) if k_plus_1 > 1 else ("last", None)
    mode = "last" if mode == "auto" else mode
    if mode == "step" and (step is None or not 0 <= step < k_plus_1):
        raise ThinkrecError(f"eval.inference_step {step} is outside the steps evaluated (0..{k_plus_1 - 1})")
    return mode, step


class _Bar(Protocol):
    def update(self, n: float | None = 1) -> object: ...
    def close(self) -> None: ...


class _NoBar:
    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass


def chunk_bar(show: bool, total: int) -> _Bar:
    """A progress bar over the evaluation's chunks (tqdm), or one that shows nothing."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    bar: _Bar = tqdm(desc="evaluate", unit="chunk", leave=False, total=total)
    return bar


@dataclass
class PieceRanker:
    """Ranks the samples of one piece and writes them into ``result`` (pieces write disjoint samples, so
    worker threads can share it): every step's and the mean's with ``per_step``, else the configured mode's."""

    runner: Runner
    items: torch.Tensor  # [n_items, d] on the model's device
    cfg: EvalConfig
    steps: int | None
    per_step: bool
    mode: str
    step: int | None
    result: EvalResult
    depth: DepthPlan | None = None

    def __call__(self, piece: Piece) -> None:
        sl, part, inputs, history = piece
        model, device, out = self.runner.model, self.items.device, self.result
        targets = torch.from_numpy(part.targets - 1).to(device)
        hist = torch.from_numpy(history).to(device) if self.cfg.mask_history else None
        if not self.per_step and self.depth is not None and self.depth.selector is not None:
            self._halting(self.depth, sl, part, inputs, targets, hist)
            return
        states = encode_in_blocks(model, torch.from_numpy(inputs).to(device), self.steps, self.cfg, self.runner)
        if not self.per_step:
            out.ranks[sl] = _ranks(model, model.user_vector(states, self.mode, self.step), self.items, targets, hist)
            return
        signals: dict[str, torch.Tensor] = {}
        seconds = 0.0
        if self.depth is not None:
            needs = self.depth.needs
            if needs.signals:
                ranks, signals, seconds = _step_ranks_and_signals(
                    model, states, self.items, targets, hist, needs, self.depth.top_k
                )
            else:  # fixed steps or weights read no signal: the plain per-step ranks
                ranks = [_ranks(model, states[:, k], self.items, targets, hist) for k in range(states.shape[1])]
            for k, step_ranks in enumerate(ranks):
                out.step_ranks[k, sl] = step_ranks
        else:
            for k in range(states.shape[1]):
                out.step_ranks[k, sl] = _ranks(model, states[:, k], self.items, targets, hist)
        if out.mean_ranks is not None:
            out.mean_ranks[sl] = _ranks(model, states.mean(dim=1), self.items, targets, hist)
        if self.mode == "mean":
            assert out.mean_ranks is not None
            out.ranks[sl] = out.mean_ranks[sl]
        else:
            out.ranks[sl] = out.step_ranks[-1 if self.mode == "last" else self.step or 0, sl]
        if self.depth is not None:
            self._depth(self.depth, sl, part, states, targets, hist, signals, seconds)

    def _halting(
        self,
        plan: DepthPlan,
        sl: np.ndarray,
        part: EvalSamples,
        inputs: np.ndarray,
        targets: torch.Tensor,
        hist: torch.Tensor | None,
    ) -> None:
        """Without the per-step table: the selector decides after each step which samples stop, and only the
        others get the next reasoning step (:meth:`~thinkrec.inference.runner.Runner.encode_halting`); each
        reached step is scored once, for the signals and the target's rank from the same blocks."""
        model, device, out = self.runner.model, self.items.device, self.result
        assert plan.selector is not None and out.depth is not None
        depth = out.depth
        assert depth.ranks is not None and depth.weights is not None and depth.steps_used is not None
        n_steps = out.step_ranks.shape[0]
        rows = HaltingRows(
            model, self.items, plan.selector, n_steps, part.positions, part.users, targets, hist, top_k=plan.top_k
        )
        t0 = time.perf_counter()
        x = torch.from_numpy(inputs).to(device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
            halted = self.runner.encode_halting(x, pass_rows(inputs, self.cfg), rows, self.steps)
        states = halted.states.float()
        ranks = rows.ranks.cpu().numpy()
        hard = np.all((rows.weights == 0) | (rows.weights == 1), axis=1)
        chosen = rows.weights.argmax(axis=1)
        result = ranks[chosen, np.arange(len(chosen))]
        if not hard.all():  # step weights: the weighted user vectors of every step (all steps ran for them)
            soft = np.flatnonzero(~hard)
            w = torch.from_numpy(rows.weights[soft]).to(device=device, dtype=states.dtype)
            users = (w[:, :, None] * states[torch.from_numpy(soft).to(device)]).sum(1)
            hist_soft = None if hist is None else hist[soft]
            result[soft] = _ranks(model, users, self.items, targets[soft], hist_soft)
        depth.ranks[sl], depth.weights[sl], depth.steps_used[sl] = result, rows.weights, rows.steps_used
        out.ranks[sl] = result
        depth.step_rows.append(halted.step_rows)
        depth.selector_seconds.append(time.perf_counter() - t0)

    def _depth(
        self,
        plan: DepthPlan,
        sl: np.ndarray,
        part: EvalSamples,
        states: torch.Tensor,
        targets: torch.Tensor,
        hist: torch.Tensor | None,
        signals: dict[str, torch.Tensor],
        seconds: float,
    ) -> None:
        """The selector's choice for the piece's samples and its ranks; the collected signals and states."""
        out = self.result.depth
        assert out is not None
        arrays = {name: value.double().cpu().numpy() for name, value in signals.items()}
        for name in plan.collect.signals:
            out.signals[name][sl] = arrays[name]
        if out.states is not None:
            out.states[torch.from_numpy(sl)] = states.to(out.states.device, out.states.dtype)
        if plan.selector is None:
            out.selector_seconds.append(seconds)
            return
        assert out.ranks is not None and out.weights is not None and out.steps_used is not None
        t0 = time.perf_counter()
        choice = plan.selector.choose(signal_data(arrays, states.shape[1], part.positions, part.users))
        seconds += time.perf_counter() - t0
        out.weights[sl], out.steps_used[sl] = choice.weights, choice.steps_used
        if choice.hard:  # a chosen step's ranks are that step's: nothing more to score
            out.ranks[sl] = self.result.step_ranks[choice.step, sl]
        elif self.result.mean_ranks is not None and bool(np.all(choice.weights == 1.0 / states.shape[1])):
            out.ranks[sl] = self.result.mean_ranks[sl]  # the mean of steps, scored already
        else:
            users = choice.user_vectors(states)
            out.ranks[sl] = _ranks(self.runner.model, users, self.items, targets, hist)
        out.selector_seconds.append(seconds)


@torch.no_grad()
def evaluate(
    model: SeqRecModel,
    split: Split,
    samples: EvalSamples,
    cfg: EvalConfig,
    steps: int | None = None,
    progress: bool = False,
    per_step: bool = True,
    depth: DepthPlan | None = None,
) -> EvalResult:
    """Rank every sample's target among all items, in chunks of at most ``cfg.memory_budget_mb``, on the
    model's device (row workers on the CPU only).

    With ``per_step`` (default) every reasoning step is also scored on its own (for step curves and the
    oracle analysis); without it only the configured inference mode is scored (what serving costs).
    With ``depth`` (a reasoning model) a selector also chooses each sample's steps from the label-free signals
    of its per-step scores, and its choice is ranked (``result.depth``), and/or (``per_step``) signals are
    collected for fitting a selector. With a selector and without ``per_step`` the evaluation halts: the
    selector decides after each step which samples stop, the others alone get the next reasoning step (on the
    folded runner; the plain runner computes every step), and ``result.ranks`` are the selector's ranks
    (``step_ranks`` and ``mean_ranks`` are not computed: zeros).
    """
    model.eval()
    device = model_device(model)
    if cfg.autocast == "bf16" and device.type == "cpu":
        warn_slow_bf16("eval.autocast")
    k_plus_1 = (steps if steps is not None else model.reasoning_steps) + 1
    mode, step = inference_mode(cfg, k_plus_1)
    result = EvalResult.empty(len(samples), k_plus_1, mode, step)
    if depth is not None:
        if k_plus_1 < 2:
            raise ThinkrecError("adaptive depth needs a reasoning model (K >= 1)")
        if not per_step and (depth.selector is None or depth.collect.signals or depth.keep_states):
            raise ThinkrecError("collecting signals or states for a fit needs every step's scores (per_step)")
        result.depth = _depth_output(depth, len(samples), k_plus_1, model, device)
        result.depth.halting = not per_step
        if not per_step:
            result.mode = "depth"  # the ranks are the selector's
    ranker = PieceRanker(
        runner_for(model, device), model.item_vectors(), cfg, steps, per_step, mode, step, result, depth
    )
    size = chunk_size(cfg, model.n_items)
    n_chunks = -(-len(samples) // size)
    bar = chunk_bar(progress, n_chunks)
    workers = resolve_workers(cfg.workers) if device.type == "cpu" else 1
    with row_workers(workers) as rows:
        parts = pieces_per_chunk(n_chunks, rows.workers)
        stream = pieces(history_chunks(split, samples, model.backbone.max_len, size), cfg, parts, bar.update)
        rows.waves(ranker, stream, rows.workers if parts == 1 else parts)
    bar.close()
    return result


def _depth_output(plan: DepthPlan, n: int, k_plus_1: int, model: SeqRecModel, device: torch.device) -> DepthOutput:
    """Empty arrays for what ``plan`` writes per sample (each piece fills its own samples)."""
    chooses = plan.selector is not None
    signals = {
        name: np.full((n, k_plus_1 if name in STEP_SIGNALS else k_plus_1 - 1), np.nan) for name in plan.collect.signals
    }
    states = None
    if plan.keep_states:
        states = torch.zeros(n, k_plus_1, model.backbone.hidden_size, device=device)
    return DepthOutput(
        ranks=np.zeros(n, dtype=np.int64) if chooses else None,
        weights=np.zeros((n, k_plus_1)) if chooses else None,
        steps_used=np.zeros(n, dtype=np.int64) if chooses else None,
        signals=signals,
        states=states,
    )
