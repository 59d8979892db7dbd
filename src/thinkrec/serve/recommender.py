"""A trained run, loaded once, answering top-K queries for batches of histories.

:class:`Recommender` holds the model, the item vocabulary (external id <-> internal id 1..N) and titles. Its
work per call is bounded: ``k`` is capped at :data:`MAX_K`, each history is cut to the model's ``max_len``
most recent items for encoding, reasoning steps are capped at the model's maximum, and the score matrix of
one forward pass is kept under a memory budget by splitting large batches.

Histories of one pass are **left-padded** with 0 to the longest row and use the same position ids as
training (:func:`~thinkrec.data.batches.position_ids`), so a batch gives the same scores as one history at a
time. Torch inference is serialised by a lock (one forward pass at a time), so one ``Recommender`` may be
shared by threads (e.g. the HTTP server's thread pool).

Adaptive depth (:mod:`thinkrec.eval.depth`): with a depth selector (the run's ``eval.depth``,
:meth:`Recommender.set_depth`, or a request's ``depth``) each history's user vector is the step (or step
weights) the selector chooses from the label-free signals of that history's per-step scores, computed as
the run's evaluation computes them (history masking as ``eval.mask_history``); the top-K is then that
step's, from the same scores. Selectors that need fitting are fit on the run's validation samples once and
saved in its run directory (:func:`thinkrec.runs.run_selector`); a request never starts a fit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow.parquet as pq
import torch

from thinkrec.blocking import block_scores
from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import position_ids
from thinkrec.errors import ThinkrecError
from thinkrec.eval.adaptive import FittedSelector
from thinkrec.eval.depth import TOP_K, Choice, block_signals, needs_of, parse_selector, signal_data
from thinkrec.eval.halting import HaltingRows, mask_items
from thinkrec.inference.runner import model_device, runner_for
from thinkrec.models.model import SeqRecModel
from thinkrec.serve.ann import AnnIndex

if TYPE_CHECKING:
    from thinkrec.data.dataset import SequenceDataset
    from thinkrec.data.split import Split

MAX_K = 1000
MAX_SEARCH = 100
DEFAULT_MEMORY_BUDGET_MB = 64

ExternalId = str | int


class Vocabulary:
    """Item ids and titles of a run. ``external[i]`` and ``titles[i]`` belong to internal id ``i + 1``."""

    def __init__(self, external: list[ExternalId], titles: list[str]) -> None:
        if len(titles) != len(external):
            raise ValueError("external ids and titles must have the same length")
        self.external = external
        self.titles = titles
        self._lookup = {str(e): i + 1 for i, e in enumerate(external)}
        self._lower = [t.lower() for t in titles]

    @classmethod
    def from_parquet(cls, path: Path, title_col: str | None = "title") -> Vocabulary:
        """Read ``items.parquet`` (columns ``item``, ``external_id`` and the item text columns); titles come
        from ``title_col`` (blank when the run has no such column)."""
        if not path.exists():
            raise ThinkrecError(f"{path}: missing; the run directory needs its item vocabulary")
        table = pq.read_table(path).sort_by("item")
        external = table.column("external_id").to_pylist()
        if title_col is not None and title_col in table.column_names:
            titles = ["" if t is None else str(t) for t in table.column(title_col).to_pylist()]
        else:
            titles = [""] * len(external)
        return cls([e if isinstance(e, int) else str(e) for e in external], titles)

    @property
    def n_items(self) -> int:
        return len(self.external)

    def internal(self, external_id: ExternalId) -> int | None:
        """The internal id of an external id (compared as text, so ``50`` and ``"50"`` are the same item)."""
        return self._lookup.get(str(external_id))

    def external_id(self, internal: int) -> ExternalId:
        return self.external[internal - 1]

    def title(self, internal: int) -> str:
        return self.titles[internal - 1]

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Internal ids whose title contains ``query`` (case-insensitive), best first.

        Ranked by: external id equal to the query, title starting with it, a word starting with it, earlier
        match, shorter title, then internal id. A linear scan of the titles (fine up to ~10^6 items).
        """
        q = query.strip().lower()
        limit = max(0, min(limit, MAX_SEARCH))
        if not q or not limit:
            return []
        hits: list[tuple[int, int, int, int, int]] = []
        exact = self.internal(query.strip())
        if exact is not None:
            hits.append((-1, 0, 0, 0, exact))
        for i, title in enumerate(self._lower):
            at = title.find(q)
            if at < 0 or i + 1 == exact:
                continue
            word = at == 0 or not title[at - 1].isalnum()
            hits.append((0 if at == 0 else 1, 0 if word else 1, at, len(title), i + 1))
        hits.sort()
        return [h[-1] for h in hits[:limit]]


def resolve_inference(cfg: RunConfig, reasons: bool) -> tuple[str, int | None]:
    """How per-step states become one user vector, ``('last'|'mean'|'step', step)``: the run's
    ``eval.inference`` with ``'auto'`` resolved from the reasoning objective; ``('last', None)`` for a model
    without a reasoner. The serving path (CLI, batch, HTTP, Python API) asks only this function."""
    return cfg.inference() if reasons else ("last", None)


@dataclass
class UserHistory:
    """A known user's history in internal ids (oldest first) and their timestamps.

    With a held-out item the history stops before it: ``held_out`` is the user's first test item (the one
    the run was evaluated on) and ``now`` its time; without, the history is the whole sequence and ``now``
    its last time.
    """

    user: ExternalId
    items: list[int]
    times: list[int]
    now: int
    held_out: int | None = None


class UserHistories:
    """The users of a run's dataset and their split, read on first use (a run directory does not hold them)."""

    def __init__(self, load: Callable[[], tuple[SequenceDataset, Split]]) -> None:
        self._load = load
        self._data: tuple[SequenceDataset, Split, dict[str, int]] | None = None
        self._lock = threading.Lock()

    def _get(self) -> tuple[SequenceDataset, Split, dict[str, int]]:
        with self._lock:
            if self._data is None:
                ds, split = self._load()
                self._data = ds, split, {str(u): i for i, u in enumerate(ds.user_ids)}
            return self._data

    def __call__(self, user: ExternalId, hold_out: bool = False) -> UserHistory:
        """The history of external user ``user``; raises ``KeyError`` for a user the dataset does not have."""
        ds, split, lookup = self._get()
        u = lookup.get(str(user))
        if u is None:
            raise KeyError(f"user {user!r} is not a user of dataset {ds.name}")
        items = [int(i) for i in ds.sequence(u)]
        start = int(ds.offsets[u])
        times = [int(t) for t in ds.timestamps[start : start + len(items)]]
        cut = len(items)
        if hold_out:  # stop before the user's first test item (none: the user has no test sample)
            positions = split.test.positions[split.test.users == u]
            if len(positions):
                cut = int(positions.min())
        held = items[cut] if cut < len(items) else None
        now = times[cut] if cut < len(items) else times[-1]
        external = ds.user_ids[u]
        external = external.item() if hasattr(external, "item") else external  # a numpy scalar as int / str
        return UserHistory(external, items[:cut], times[:cut], now, held)


@dataclass
class TopK:
    """Top-K results of a batch. ``ids`` are internal ids ``[B, k]`` (int64), ``scores`` ``[B, k]``.

    Scores of items removed by ``exclude_seen`` are ``-inf``; :meth:`row` drops them. ``step_ids`` /
    ``step_scores`` (``[B, S+1, k]``) hold the top-K of each reasoning state (step 0 = the backbone's last
    hidden state) when the model reasons, else ``None``.
    """

    ids: torch.Tensor
    scores: torch.Tensor
    step_ids: torch.Tensor | None = None
    step_scores: torch.Tensor | None = None
    texts: list[str] | None = None  # the reasoning text of each row (R²ec models)
    depth: str | None = None  # the depth selector that chose each row's step (None: the inference mode)
    steps_used: torch.Tensor | None = None  # [B] reasoning steps each row's choice needed (with ``depth``)
    step_weights: torch.Tensor | None = None  # [B, K+1] the chosen step weights (one-hot: a chosen step)
    # halting (a depth selector without per-step lists): rows each reasoning step 1..K was computed for
    halted_step_rows: list[int] | None = None

    def row(self, b: int) -> list[tuple[int, float]]:
        """``(internal id, score)`` pairs of row ``b``, best first, without excluded items."""
        return _pairs(self.ids[b], self.scores[b])

    def step_rows(self, b: int) -> list[list[tuple[int, float]]]:
        """Per-step ``(internal id, score)`` lists of row ``b`` (empty if the model does not reason)."""
        if self.step_ids is None or self.step_scores is None:
            return []
        return [_pairs(i, s) for i, s in zip(self.step_ids[b], self.step_scores[b], strict=True)]


def _pairs(ids: torch.Tensor, scores: torch.Tensor) -> list[tuple[int, float]]:
    return [(int(i), float(s)) for i, s in zip(ids.tolist(), scores.tolist(), strict=True) if s != float("-inf")]


def check_request(histories: Sequence[Sequence[int]], k: int, n_items: int) -> None:
    """Raise ``ValueError`` for ``k`` outside 1..MAX_K, an empty history or an id outside the catalogue."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    for row, history in enumerate(histories):
        if not history:
            raise ValueError(f"history {row} is empty; give at least one item")
        bad = [i for i in history if not 1 <= i <= n_items]
        if bad:
            raise ValueError(f"history {row}: internal ids {bad[:5]} are outside 1..{n_items}")


class Recommends(Protocol):
    """What the HTTP API needs of a loaded run: :class:`Recommender` (engine models) or
    :class:`~thinkrec.serve.llm.LLMRecommender` (R²ec)."""

    vocabulary: Vocabulary
    max_len: int

    @property
    def reasoning_steps(self) -> int: ...

    @property
    def max_reasoning_steps(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        steps: int | None = None,
        exclude_seen: bool = False,
        per_step: bool = True,
        times: Sequence[Sequence[int]] | None = None,
        depth: str | None = None,
    ) -> TopK: ...

    def search(self, query: str, limit: int = 20) -> list[int]: ...

    def user_history(self, user: ExternalId, hold_out: bool = False) -> UserHistory: ...

    def item_vectors(self) -> torch.Tensor: ...


class Recommender:
    """A trained model plus its vocabulary, answering batched top-K queries on internal ids."""

    def __init__(
        self,
        model: SeqRecModel,
        vocabulary: Vocabulary,
        config: RunConfig | None = None,
        memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
        ann: AnnIndex | None = None,
        run_dir: str | Path | None = None,
        checkpoint: str = "best",
    ) -> None:
        if vocabulary.n_items != model.n_items:
            raise ThinkrecError(f"vocabulary has {vocabulary.n_items} items but the model scores {model.n_items}")
        self.model = model.eval()
        # the CPU fast path for reasoning models where it applies, else the model's own forward + extend
        self.runner = runner_for(self.model)
        self.device = model_device(self.model)
        self.vocabulary = vocabulary
        self.config = config or RunConfig()
        self.memory_budget_mb = memory_budget_mb
        self.max_len = int(model.backbone.max_len)
        self.ann = ann  # approximate top-K instead of exact scoring, when set
        self.run_dir = None if run_dir is None else Path(run_dir)  # where fitted depth selectors are saved
        self.checkpoint = checkpoint
        self.depth: str | None = None  # the default depth selector (set_depth); None: the inference mode
        self._lock = threading.Lock()
        self._depth_lock = threading.Lock()
        self._selectors: dict[tuple[str, int], FittedSelector] = {}
        self._users = UserHistories(self._load_data)

    def _load_data(self) -> tuple[SequenceDataset, Split]:
        from thinkrec.runs import load_data

        return load_data(self.config)

    def user_history(self, user: ExternalId, hold_out: bool = False) -> UserHistory:
        """A user of the run's dataset (see :class:`UserHistory`); reads the dataset on first use."""
        return self._users(user, hold_out)

    def item_vectors(self) -> torch.Tensor:
        """The items' output vectors ``[n_items, d]`` (row ``i`` = internal id ``i + 1``), what user vectors
        are scored against."""
        with self._lock, torch.inference_mode():
            return self.model.item_vectors().detach().clone()

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", ann: bool = False) -> Recommender:
        """Load the model and vocabulary of a run directory written by ``thinkrec train``; ``ann`` builds a
        FAISS HNSW index for approximate top-K (needs the ``ann`` extra)."""
        from thinkrec.runs import load_run

        cfg, model = load_run(run_dir, checkpoint)
        index = AnnIndex.for_model(model) if ann else None
        vocabulary = Vocabulary.from_parquet(Path(run_dir) / "items.parquet", title_column(cfg))
        return cls(model, vocabulary, cfg, ann=index, run_dir=run_dir, checkpoint=checkpoint)

    def set_depth(self, name: str | None, steps: int | None = None) -> FittedSelector | None:
        """Make ``name`` the default depth selector (``None`` or ``"none"``: the inference mode), ready for
        ``steps`` reasoning steps (default K): loaded from the run directory, or fit on the run's validation
        samples and saved there when it has not been (this reads the dataset). Raises :class:`ThinkrecError`."""
        fitted = self.selector(name, steps, fit=True)
        self.depth = None if fitted is None else fitted.name
        return fitted

    def selector(self, name: str | None, steps: int | None = None, fit: bool = False) -> FittedSelector | None:
        """The depth selector ``name`` for ``steps`` reasoning steps (default K), cached: built, read from the
        run directory or (with ``fit``) fit on the run's validation samples. Raises :class:`ThinkrecError`
        when it cannot be had (unknown name, no reasoning steps, not fit and ``fit`` off)."""
        if name is None or name.strip() == "none":
            return None
        from thinkrec.runs import run_selector

        use = self.reasoning_steps if steps is None else steps
        key = (name.strip(), use)
        with self._depth_lock:
            found = self._selectors.get(key)
            if found is not None:
                return found
            try:
                kind, _ = parse_selector(name)
            except ValueError as exc:
                raise ThinkrecError(str(exc)) from None
            if kind.fitted and self.run_dir is None:
                raise ThinkrecError(
                    f"depth selector {kind.name!r} is fit on a run's validation samples; load the run from its "
                    "run directory (Recommender.from_run) to use it"
                )
            with self._lock:  # a fit evaluates the model: no recommendation runs beside it
                found = run_selector(
                    self.run_dir or Path("."),
                    name.strip(),
                    self.model,
                    self.config,
                    checkpoint=self.checkpoint,
                    steps=None if use == self.reasoning_steps else use,
                    data=lambda: self._load_data()[1],
                    fit=fit,
                )
            self._selectors[key] = found
            return found

    @property
    def n_items(self) -> int:
        return self.vocabulary.n_items

    @property
    def reasoning_steps(self) -> int:
        """Default number of reasoning steps K (0 for a plain backbone)."""
        return self.model.reasoning_steps

    @property
    def max_reasoning_steps(self) -> int:
        """Largest K a request may ask for: the reasoner's ``max_steps`` (its reasoning position table)."""
        if self.model.reasoner is None:
            return 0
        return max(self.reasoning_steps, int(self.model.reasoner.max_steps))

    @property
    def inference(self) -> tuple[str, int | None]:
        """How per-step states become one user vector (see :func:`resolve_inference`)."""
        return resolve_inference(self.config, self.model.reasoner is not None)

    def describe(self) -> dict[str, Any]:
        """Model facts for clients and logs."""
        mode, step = self.inference
        return {
            "kind": self.config.model.kind,
            "n_items": self.n_items,
            "max_len": self.max_len,
            "reasoning_steps": self.reasoning_steps,
            "max_reasoning_steps": self.max_reasoning_steps,
            "inference": mode if step is None else f"{mode}:{step}",
            "depth": self.depth,
            "scorer": self.config.model.scorer,
            "top_k": "approximate (FAISS HNSW)" if self.ann is not None else "exact (full catalogue)",
            "dataset": self.config.data.name,
        }

    def _check(self, histories: Sequence[Sequence[int]], k: int, steps: int | None) -> int:
        check_request(histories, k, self.n_items)
        use = self.reasoning_steps if steps is None else steps
        if not 0 <= use <= self.max_reasoning_steps:
            raise ValueError(f"reasoning steps must be in 0..{self.max_reasoning_steps}, got {use}")
        mode, step = self.inference
        if mode == "step" and step is not None and step > use:
            raise ValueError(f"this model scores reasoning step {step}; ask for at least {step} steps")
        return use

    def _rows_per_pass(self, matrices: int = 1) -> int:
        """Histories per forward pass so that ``matrices`` score matrices stay under the memory budget."""
        return max(1, self.memory_budget_mb * 2**20 // (4 * max(self.n_items, 1) * matrices))

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        steps: int | None = None,
        exclude_seen: bool = False,
        per_step: bool = True,
        times: Sequence[Sequence[int]] | None = None,
        depth: str | None = None,
    ) -> TopK:
        """Top-``k`` internal ids and scores for each history (internal ids, oldest first).

        ``steps``: reasoning steps (default: the model's K; ignored by plain backbones, which only accept 0 or
        ``None``). ``exclude_seen``: never recommend an item of the (whole) history. ``per_step``: also the top-K
        of each reasoning state (reasoning models only; costs one catalogue scoring per state). ``times``: the
        histories' timestamps, for models that use them (sequence models do not). ``depth``: a depth selector
        name (default :attr:`depth` when ``steps`` is the model's K, else none; ``"none"``: the inference
        mode) that chooses each history's step; it must be fit already (:meth:`set_depth`). Raises
        ``ValueError`` on an empty history, an id outside the catalogue, ``k``/``steps`` out of range, or a
        depth selector that cannot be used.
        """
        use = self._check(histories, k, steps)
        # the server's default selector was fit for the model's K: a request for other steps (0 = the backbone
        # alone) gets its inference mode unless it names a selector itself
        name = depth if depth is not None else (self.depth if use == self.reasoning_steps else None)
        try:
            fitted = self.selector(name, use)
        except ThinkrecError as exc:
            raise ValueError(str(exc)) from None
        parts: list[TopK] = []
        size = self._rows_per_pass(1 if fitted is None else use + 2)
        for start in range(0, len(histories), size):
            chunk = histories[start : start + size]
            parts.append(self._recommend(chunk, min(k, self.n_items), use, exclude_seen, per_step, fitted))
        if not parts:
            empty = torch.zeros(0, min(k, self.n_items))
            return TopK(empty.long(), empty)
        has_steps = parts[0].step_ids is not None
        counts = [p.halted_step_rows for p in parts]
        halted = None if any(c is None for c in counts) else [c for c in counts if c is not None]

        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return TopK(
            torch.cat([p.ids for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.step_ids for p in parts if p.step_ids is not None]) if has_steps else None,
            torch.cat([p.step_scores for p in parts if p.step_scores is not None]) if has_steps else None,
            depth=None if fitted is None else fitted.name,
            steps_used=joined("steps_used"),
            step_weights=joined("step_weights"),
            halted_step_rows=None if halted is None else [int(sum(r)) for r in zip(*halted, strict=True)],
        )

    def encode_batch(self, histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded inputs ``[B, W]`` (the last ``max_len`` items of each history) and positions ``[W]``."""
        windows = [list(h)[-self.max_len :] for h in histories]
        width = max(len(w) for w in windows)
        inputs = torch.zeros(len(windows), width, dtype=torch.long)
        for row, window in enumerate(windows):
            inputs[row, width - len(window) :] = torch.tensor(window, dtype=torch.long)
        return inputs, position_ids(width, self.max_len)

    def _recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int,
        steps: int,
        exclude_seen: bool,
        per_step: bool,
        fitted: FittedSelector | None = None,
    ) -> TopK:
        inputs, positions = self.encode_batch(histories)
        mode, step = self.inference
        with self._lock, torch.inference_mode():
            inputs, positions = inputs.to(self.device), positions.to(self.device)
            if fitted is not None and not per_step and self.ann is None:
                return self._recommend_halting(histories, inputs, k, steps, exclude_seen, fitted)
            states = self.runner.encode(inputs, positions, steps if self.model.reasoner is not None else None)
            choice, step_logits = None, None
            if fitted is not None:
                choice, step_logits = self._choose(fitted, states, inputs, histories)
                user = choice.user_vectors(states)
            else:
                user = self.model.user_vector(states, mode, step)
            if self.ann is not None:
                approximate = self._recommend_ann(histories, states, user, k, exclude_seen, per_step)
                return _with_choice(approximate, fitted, choice)
            if choice is not None and choice.hard and step_logits is not None:
                chosen = torch.from_numpy(choice.step).to(user.device)
                scores = step_logits[0].clone()  # each row: its chosen step's scores, as computed for the signals
                for s in range(1, len(step_logits)):
                    scores[chosen == s] = step_logits[s][chosen == s]
            else:
                scores = self.model.score(user) if choice is None else self._logits(user)
            seen = self._seen_mask(histories, scores.shape[1]).to(scores.device) if exclude_seen else None
            if seen is not None:
                scores = scores.masked_fill(seen, float("-inf"))
            top = torch.topk(scores, k, dim=1)
            step_ids = step_scores = None
            if self.model.reasoner is not None and per_step:
                tops = []
                for s in range(states.shape[1]):
                    logits = self.model.score(states[:, s]) if step_logits is None else step_logits[s]
                    if seen is not None:
                        logits = logits.masked_fill(seen, float("-inf"))
                    tops.append(torch.topk(logits, k, dim=1))
                step_ids = torch.stack([t.indices for t in tops], dim=1) + 1
                step_scores = torch.stack([t.values for t in tops], dim=1)
        return _with_choice(TopK(top.indices + 1, top.values, step_ids, step_scores), fitted, choice)

    def _logits(self, users: torch.Tensor) -> torch.Tensor:
        """:meth:`SeqRecModel.score <thinkrec.models.model.SeqRecModel.score>` with each row's scores the same
        numbers whichever rows are scored with it (:func:`~thinkrec.blocking.block_scores`): a depth selector's
        halting and full paths score different sets of rows."""
        items = self.model.item_vectors()
        users, items = self.model.scorer.prepare(users, items)
        scores = block_scores(users, items)
        t = float(self.model.scorer.temperature)
        return scores if t == 1.0 else scores / t

    def _recommend_halting(
        self,
        histories: Sequence[Sequence[int]],
        inputs: torch.Tensor,
        k: int,
        steps: int,
        exclude_seen: bool,
        fitted: FittedSelector,
    ) -> TopK:
        """The selector's top-K without the per-step lists: after each reasoning step the selector decides
        which histories stop, and only the others get the next step (:class:`~thinkrec.eval.halting.HaltingRows`
        through the runner's :meth:`~thinkrec.inference.runner.Runner.encode_halting`). Each step a history
        reached is scored once: its signals (as :meth:`_choose` reads them) and its top-K from the same
        scores, so a chosen step's top-K is the one the full computation gives."""
        n_steps = steps + 1
        if n_steps != fitted.n_steps:
            raise ValueError(f"depth selector {fitted.name!r} chooses among {fitted.n_steps} steps, not {n_steps}")
        items = self.model.item_vectors()
        seen = self._seen_mask(histories, self.n_items).to(self.device) if exclude_seen else None
        rows = HaltingRows(
            self.model,
            items,
            fitted.selector,
            n_steps,
            np.asarray([len(h) for h in histories], dtype=np.int64),
            history=inputs if self.config.eval.mask_history else None,
            keep=k,
            exclude=seen,
        )
        halted = self.runner.encode_halting(inputs, len(inputs), rows, steps)
        choice = Choice(rows.weights, rows.steps_used)
        index = torch.arange(len(histories), device=self.device)
        chosen = torch.from_numpy(rows.weights.argmax(axis=1)).to(self.device)
        ids, scores = rows.top_ids[chosen, index], rows.top_scores[chosen, index]
        soft = ~np.all((rows.weights == 0) | (rows.weights == 1), axis=1)
        if soft.any():  # step weights: every step ran for these rows; score their weighted vectors
            at = torch.from_numpy(np.flatnonzero(soft)).to(self.device)
            logits = self._logits(Choice(rows.weights[soft], rows.steps_used[soft]).user_vectors(halted.states[at]))
            if seen is not None:
                logits = logits.masked_fill(seen[at], float("-inf"))
            top = torch.topk(logits, k, dim=1)
            ids[at], scores[at] = top.indices, top.values
        out = TopK(ids + 1, scores)
        out.halted_step_rows = halted.step_rows
        return _with_choice(out, fitted, choice)

    def _choose(
        self, fitted: FittedSelector, states: torch.Tensor, inputs: torch.Tensor, histories: Sequence[Sequence[int]]
    ) -> tuple[Choice, list[torch.Tensor] | None]:
        """The selector's choice for each history, and every step's scores when the signals needed them (so the
        chosen step's top-K is read from the same numbers). Signals are computed as the run's evaluation
        computes them: the history window masked when ``eval.mask_history``."""
        n_steps = states.shape[1]
        if n_steps != fitted.n_steps:
            raise ValueError(f"depth selector {fitted.name!r} chooses among {fitted.n_steps} steps, not {n_steps}")
        needs = needs_of(fitted.selector)
        lengths = np.asarray([len(h) for h in histories], dtype=np.int64)
        if not needs.signals:
            return fitted.selector.choose(signal_data({}, n_steps, lengths)), None
        logits = [self._logits(states[:, s]) for s in range(n_steps)]  # temperature applied
        masked = self.config.eval.mask_history
        read = logits
        if masked:  # as evaluation scores them: the history window (the model's input) excluded
            read = [x.clone() for x in logits]
            for x in read:
                mask_items(x, inputs)
        found = block_signals(read, states, needs, TOP_K, 1.0, masked=masked)
        arrays = {name: value.double().cpu().numpy() for name, value in found.items()}
        return fitted.selector.choose(signal_data(arrays, n_steps, lengths)), logits

    def _recommend_ann(
        self,
        histories: Sequence[Sequence[int]],
        states: torch.Tensor,
        user: torch.Tensor,
        k: int,
        exclude_seen: bool,
        per_step: bool,
    ) -> TopK:
        assert self.ann is not None
        probe = self.model.item_vectors()[:1]
        exclude = histories if exclude_seen else None

        def search(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.ann is not None
            return self.ann.search(self.model.scorer.prepare(vectors, probe)[0], k, exclude)

        ids, scores = search(user)
        step_ids = step_scores = None
        if self.model.reasoner is not None and per_step:
            tops = [search(states[:, s]) for s in range(states.shape[1])]
            step_ids = torch.stack([t[0] for t in tops], dim=1)
            step_scores = torch.stack([t[1] for t in tops], dim=1)
        return TopK(ids, scores, step_ids, step_scores)

    @staticmethod
    def _seen_mask(histories: Sequence[Sequence[int]], n_items: int) -> torch.Tensor:
        mask = torch.zeros(len(histories), n_items, dtype=torch.bool)
        for row, history in enumerate(histories):
            mask[row, torch.tensor(list(history), dtype=torch.long) - 1] = True
        return mask

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Internal ids whose titles match ``query`` (see :meth:`Vocabulary.search`)."""
        return self.vocabulary.search(query, limit)


def _with_choice(top: TopK, fitted: FittedSelector | None, choice: Choice | None) -> TopK:
    """``top`` with the depth selector's name and each row's steps used and step weights."""
    if fitted is None or choice is None:
        return top
    top.depth = fitted.name
    top.steps_used = torch.from_numpy(choice.steps_used.copy())
    top.step_weights = torch.from_numpy(choice.weights.copy())
    return top


def title_column(cfg: Any) -> str | None:
    """The item text column shown as a title for a run's config (engine or R²ec): ``data.source.title_col``,
    else the first of ``data.source.text_cols``, else ``'title'`` (the column of the built-in formats)."""
    source = cfg.data.source
    chosen = getattr(source, "title_col", None)
    if chosen:
        return str(chosen)
    if source.format == "table":
        return source.text_cols[0] if source.text_cols else None
    return "title"
