"""Halting adaptive depth: a selector decides after each reasoning step which rows stop, and only the rows
still running get the next step.

:class:`HaltingRows` is the :data:`~thinkrec.inference.runner.Halt` callback of a batch of rows: at step ``k``
it scores the rows that reached it against the catalogue in cache-sized blocks, reads the signals the
selector needs of step ``k`` from each block (:class:`~thinkrec.eval.depth.SignalPass`, carrying what step
``k + 1`` compares with per row), counts the target's rank (evaluation) or keeps the top-K (serving) from the
same block, and asks the selector (its ``choose``) for the choice of those rows on the signals of steps
``0..k`` (the later ones NaN). A row whose choice needs no step after ``k`` (``steps_used <= k``) stops: its choice
is final, and the runner (:meth:`~thinkrec.inference.runner.Runner.encode_halting`) runs no further step for
it. The choices equal those the selector makes on every step's signals (a choice that needed steps ``0..k``
reads no signal after ``k``; tested), and the ranks are the same block-wise counts as the per-step
evaluation's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from thinkrec.blocking import block_scores, rows_per_block
from thinkrec.eval.depth import STEP_SIGNALS, TOP_K, Selector, SignalPass, may_halt, needs_of, signal_data
from thinkrec.eval.metrics import target_ranks
from thinkrec.models.model import SeqRecModel


def mask_items(scores: torch.Tensor, history: torch.Tensor) -> None:
    """Set each row's history items to -inf (history ids are 1-based item ids; padding, 0, is skipped)."""
    index = torch.arange(len(history), device=history.device)[:, None].expand_as(history)
    real = history > 0
    scores[index[real], history[real] - 1] = float("-inf")


@dataclass
class HaltingRows:
    """The halting choices of a selector for ``n`` rows with ``K + 1 = n_steps`` steps (a
    :data:`~thinkrec.inference.runner.Halt` callback). ``targets`` (0-based, evaluation): each reached step's
    target rank is counted from the scored blocks; ``keep`` (serving): each reached step's top-``keep`` items
    and scores are kept (after ``exclude`` masks, e.g. the history, from the results only). ``history`` masks
    the scores the signals and ranks are read from (evaluation's history masking)."""

    model: SeqRecModel
    items: torch.Tensor  # [N, d]
    selector: Selector
    n_steps: int
    lengths: np.ndarray  # int64 [n] history lengths (what the selectors read besides the signals)
    groups: np.ndarray | None = None  # [n] users
    targets: torch.Tensor | None = None  # [n] 0-based targets: count ranks
    history: torch.Tensor | None = None  # [n, W] 1-based item ids masked in the scores (signals and ranks)
    keep: int = 0  # > 0: keep each reached step's top-``keep`` (serving)
    exclude: torch.Tensor | None = None  # bool [n, N]: items dropped from the kept top-K (not from the signals)
    top_k: int = TOP_K
    # filled as the steps run
    weights: np.ndarray = field(init=False)  # float64 [n, K+1]
    steps_used: np.ndarray = field(init=False)  # int64 [n]
    decided: np.ndarray = field(init=False)  # bool [n]
    ranks: torch.Tensor = field(init=False)  # int64 [K+1, n] (steps a row did not reach: -1)
    top_ids: torch.Tensor = field(init=False)  # int64 [K+1, n, keep] 0-based
    top_scores: torch.Tensor = field(init=False)  # [K+1, n, keep]
    scored_rows: list[int] = field(init=False)  # rows scored at each step (what the steps cost in scoring)

    def __post_init__(self) -> None:
        n, k1 = len(self.lengths), self.n_steps
        device = self.items.device
        self.needs = needs_of(self.selector)
        self.halts = may_halt(self.selector)
        self.weights = np.zeros((n, k1))
        self.steps_used = np.zeros(n, dtype=np.int64)
        self.decided = np.zeros(n, dtype=bool)
        self.ranks = torch.full((k1, n), -1, dtype=torch.long, device=device)
        self.top_ids = torch.zeros((k1, n, self.keep), dtype=torch.long, device=device)
        self.top_scores = torch.zeros((k1, n, self.keep), device=device)
        self.scored_rows = []
        self.signals: dict[str, torch.Tensor] = {}
        for name in self.needs.signals:
            width = k1 if name in STEP_SIGNALS else k1 - 1
            self.signals[name] = torch.full((n, width), float("nan"), device=device)
        self._before: tuple[torch.Tensor, torch.Tensor] | None = None  # per row: scaled scores, log normaliser
        self._before_top: torch.Tensor | None = None  # per row: the top-k list
        self._last_state: torch.Tensor | None = None  # per row: the previous state (cosine)
        self._final = False  # whether the choices of the rows still running are made (no signal read later)

    @torch.no_grad()
    def __call__(self, step: int, rows: torch.Tensor, states: torch.Tensor) -> torch.Tensor | None:
        """Score step ``step`` of ``rows`` (indices into the batch, states ``[len(rows), d]``) where needed and
        return which of them stop there.

        While the selector still reads signals (steps before ``needs.steps``), every row that reached the step
        is scored (its signals, its rank or top-K) and asked about. Once it reads none (a prefix router after
        step 0, a fixed step or step weights at once), the choice of the rows still running is final: it is
        made then, and a later step is scored only for the rows that chose it (step weights: none; their
        weighted vector is scored after the last step)."""
        with torch.autocast(states.device.type, enabled=False):  # scores in float32, as the per-step path
            return self._step(step, rows, states.float())

    def _step(self, step: int, rows: torch.Tensor, states: torch.Tensor) -> torch.Tensor | None:
        k1 = self.n_steps
        index = rows.cpu().numpy()
        last = step == k1 - 1
        reads_until = self.needs.steps(k1) if self.needs.signals else 0
        if step >= reads_until:  # no signal of this step is read: the choice is (or becomes) final
            if not self._final:
                self._choose(step, rows, index, final=True)
                self._final = True
            hard = np.all((self.weights[index] == 0) | (self.weights[index] == 1), axis=1)
            here = hard & (self.weights[index, step] == 1)
            self.scored_rows.append(int(here.sum()))
            if here.any():
                at = torch.from_numpy(np.flatnonzero(here)).to(rows.device)
                self._score(step, rows[at], states[at])
            stop = np.ones(len(index), dtype=bool) if last else self.steps_used[index] <= step
            self.decided[index[stop]] = True
            return torch.from_numpy(stop).to(rows.device)
        self.scored_rows.append(len(rows))
        self._score(step, rows, states)
        if not last and not self.halts:
            return None
        stop = self._choose(step, rows, index, final=last)
        return torch.from_numpy(stop).to(rows.device)

    def _choose(self, step: int, rows: torch.Tensor, index: np.ndarray, final: bool) -> np.ndarray:
        """The selector's choice for ``rows`` on the signals so far; records it for the rows that stop at
        ``step`` (every row with ``final``) and returns which stop."""
        arrays = {name: value[rows].double().cpu().numpy() for name, value in self.signals.items()}
        groups = None if self.groups is None else self.groups[index]
        choice = self.selector.choose(signal_data(arrays, self.n_steps, self.lengths[index], groups))
        stop = choice.steps_used <= step
        keep = np.ones(len(index), dtype=bool) if final else stop
        self.weights[index[keep]], self.steps_used[index[keep]] = choice.weights[keep], choice.steps_used[keep]
        if step == self.n_steps - 1:
            stop = np.ones(len(index), dtype=bool)
        self.decided[index[stop]] = True
        return np.asarray(stop)

    def _score(self, step: int, rows: torch.Tensor, states: torch.Tensor) -> None:
        """The signals of step ``step`` and its ranks / top-K for ``rows``, block by block."""
        model, k1 = self.model, self.n_steps
        users, items = model.scorer.prepare(states, self.items)
        temperature = float(model.scorer.temperature)
        scale = 1.0 if self.keep else temperature  # the signals' temperature: serving's logits have it applied
        masked = self.history is not None
        carry_kl = "kl" in self.needs.signals and step + 1 < self.needs.steps(k1)
        carry_top = "overlap" in self.needs.signals and step + 1 < self.needs.steps(k1)
        before, before_top = self._before, self._before_top
        new_z = torch.empty(len(self.lengths), items.shape[0], device=items.device) if carry_kl else None
        new_log = torch.empty(len(self.lengths), device=items.device) if carry_kl else None
        new_top = (
            torch.empty(len(self.lengths), min(self.top_k, items.shape[0]), dtype=torch.long, device=items.device)
            if carry_top
            else None
        )
        block = rows_per_block(items.shape[0])
        for start in range(0, len(rows), block):
            at = rows[start : start + block]
            s = block_scores(users[start : start + block], items).float()
            if self.keep and temperature != 1.0:  # serving reads logits, as the model scores them
                s = s / temperature
            read = s.clone() if self.keep and masked else s  # serving: the kept top-K is not history-masked
            if self.history is not None:
                mask_items(read, self.history[at])
            signals = SignalPass(k1, len(at), s.shape[1], self.needs, self.top_k, scale, masked, s.dtype, s.device)
            if signals.step_reads(step):
                signals.step = step
                if before is not None:
                    signals.before = (before[0][at], before[1][at])
                if before_top is not None:
                    signals.before_top = before_top[at]
                signals.add(read)
                for name, value in signals.out.items():
                    column = step if name in STEP_SIGNALS else step - 1
                    if column >= 0 and name not in ("norm", "cosine"):
                        self.signals[name][at, column] = value[:, column]
                if new_z is not None and new_log is not None and signals.before is not None:
                    new_z[at], new_log[at] = signals.before
                if new_top is not None and signals.before_top is not None:
                    new_top[at] = signals.before_top
            if self.keep:
                kept = s if self.exclude is None else s.masked_fill(self.exclude[at], float("-inf"))
                top = torch.topk(kept, self.keep, dim=1)
                self.top_ids[step, at], self.top_scores[step, at] = top.indices, top.values
            if self.targets is not None:
                self.ranks[step, at] = target_ranks(read, self.targets[at], overwrite=True)
        self._before = (new_z, new_log) if new_z is not None and new_log is not None else None
        self._before_top = new_top
        self._state_signals(step, rows, states)

    def _state_signals(self, step: int, rows: torch.Tensor, states: torch.Tensor) -> None:
        """Norms and cosines of the states (the states' own signals)."""
        want, k1 = self.needs.signals, self.n_steps
        if step >= self.needs.steps(k1) or not ({"norm", "cosine"} & want):
            return
        st = states.float()
        if "norm" in want:
            self.signals["norm"][rows, step] = st.norm(dim=-1)
        if "cosine" in want:
            if step > 0 and self._last_state is not None:
                previous = self._last_state[rows]
                self.signals["cosine"][rows, step - 1] = torch.nn.functional.cosine_similarity(st, previous, dim=-1)
            if self._last_state is None:
                self._last_state = torch.zeros(len(self.lengths), st.shape[1], device=st.device)
            self._last_state[rows] = st
