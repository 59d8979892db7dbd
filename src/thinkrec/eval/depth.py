"""Adaptive reasoning depth: choose, per user and at inference, which reasoning step's user vector scores.

A reasoning model gives every user states r_0..r_K; scoring with the best step per sample (the oracle of
:mod:`thinkrec.eval.steps`) sits far above any fixed step, but the oracle reads the target. The selectors
here read only what exists at inference: the step states, the score distributions they induce over the
catalogue, and the history (its length, and how recently it grew). They map this per-step information
(:class:`StepData`) to a :class:`Choice`: step weights per user (one-hot for a chosen step, uniform for the
mean of steps) and the reasoning steps that had to run to make the choice (a halting selector that stops
at step k needs no step after k).

- :class:`Fixed`: one step for everyone, or fixed weights (the mean of steps; :func:`fit_step_weights`
  learns weights for mean-style scoring).
- :class:`Agree`: stop at the first step whose top-k agrees with the previous step's (overlap at least a
  threshold, or KL between the consecutive distributions at most one).
- :class:`EntropyStop`: stop when the score distribution's entropy stops falling.
- :class:`Router`: multinomial logistic regression on cheap signals, fit to the expected gain of each step
  on held-out labelled samples (:func:`fit_router`, cross-fitted over users).

Thresholds and router weights are chosen on validation samples only (:func:`tune`, :func:`fit_router`);
:meth:`Selector.choose` never reads :attr:`StepData.gains`, the labels a caller may attach for evaluation.
At inference :func:`choose_steps` maps a block's per-step scores, states and history lengths to a
:class:`Choice`; fitted selectors are stored as JSON (:func:`selector_to_json`).

Each selector says which signals it reads (:class:`Needs`), so evaluation and serving compute only those
(:func:`block_signals`, one implementation for the float32 inference path and the float64 analysis path).
Selectors have names in a registry (:data:`SELECTORS`: ``fixed``, ``fixed:<k>``, ``mean``, ``best-fixed``, ``weights``,
``agree``, ``agree-kl``, ``entropy``, ``router``, ``router-prefix``); :func:`parse_selector` reads a name,
:func:`register_selector` adds one. What needs fitting is fit by its registered ``fit`` on labelled
validation samples (:class:`FitData`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StepData:
    """Label-free per-step information of ``n`` samples with steps 0..K, and optionally their labels.

    Step quantities are ``[n, K+1]``; transition quantities ``[n, K]`` (column ``k - 1`` compares step ``k``
    with step ``k - 1``), so a signal of step ``k`` depends on steps ``<= k`` only.
    """

    entropy: Floats  # [n, K+1] entropy (nats) of the softmax of step k's scores over the catalogue
    margin: Floats  # [n, K+1] top-1 minus top-2 score of step k
    norm: Floats  # [n, K+1] Euclidean norm of the state r_k
    cosine: Floats  # [n, K] cosine between r_k and r_{k-1}
    overlap: Floats  # [n, K] |top-k(step k) & top-k(step k-1)| / k
    kl: Floats  # [n, K] KL(p_k || p_{k-1}) of the softmaxed scores
    history: Ints  # [n] history length (items before the target, before truncation to the model's window)
    groups: Ints  # [n] the user of each sample (cross-fitting splits users, not samples)
    # [n] seconds between the last two history items (how recently the user was active), when known
    recency: Floats | None = None
    # labels, for fitting on validation and for evaluation; selectors' ``choose`` never reads them
    gains: Floats | None = field(default=None, repr=False)  # [n, K+1] per-sample metric of each step

    @property
    def n_steps(self) -> int:
        """K + 1."""
        return int(self.entropy.shape[1])

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    def subset(self, index: Ints | npt.NDArray[np.bool_]) -> StepData:
        """The samples at ``index`` (every per-sample array, labels included)."""
        rows: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            rows[f.name] = None if value is None else value[index]
        return StepData(**rows)

    def first_steps(self, m: int) -> StepData:
        """The signals of steps 0..m-1 only (what exists after running m-1 reasoning steps)."""
        steps, moves = slice(0, m), slice(0, max(0, m - 1))
        return replace(
            self,
            entropy=self.entropy[:, steps],
            margin=self.margin[:, steps],
            norm=self.norm[:, steps],
            cosine=self.cosine[:, moves],
            overlap=self.overlap[:, moves],
            kl=self.kl[:, moves],
            gains=None if self.gains is None else self.gains[:, steps],
        )

    def with_gains(self, gains: Floats | None) -> StepData:
        return replace(self, gains=gains)

    @staticmethod
    def concat(parts: Sequence[StepData]) -> StepData:
        def cat(name: str) -> Any:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return StepData(**{f.name: cat(f.name) for f in fields(StepData)})


STEP_SIGNALS = ("entropy", "margin", "norm")  # one value per step: [n, K+1]
MOVE_SIGNALS = ("cosine", "overlap", "kl")  # one value per transition k-1 -> k: [n, K]
SIGNALS = frozenset(STEP_SIGNALS + MOVE_SIGNALS)
TOP_K = 20  # the top-k lists whose overlap :class:`Agree` and the routers read
MASKED = -1e30  # a masked item's scaled score in the signal arithmetic: finite, so 0 * it is 0, not nan


@dataclass(frozen=True)
class Needs:
    """The signals a selector reads: their names (:data:`SIGNALS`) and, with ``first``, only those of steps
    ``0..first-1`` (and of the transitions between them); the others are left NaN."""

    signals: frozenset[str] = frozenset()
    first: int | None = None

    def __post_init__(self) -> None:
        unknown = self.signals - SIGNALS
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}; signals are {sorted(SIGNALS)}")

    def __or__(self, other: Needs) -> Needs:
        if not self.signals or not other.signals:
            return other if not self.signals else self
        first = None if self.first is None or other.first is None else max(self.first, other.first)
        return Needs(self.signals | other.signals, first)

    def steps(self, n_steps: int) -> int:
        """How many leading steps' signals are computed, of ``n_steps``."""
        return n_steps if self.first is None else min(n_steps, self.first)


ALL_SIGNALS = Needs(SIGNALS)
NO_SIGNALS = Needs()


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products of ``[B, N]`` matrices, without a ``[B, N]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _underflow(dtype: torch.dtype) -> float:
    """The smallest exponent whose ``exp`` is a normal number of ``dtype`` (float32: about -87.3)."""
    return math.log(torch.finfo(dtype).tiny) + 1e-3


class SignalPass:
    """The signals ``needs`` names of one block of ``B`` samples, fed one step at a time (step 0 first) while
    that step's score block is in cache: :meth:`add` reads step ``k``'s logits ``[B, N]`` (before division by
    ``temperature``; with ``masked`` they may hold ``-inf``, masked items, which get no probability) and keeps
    only what step ``k + 1`` compares with (its scaled scores, log normaliser and top-k list), so a caller may
    overwrite the scores afterwards (the rank count does). :meth:`result` gives per-step signals ``[B, K+1]``
    and transition signals ``[B, K]`` (column ``k - 1``: step ``k`` against step ``k - 1``), in the scores'
    dtype and on their device; what ``needs`` leaves out, and steps not added, are NaN.

    One pass per step: the softmax's normaliser and ``E_p[z]`` give the entropy ``log S - E_p[z]`` and, with
    the previous step's scaled scores, ``KL(p_k || p_{k-1})``; one ``topk`` gives the margin and the top-k
    list. The exponent is clamped at the dtype's underflow (``exp`` of a number below it, a subnormal, takes a
    slow path in the vector ``exp``: 14x slower on ML-100K's sharp distributions at T = 0.07); the clamped
    terms are below ``1.2e-38`` where the largest term is 1, far under float32's resolution of the sums."""

    def __init__(
        self,
        n_steps: int,
        rows: int,
        n_items: int,
        needs: Needs = ALL_SIGNALS,
        top_k: int = TOP_K,
        temperature: float = 1.0,
        masked: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.want = needs.signals
        self.last = needs.steps(n_steps)
        self.out: dict[str, torch.Tensor] = {}
        for name in self.want:
            width = n_steps if name in STEP_SIGNALS else n_steps - 1
            self.out[name] = torch.full((rows, width), math.nan, dtype=dtype, device=device)
        self.inv_t = 1.0 / temperature
        self.masked = masked
        self.spread = "entropy" in self.want or "kl" in self.want
        self.k = min(top_k, n_items)
        margin = min(2, n_items) if "margin" in self.want else 0
        self.n_top = max(self.k if "overlap" in self.want else 0, margin)
        self.floor = _underflow(dtype)
        self.before: tuple[torch.Tensor, torch.Tensor] | None = None  # previous step's scaled scores, log S
        self.before_top: torch.Tensor | None = None
        self.step = 0

    @property
    def reads(self) -> bool:
        """Whether the next step's scores are read (a signal of it is wanted)."""
        return self.step_reads(self.step)

    def step_reads(self, step: int) -> bool:
        """Whether step ``step``'s scores are read (a signal of it is wanted)."""
        return step < self.last and (self.spread or self.n_top > 0)

    def add(self, s: torch.Tensor) -> None:
        """Read the next step's logits ``s [B, N]``."""
        step, want, inv_t = self.step, self.want, self.inv_t
        self.step += 1
        if step >= self.last:
            return
        out = self.out
        if self.spread:
            top1 = s.amax(dim=1, keepdim=True)
            z = torch.add(top1 * -inv_t, s, alpha=inv_t)  # (s - max) / T: the largest is 0, exp cannot overflow
            if self.masked:
                z.clamp_(min=MASKED)
            e = z.clamp(min=self.floor).exp_()
            if self.masked:  # a masked item has no probability (its clamped term would be 1e-38 * -1e30)
                e.masked_fill_(z == MASKED, 0.0)
            total = e.sum(dim=1)
            log_total = total.log()
            mean_z = _row_dot(e, z) / total  # E_p[z]
            if "entropy" in want:
                out["entropy"][:, step] = log_total - mean_z
            if "kl" in want and self.before is not None:
                z_before, log_before = self.before
                kl = mean_z - _row_dot(e, z_before) / total - log_total + log_before
                out["kl"][:, step - 1] = kl.clamp_min(0)
            self.before = (z, log_total) if "kl" in want else None
        if self.n_top:
            top = s.topk(self.n_top, dim=1)  # sorted, best first
            if "margin" in want:
                out["margin"][:, step] = (top.values[:, 0] - top.values[:, min(1, self.n_top - 1)]) * inv_t
            if "overlap" in want:
                now = top.indices[:, : self.k]
                if self.before_top is not None:
                    shared = (now[:, :, None] == self.before_top[:, None, :]).any(dim=2).sum(dim=1)
                    out["overlap"][:, step - 1] = shared.to(out["overlap"].dtype) / self.k
                self.before_top = now

    def result(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """The signals, with the state signals (norms, cosines) of ``states [B, >= steps added, d]``."""
        out, want = self.out, self.want
        last = min(self.last, self.step, states.shape[1])
        if "norm" in want or "cosine" in want:
            st = states[:, :last].to(next(iter(out.values())).dtype)
            if "norm" in want:
                out["norm"][:, :last] = st.norm(dim=-1)
            if "cosine" in want and last > 1:
                out["cosine"][:, : last - 1] = torch.nn.functional.cosine_similarity(st[:, 1:], st[:, :-1], dim=-1)
        return out


@torch.no_grad()
def block_signals(
    scores: Sequence[torch.Tensor],
    states: torch.Tensor,
    needs: Needs = ALL_SIGNALS,
    top_k: int = TOP_K,
    temperature: float = 1.0,
    masked: bool = False,
) -> dict[str, torch.Tensor]:
    """The signals ``needs`` names of one block of ``B`` samples (:class:`SignalPass` over every step):
    ``scores`` holds each step's logits ``[B, N]`` (step 0 first) before division by ``temperature``,
    ``states`` the states ``[B, K+1, d]``."""
    b, n_items = scores[0].shape
    signals = SignalPass(len(scores), b, n_items, needs, top_k, temperature, masked, scores[0].dtype, scores[0].device)
    for s in scores:
        if not signals.reads:
            break
        signals.add(s)
    signals.step = len(scores)
    return signals.result(states)


def signal_data(
    signals: Mapping[str, npt.ArrayLike],
    n_steps: int,
    history: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    recency: npt.ArrayLike | None = None,
) -> StepData:
    """:class:`StepData` of ``n`` samples from the signals :func:`block_signals` gave (as arrays), ``K + 1 =
    n_steps``; signals not given are NaN (a selector that does not read them never sees them)."""
    hist = np.asarray(history, dtype=np.int64)
    n = len(hist)
    values: dict[str, Floats] = {}
    for name in SIGNALS:
        width = n_steps if name in STEP_SIGNALS else n_steps - 1
        given = signals.get(name)
        values[name] = np.full((n, width), np.nan) if given is None else np.asarray(given, dtype=np.float64)
    users = np.arange(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    return StepData(
        **values,
        history=hist,
        groups=users,
        recency=None if recency is None else np.asarray(recency, dtype=np.float64),
    )


@torch.no_grad()
def step_data(
    scores: torch.Tensor,
    states: torch.Tensor,
    history: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    top_k: int = TOP_K,
    recency: npt.ArrayLike | None = None,
    needs: Needs = ALL_SIGNALS,
) -> StepData:
    """The signals of one block of samples in float64: ``scores [B, K+1, N]`` (each step's logits over the
    catalogue, as the model scores them: temperature applied, masked items ``-inf``), ``states [B, K+1, d]``,
    history lengths ``[B]``, the samples' users (default: every sample its own user) and, when known, the
    seconds between each history's last two items ``[B]``. The tensors may be on any device; the signals come
    back on the CPU."""
    s = scores.double()
    found = block_signals([s[:, k] for k in range(s.shape[1])], states.double(), needs, top_k, masked=True)
    arrays = {name: value.cpu().numpy() for name, value in found.items()}
    return signal_data(arrays, s.shape[1], history, groups, recency)


@dataclass(frozen=True)
class Choice:
    """What a selector chose for each of ``n`` samples."""

    weights: Floats  # [n, K+1] step weights of the user vector sum_k w_k r_k (one-hot: a chosen step)
    steps_used: Ints  # [n] reasoning steps that had to run (0..K): what the choice cost

    @property
    def hard(self) -> bool:
        """Whether every sample uses exactly one step."""
        return bool(np.all((self.weights == 0) | (self.weights == 1)) and np.all(self.weights.sum(1) == 1))

    @property
    def step(self) -> Ints:
        """The chosen step of each sample (hard choices only)."""
        if not self.hard:
            raise ValueError("a weighted choice has no single step per sample")
        return np.asarray(self.weights.argmax(1), dtype=np.int64)

    @staticmethod
    def of_steps(step: npt.ArrayLike, n_steps: int, steps_used: npt.ArrayLike | None = None) -> Choice:
        chosen = np.asarray(step, dtype=np.int64)
        weights = np.zeros((len(chosen), n_steps))
        weights[np.arange(len(chosen)), chosen] = 1.0
        used = chosen if steps_used is None else np.asarray(steps_used, dtype=np.int64)
        return Choice(weights, used.copy())

    def gains(self, data: StepData) -> Floats:
        """Per-sample metric of a hard choice, from the labelled ``data``'s per-step gains (evaluation)."""
        if data.gains is None:
            raise ValueError("these samples carry no gains (labels)")
        return np.asarray(data.gains[np.arange(len(data)), self.step], dtype=np.float64)

    def user_vectors(self, states: torch.Tensor) -> torch.Tensor:
        """The chosen user vectors ``[B, d]`` of states ``[B, K+1, d]``."""
        w = torch.from_numpy(self.weights).to(device=states.device, dtype=states.dtype)
        return (w[:, :, None] * states).sum(1)


class Selector(Protocol):
    """Chooses steps from label-free signals; never reads ``data.gains``. A selector may also say which
    signals it reads (a ``needs`` attribute, :class:`Needs`); without one it is given every signal
    (:func:`needs_of`)."""

    @property
    def name(self) -> str: ...

    def choose(self, data: StepData) -> Choice: ...


def needs_of(selector: Selector) -> Needs:
    """The signals ``selector`` reads: its ``needs``, else all of them."""
    needs = getattr(selector, "needs", None)
    return needs if isinstance(needs, Needs) else ALL_SIGNALS


def may_halt(selector: Selector) -> bool:
    """Whether ``selector`` may choose, for some sample, a step that needs fewer than all K reasoning steps
    (``steps_used < K``): halting rules, a prefix router, a fixed early step. A router over every step's
    signals and step weights need all of them. A selector not known here is asked after every step."""
    if isinstance(selector, Router):
        return selector.which == "prefix"
    if isinstance(selector, Fixed):
        return selector.weights is None
    return True


@dataclass(frozen=True)
class Fixed:
    """The same step for everyone (``step``), or the same weights (``weights``; uniform = the mean of steps)."""

    step: int | None = None
    weights: tuple[float, ...] | None = None
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return (
            f"fixed r_{self.step}" if self.weights is None else "weights " + ",".join(f"{w:.2f}" for w in self.weights)
        )

    @property
    def needs(self) -> Needs:
        return NO_SIGNALS

    def choose(self, data: StepData) -> Choice:
        n, k1 = len(data), data.n_steps
        if self.weights is None:
            if self.step is None or not 0 <= self.step < k1:
                raise ValueError(f"step must be in 0..{k1 - 1}")
            return Choice.of_steps(np.full(n, self.step), k1)
        if len(self.weights) != k1:
            raise ValueError(f"{len(self.weights)} weights for {k1} steps")
        return Choice(np.tile(np.asarray(self.weights, dtype=np.float64), (n, 1)), np.full(n, k1 - 1, dtype=np.int64))


def mean_of_steps(n_steps: int) -> Fixed:
    return Fixed(weights=(1.0 / n_steps,) * n_steps, label="mean of steps")


def _first(stop: npt.NDArray[np.bool_], default: int) -> Ints:
    """Per row, the first column where ``stop`` holds, else ``default``."""
    any_stop = stop.any(axis=1)
    return np.where(any_stop, stop.argmax(axis=1), default).astype(np.int64)


@dataclass(frozen=True)
class Agree:
    """Halting by agreement: run steps 1, 2, ... and stop at the first step k whose top-k list overlaps step
    k-1's by at least ``threshold`` (``signal='overlap'``) or whose distribution is within ``threshold`` KL of
    step k-1's (``signal='kl'``); score with step k (``use='current'``) or with step k-1 (``'previous'``:
    the two agree, so the earlier, cheaper-to-trust step). Without agreement every step has run and
    ``fallback`` scores (default: step K)."""

    threshold: float
    signal: Literal["overlap", "kl"] = "overlap"
    use: Literal["current", "previous"] = "current"
    fallback: int | None = None

    @property
    def name(self) -> str:
        op = ">=" if self.signal == "overlap" else "<="
        tail = "" if self.fallback is None else f", else r_{self.fallback}"
        return f"agree {self.signal} {op} {self.threshold:.3g} ({self.use}{tail})"

    @property
    def needs(self) -> Needs:
        return Needs(frozenset({self.signal}))

    def choose(self, data: StepData) -> Choice:
        k1 = data.n_steps
        stop = data.overlap >= self.threshold if self.signal == "overlap" else data.kl <= self.threshold
        stopped = stop.any(axis=1)
        at = np.minimum(_first(stop, k1 - 1) + 1, k1 - 1)  # column j compares step j+1 with step j
        fallback = k1 - 1 if self.fallback is None else self.fallback
        chosen = np.where(stopped, at - 1 if self.use == "previous" else at, fallback)
        return Choice.of_steps(chosen, k1, steps_used=at)


@dataclass(frozen=True)
class EntropyStop:
    """Halting by entropy: run steps while the score distribution's entropy keeps falling by more than
    ``tolerance`` nats; at the first step where it does not, stop and score with the step before it (the
    sharpest so far). Without such a step: step K. A negative tolerance lets a rise smaller than
    ``-tolerance`` count as falling."""

    tolerance: float = 0.0

    @property
    def name(self) -> str:
        return f"entropy stops falling (tol {self.tolerance:.3g})"

    @property
    def needs(self) -> Needs:
        return Needs(frozenset({"entropy"}))

    def choose(self, data: StepData) -> Choice:
        k1 = data.n_steps
        falling = data.entropy[:, 1:] < data.entropy[:, :-1] - self.tolerance  # [n, K]
        first_not = _first(~falling, k1 - 1)  # column j: step j+1 did not fall below step j
        stopped = (~falling).any(axis=1)
        chosen = np.where(stopped, first_not, k1 - 1)
        used = np.where(stopped, first_not + 1, k1 - 1)
        return Choice.of_steps(chosen, k1, steps_used=used)


Features = Literal["all", "prefix"]


def features(data: StepData, which: Features = "all") -> Floats:
    """Router inputs ``[n, F]``: every step's entropy, top-1 margin and log state norm, every transition's
    cosine, top-k overlap and log KL, the log history length and, when known, the log recency.
    ``'prefix'``: step 0 and the history only (a router that decides before any reasoning step runs)."""
    cols: list[Floats] = [np.log1p(data.history.astype(np.float64))[:, None]]
    if data.recency is not None:
        cols.append(np.log1p(np.maximum(data.recency, 0.0))[:, None])
    last = 1 if which == "prefix" else data.n_steps
    cols += [data.entropy[:, :last], data.margin[:, :last], np.log(data.norm[:, :last] + 1e-12)]
    if which == "all":
        cols += [data.cosine, data.overlap, np.log(data.kl + 1e-9)]
    return np.concatenate(cols, axis=1)


@dataclass(frozen=True)
class _Logistic:
    """Multinomial logistic regression on standardised features."""

    mean: Floats
    scale: Floats
    weight: Floats  # [F, K+1]
    bias: Floats  # [K+1]

    def probabilities(self, x: Floats) -> Floats:
        if x.shape[1] != len(self.mean):
            raise ValueError(f"{x.shape[1]} features, fitted on {len(self.mean)} (recency given to one, not both?)")
        z = ((x - self.mean) / self.scale) @ self.weight + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def _fit_logistic(x: Floats, gains: Floats, l2: float, iterations: int) -> _Logistic:
    """Weights maximising the expected per-sample gain ``sum_k p_k(x) g_k`` minus ``l2 * |W|^2``."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-9
    xs = torch.from_numpy((x - mean) / scale)
    g = torch.from_numpy(gains - gains.mean(axis=1, keepdims=True))  # a shift per sample changes no choice
    g = g / (g.abs().mean() + 1e-12)  # the l2 strength then means the same on any metric's scale
    w = torch.zeros(x.shape[1], gains.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(gains.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        p = torch.softmax(xs @ w + b, dim=1)
        loss = -(p * g).sum(1).mean() + l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return _Logistic(mean, scale, w.detach().numpy().copy(), b.detach().numpy().copy())


@dataclass(frozen=True)
class Router:
    """A learned router: multinomial logistic regression over steps (one or more fitted models, whose
    probabilities are averaged). It leaves ``default`` only for a step whose probability exceeds the
    default's by at least ``threshold``. Cost: with ``'all'`` features every step runs (K); with
    ``'prefix'`` features the choice is made before reasoning, so the chosen step is the cost."""

    models: tuple[_Logistic, ...]
    default: int
    threshold: float
    which: Features = "all"

    @property
    def name(self) -> str:
        return f"router ({self.which} signals, margin {self.threshold:.3g}, default r_{self.default})"

    @property
    def needs(self) -> Needs:
        """What :func:`features` reads (the history length comes with every sample)."""
        return ALL_SIGNALS if self.which == "all" else Needs(frozenset(STEP_SIGNALS), first=1)

    def probabilities(self, data: StepData) -> Floats:
        x = features(data, self.which)
        return np.asarray(np.mean([m.probabilities(x) for m in self.models], axis=0), dtype=np.float64)

    @property
    def n_steps(self) -> int:
        """K + 1 of the steps it chooses among (a prefix router reads step 0 only, so its input may hold no
        other step)."""
        return int(self.models[0].weight.shape[1])

    def choose(self, data: StepData) -> Choice:
        if self.which == "all" and data.n_steps != self.n_steps:
            raise ValueError(f"this router reads all {self.n_steps} steps; the samples have {data.n_steps}")
        p = self.probabilities(data)
        best = p.argmax(axis=1)
        lead = p[np.arange(len(p)), best] - p[:, self.default]
        chosen = np.where(lead >= self.threshold, best, self.default)
        used = chosen if self.which == "prefix" else np.full(len(p), self.n_steps - 1)
        return Choice.of_steps(chosen, self.n_steps, steps_used=used)


def _labelled(data: StepData) -> Floats:
    if data.gains is None:
        raise ValueError("fitting needs labelled samples (StepData.gains): validation, never test")
    return data.gains


def best_fixed_step(data: StepData) -> int:
    """The step with the highest mean gain on labelled ``data`` (ties: the earliest, the cheapest)."""
    return int(np.argmax(_labelled(data).mean(axis=0)))


def user_halves(groups: Ints, seed: int = 0) -> npt.NDArray[np.bool_]:
    """A mask of the samples whose user falls in a random half of the users (cross-fitting folds)."""
    users = np.unique(groups)
    rng = np.random.default_rng(seed)
    first = rng.permutation(users)[: len(users) // 2]
    return np.asarray(np.isin(groups, first))


def tune(
    candidates: Sequence[Selector], data: StepData, cost_weight: float = 0.0
) -> tuple[Selector, list[tuple[str, float, float]]]:
    """The candidate with the highest mean gain on labelled ``data`` (minus ``cost_weight`` per mean step
    used; ties: fewer steps, then the earlier candidate), and every candidate's ``(name, gain, mean steps)``."""
    table: list[tuple[str, float, float]] = []
    keys: list[tuple[float, float, int]] = []
    for i, selector in enumerate(candidates):
        choice = selector.choose(data.with_gains(None))  # a selector gets no labels, even while tuning
        gain = float(choice.gains(data).mean())
        steps = float(choice.steps_used.mean())
        table.append((selector.name, gain, steps))
        keys.append((gain - cost_weight * steps, -steps, -i))
    if not keys:
        raise ValueError("no candidates to tune")
    return candidates[-max(keys)[2]], table


def cross_tune(candidates: Sequence[Selector], data: StepData, seed: int = 0) -> Choice:
    """Out-of-fold choices of :func:`tune` on labelled ``data``: each half of the users is chosen for by the
    candidate tuned on the other half (an honest validation estimate of a tuned selector)."""
    first = user_halves(data.groups, seed)
    weights = np.zeros((len(data), data.n_steps))
    used = np.zeros(len(data), dtype=np.int64)
    for tune_mask in (first, ~first):
        chosen, _ = tune(candidates, data.subset(tune_mask))
        choice = chosen.choose(data.subset(~tune_mask).with_gains(None))
        weights[~tune_mask], used[~tune_mask] = choice.weights, choice.steps_used
    return Choice(weights, used)


def overlap_candidates(n_steps: int) -> list[Selector]:
    """Top-k agreement rules: thresholds 0.05..1.0, scoring with the current or previous step, every fallback."""
    uses: tuple[Literal["current", "previous"], ...] = ("current", "previous")
    return [
        Agree(float(t), "overlap", use, f) for t in np.linspace(0.05, 1.0, 20) for use in uses for f in range(n_steps)
    ]


def kl_candidates(data: StepData) -> list[Selector]:
    """KL agreement rules: thresholds at the 5%..95% quantiles of the samples' KL values (signals, not labels)."""
    kl = np.quantile(data.kl, np.linspace(0.05, 0.95, 19)) if data.kl.size else np.zeros(0)
    uses: tuple[Literal["current", "previous"], ...] = ("current", "previous")
    return [Agree(float(t), "kl", use, f) for t in kl for use in uses for f in range(data.n_steps)]


def entropy_candidates(data: StepData) -> list[Selector]:
    """Entropy halting rules: tolerance 0 and the 5%..95% quantiles of the samples' entropy drops."""
    drops = data.entropy[:, :-1] - data.entropy[:, 1:]
    tol = np.quantile(drops, np.linspace(0.05, 0.95, 19)) if drops.size else np.zeros(0)
    return [EntropyStop(float(t)) for t in sorted({0.0, *tol.tolist()})]


def halting_candidates(data: StepData) -> dict[str, list[Selector]]:
    """Threshold grids of the training-free selectors, with every fallback step (read from the signals'
    ranges, not the labels)."""
    return {
        "agree (top-k overlap)": overlap_candidates(data.n_steps),
        "agree (KL)": kl_candidates(data),
        "entropy": entropy_candidates(data),
    }


def simplex_grid(n_steps: int, resolution: int = 10) -> list[tuple[float, ...]]:
    """Every step-weight vector whose weights are multiples of ``1 / resolution`` (candidates for choosing
    mean-style weights on a validation metric directly)."""

    def parts(total: int, slots: int) -> list[tuple[int, ...]]:
        if slots == 1:
            return [(total,)]
        return [(first, *rest) for first in range(total + 1) for rest in parts(total - first, slots - 1)]

    return [tuple(c / resolution for c in combo) for combo in parts(resolution, n_steps)]


ROUTER_MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.01)  # 1.01: never leave the default


@dataclass(frozen=True)
class RouterFit:
    """A cross-fitted router: the selector for new samples, and its out-of-fold choices on validation."""

    router: Router
    held_out: Choice  # validation samples, each chosen by the fold model not fit on its user
    margins: tuple[float, float]


def fit_router(
    valid: StepData,
    which: Features = "all",
    l2: float = 1e-3,
    iterations: int = 100,
    seed: int = 0,
) -> RouterFit:
    """Fit a router on labelled validation samples with cross-fitting over users: the model of one half of
    the users is fit there and its margin chosen on the other half, and vice versa; the final router
    averages both models' probabilities, with the mean margin and the validation's best fixed step as the
    default."""
    gains = _labelled(valid)
    first = user_halves(valid.groups, seed)
    models: list[_Logistic] = []
    margins: list[float] = []
    held = np.zeros(len(valid), dtype=np.int64)
    for fit_mask in (first, ~first):
        fit_part, other = valid.subset(fit_mask), valid.subset(~fit_mask)
        model = _fit_logistic(features(fit_part, which), gains[fit_mask], l2, iterations)
        default = best_fixed_step(fit_part)
        chosen, _ = tune([Router((model,), default, m, which) for m in ROUTER_MARGINS], other)
        assert isinstance(chosen, Router)
        models.append(model)
        margins.append(chosen.threshold)
        held[~fit_mask] = chosen.choose(other.with_gains(None)).step
    router = Router(tuple(models), best_fixed_step(valid), float(np.mean(margins)), which)
    used = held if which == "prefix" else np.full(len(valid), valid.n_steps - 1)
    return RouterFit(router, Choice.of_steps(held, valid.n_steps, used), (margins[0], margins[1]))


def fit_step_weights(
    states: torch.Tensor,
    targets: torch.Tensor,
    score: Callable[[torch.Tensor], torch.Tensor],
    iterations: int = 50,
) -> tuple[float, ...]:
    """Step weights ``softmax(a)`` for mean-style scoring (user vector ``sum_k w_k r_k``), fit by the
    cross-entropy of labelled (validation) samples' targets: ``states [n, K+1, d]``, 0-based ``targets [n]``,
    ``score`` mapping user vectors ``[B, d]`` to logits ``[B, N]``. Starts at the plain mean."""
    a = torch.zeros(states.shape[1], dtype=torch.float64, requires_grad=True)
    st = states.detach()
    opt = torch.optim.LBFGS([a], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        users = (torch.softmax(a, 0).to(st.dtype)[None, :, None] * st).sum(1)
        loss = torch.nn.functional.cross_entropy(score(users).double(), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return tuple(float(w) for w in torch.softmax(a.detach(), 0))


def oracle_gap_closed(selector: float, best_fixed: float, oracle: float) -> float:
    """Share of the gap between the best fixed choice and the oracle that a selector closes."""
    gap = oracle - best_fixed
    return (selector - best_fixed) / gap if gap > 0 else math.nan


def steps_histogram(choice: Choice, n_steps: int) -> list[float]:
    """Share of samples that ran 0..K reasoning steps."""
    counts = np.bincount(choice.steps_used, minlength=n_steps)[:n_steps]
    return [float(c) / max(1, len(choice.steps_used)) for c in counts]


def choose_steps(
    selector: Selector, scores: torch.Tensor, states: torch.Tensor, history: npt.ArrayLike, top_k: int = 20
) -> Choice:
    """What inference calls: the selector's choice for a block of users from their per-step ``scores
    [B, K+1, N]``, ``states [B, K+1, d]`` and history lengths ``[B]`` (a prefix router needs step 0 only:
    ``[B, 1, N]`` and ``[B, 1, d]``). ``choice.user_vectors(states)`` then gives the vectors to rank with
    once the chosen steps have run."""
    return selector.choose(step_data(scores, states, history, top_k=top_k, needs=needs_of(selector)))


def selector_to_json(selector: Selector) -> dict[str, object]:
    """A fitted selector as plain JSON-able data (:func:`selector_from_json` reads it back)."""
    if isinstance(selector, Fixed):
        return {"kind": "fixed", "step": selector.step, "weights": selector.weights, "label": selector.label}
    if isinstance(selector, Agree):
        return {
            "kind": "agree",
            "threshold": selector.threshold,
            "signal": selector.signal,
            "use": selector.use,
            "fallback": selector.fallback,
        }
    if isinstance(selector, EntropyStop):
        return {"kind": "entropy", "tolerance": selector.tolerance}
    if isinstance(selector, Router):
        models = [
            {"mean": m.mean.tolist(), "scale": m.scale.tolist(), "weight": m.weight.tolist(), "bias": m.bias.tolist()}
            for m in selector.models
        ]
        return {
            "kind": "router",
            "models": models,
            "default": selector.default,
            "threshold": selector.threshold,
            "which": selector.which,
        }
    raise TypeError(f"cannot serialise {type(selector).__name__}")


def selector_from_json(data: dict[str, Any]) -> Selector:
    kind = data["kind"]
    if kind == "fixed":
        weights = data["weights"]
        return Fixed(data["step"], None if weights is None else tuple(weights), data.get("label", ""))
    if kind == "agree":
        return Agree(float(data["threshold"]), data["signal"], data["use"], data["fallback"])
    if kind == "entropy":
        return EntropyStop(float(data["tolerance"]))
    if kind == "router":
        models = tuple(
            _Logistic(*(np.asarray(m[key], dtype=np.float64) for key in ("mean", "scale", "weight", "bias")))
            for m in data["models"]
        )
        return Router(models, int(data["default"]), float(data["threshold"]), data["which"])
    raise ValueError(f"unknown selector kind {kind!r}")


# --- named selectors: the registry behind eval.depth and --depth ---------------------------------------------


@dataclass(frozen=True)
class FitData:
    """Labelled validation samples to fit a selector on (never test samples)."""

    data: StepData  # the samples' signals, with gains: the per-sample metric of every step
    states: torch.Tensor  # [n, K+1, d] (only for fits that read states: ``SelectorKind.fit_states``)
    targets: torch.Tensor  # [n] 0-based target items (idem)
    score: Callable[[torch.Tensor], torch.Tensor]  # user vectors [B, d] -> logits [B, N], differentiable
    mean_gains: Floats | None = None  # [n] the per-sample metric of the mean of steps, scored as the steps were


@dataclass(frozen=True)
class SelectorKind:
    """A named selector: built from K + 1 (and the name's argument) without fitting, or fit on validation."""

    name: str
    summary: str
    build: Callable[[int, int | None], Selector] | None = None  # (K + 1, argument) -> selector
    fit: Callable[[FitData], Selector] | None = None
    fit_needs: Needs = NO_SIGNALS  # the validation signals the fit reads
    fit_states: bool = False  # whether the fit reads validation states and targets
    argument: str | None = None  # the name takes ``:<argument>`` (``fixed:1``)

    @property
    def fitted(self) -> bool:
        return self.fit is not None

    def usage(self) -> str:
        return self.name if self.argument is None else f"{self.name}[:{self.argument}]"


def _fixed(n_steps: int, step: int | None) -> Selector:
    chosen = n_steps - 1 if step is None else step
    if not 0 <= chosen < n_steps:
        raise ValueError(f"fixed:{chosen}: the step must be in 0..{n_steps - 1} (K = {n_steps - 1})")
    return Fixed(chosen)


def _tuned(candidates: Callable[[StepData], list[Selector]]) -> Callable[[FitData], Selector]:
    """A fit that tunes a halting family's threshold, scoring step and fallback on the validation gains."""

    def fit(given: FitData) -> Selector:
        return tune(candidates(given.data.with_gains(None)), given.data)[0]

    return fit


def _fit_weights(given: FitData) -> Selector:
    weights = fit_step_weights(given.states, given.targets, given.score)
    return Fixed(weights=weights, label="learned step weights " + ",".join(f"{w:.2f}" for w in weights))


def fit_best_fixed(given: FitData) -> Selector:
    """The fixed read-out with the highest mean validation gain among every step alone and the mean of steps
    (ties: a single step before the mean, an earlier step before a later one: the cheaper choice)."""
    gains = _labelled(given.data)
    n_steps = given.data.n_steps
    if given.mean_gains is not None and len(given.mean_gains) != len(gains):
        raise ValueError(f"{len(given.mean_gains)} mean-of-steps gains for {len(gains)} samples")
    step = best_fixed_step(given.data) if len(gains) else 0
    chosen = Fixed(step)
    mean = given.mean_gains
    if mean is not None and n_steps > 1 and len(gains) and float(mean.mean()) > float(gains[:, step].mean()):
        chosen = mean_of_steps(n_steps)
    return Fixed(step=chosen.step, weights=chosen.weights, label=f"best fixed on validation: {chosen.name}")


def _router(which: Features) -> Callable[[FitData], Selector]:
    def fit(given: FitData) -> Selector:
        return fit_router(given.data, which).router

    return fit


SELECTORS: dict[str, SelectorKind] = {}


def register_selector(kind: SelectorKind, *, replace: bool = False) -> None:
    """Add a named selector (then valid in ``eval.depth``, ``--depth`` and the HTTP ``depth`` field)."""
    if not kind.name or any(c in kind.name for c in ":/ ") or kind.name == "none":
        raise ValueError(f"selector name {kind.name!r}: a plain word (no ':', '/' or spaces; not 'none')")
    if (kind.build is None) == (kind.fit is None):
        raise ValueError(f"selector {kind.name!r}: give exactly one of build (no fit) or fit")
    if kind.name in SELECTORS and not replace:
        raise ValueError(f"a selector named {kind.name!r} is registered already (pass replace=True to replace it)")
    SELECTORS[kind.name] = kind


for _kind in (
    SelectorKind("fixed", "one step for every user: r_K, or r_k with fixed:k", build=_fixed, argument="k"),
    SelectorKind("mean", "the mean of the step states r_0..r_K", build=lambda n, _: mean_of_steps(n)),
    SelectorKind(
        "best-fixed",
        "the one read-out (a step r_k alone, or the mean of steps) with the best validation metric",
        fit=fit_best_fixed,
    ),
    SelectorKind("weights", "step weights fit by cross-entropy on validation", fit=_fit_weights, fit_states=True),
    SelectorKind(
        "agree",
        "stop when consecutive steps' top-20 lists agree (threshold tuned on validation)",
        fit=_tuned(lambda data: overlap_candidates(data.n_steps)),
        fit_needs=Needs(frozenset({"overlap"})),
    ),
    SelectorKind(
        "agree-kl",
        "stop when consecutive steps' distributions are within a KL threshold (tuned on validation)",
        fit=_tuned(kl_candidates),
        fit_needs=Needs(frozenset({"kl"})),
    ),
    SelectorKind(
        "entropy",
        "stop when the score distribution's entropy stops falling (tolerance tuned on validation)",
        fit=_tuned(entropy_candidates),
        fit_needs=Needs(frozenset({"entropy"})),
    ),
    SelectorKind(
        "router",
        "logistic regression over steps on every step's signals, cross-fitted on validation users",
        fit=_router("all"),
        fit_needs=ALL_SIGNALS,
    ),
    SelectorKind(
        "router-prefix",
        "logistic regression over steps on step 0's signals and the history length: decides before reasoning",
        fit=_router("prefix"),
        fit_needs=Needs(frozenset(STEP_SIGNALS), first=1),
    ),
):
    register_selector(_kind)


def selector_names() -> list[str]:
    """The valid depth names, as a user writes them (``fixed[:k]``)."""
    return [kind.usage() for kind in SELECTORS.values()]


def parse_selector(name: str) -> tuple[SelectorKind, int | None]:
    """The registered kind and argument of a depth name (``router``, ``fixed:1``); a ``ValueError`` naming
    the valid ones otherwise."""
    base, colon, argument = name.strip().partition(":")
    kind = SELECTORS.get(base)
    valid = ", ".join(selector_names())
    if kind is None:
        raise ValueError(f"unknown depth selector {name!r}; choose one of: {valid}")
    if not colon:
        return kind, None
    if kind.argument is None:
        raise ValueError(f"depth selector {base!r} takes no argument (got {name!r}); choose one of: {valid}")
    if not argument.isdigit():
        raise ValueError(f"depth selector {name!r}: {kind.argument} must be a whole number >= 0, e.g. {base}:1")
    return kind, int(argument)


def build_selector(name: str, n_steps: int) -> Selector:
    """The selector a name that needs no fit stands for, for ``K + 1 = n_steps`` steps."""
    kind, argument = parse_selector(name)
    if kind.build is None:
        raise ValueError(f"depth selector {kind.name!r} is fit on validation samples; it cannot be built alone")
    return kind.build(n_steps, argument)
