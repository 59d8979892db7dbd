"""Examples for the LLM recommender from the engine's datasets and splits.

A training example is a random prefix of a drawn user's *training* sequence: history = the items before
position ``p`` (the last ``history_len`` shown in the prompt), target = item ``p``. Evaluation examples are a
seeded subset of the split's validation / test samples, with the same history rule. The items masked from
the ranking are the user's whole history (every earlier interaction), the same set for every model compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.split import Split
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.prompts import (
    PromptBuilder,
    format_date,
    format_rating,
    format_time_ago,
    history_line,
    item_instruction,
    item_text,
    user_prompt_text,
)
from thinkrec.seed import Seeds

TimeFormat = Literal["relative", "date", "none"]
ML100K_GENRES = (
    *("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama"),
    *("Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"),
)


@dataclass
class SideInfo:
    """What a source's raw files hold beyond the engine's dataset: a rating per interaction (aligned with
    ``ds.items``) and extra item text columns (index = internal item id, 0 = pad)."""

    ratings: np.ndarray | None = None  # float [n_interactions], NaN where unknown
    item_columns: dict[str, list[str]] = field(default_factory=dict)


def read_side_info(ds: SequenceDataset, cfg: LLMRunConfig) -> SideInfo:
    """Ratings, genres and release years of an ``ml100k`` source, read from its raw ``u.data`` / ``u.item``
    here (the engine's reader keeps titles only); other sources (and ``prompt.side_info = false``): none."""
    source = cfg.data.source
    if not cfg.prompt.side_info or source.format != "ml100k":
        return SideInfo()
    from thinkrec.errors import DataError
    from thinkrec.paths import resolve_data_path

    try:
        root = resolve_data_path(source.path)
    except DataError:  # a dataset built in code (tests) with no raw files behind it
        return SideInfo()
    folder = root.parent if root.is_file() else root
    info = SideInfo()
    data = root if root.is_file() else folder / "u.data"
    if data.is_file():
        raw = np.loadtxt(data, dtype=np.int64, ndmin=2)
        by_pair = {(str(u), str(i)): float(r) for u, i, r in raw[:, :3]}
        users = np.repeat(np.asarray(ds.user_ids), np.diff(ds.offsets))
        externals = np.asarray(ds.item_ids)[ds.items - 1]
        ratings = np.asarray(
            [by_pair.get((str(u), str(i)), np.nan) for u, i in zip(users, externals, strict=True)], dtype=np.float64
        )
        # a dataset that is not this file's (no pair found) has no ratings rather than all-unknown ones
        info.ratings = None if np.isnan(ratings).all() else ratings
    item_file = folder / "u.item"
    if item_file.is_file():
        genres: dict[str, str] = {}
        years: dict[str, str] = {}
        for line in item_file.read_text(encoding="latin-1").splitlines():
            parts = line.split("|")
            if len(parts) < 24:
                continue
            flags = parts[-19:]
            genres[parts[0]] = ", ".join(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1")
            years[parts[0]] = parts[2][-4:] if parts[2] else ""
        ids = [str(i) for i in ds.item_ids]
        if not any(i in genres for i in ids):  # not this file's items
            return info
        info.item_columns = {
            "genres": [""] + [genres.get(i, "") for i in ids],
            "year": [""] + [years.get(i, "") for i in ids],
        }
    return info


@dataclass(frozen=True)
class Example:
    """One (history -> target) sample; item ids are internal (``1..n_items``)."""

    user: int
    position: int
    shown: list[int]  # the history items shown in the prompt (oldest first)
    shown_times: list[int]
    target: int
    target_time: int
    seen: list[int]  # every earlier item of the user (masked from the ranking)


def make_example(ds: SequenceDataset, user: int, position: int, history_len: int) -> Example:
    start = int(ds.offsets[user])
    items = ds.items[start : start + position + 1]
    times = ds.timestamps[start : start + position + 1]
    lo = max(0, position - history_len)
    return Example(
        user=user,
        position=position,
        shown=[int(i) for i in items[lo:position]],
        shown_times=[int(t) for t in times[lo:position]],
        target=int(items[position]),
        target_time=int(times[position]),
        seen=sorted({int(i) for i in items[:position]}),
    )


def train_examples(split: Split, cfg: LLMRunConfig) -> list[Example]:
    """``examples_per_user`` random training prefixes of ``train_users`` seeded users (>= 2 training items)."""
    ds = split.dataset
    rng = Seeds(cfg.sample.seed).numpy("llm-train-users")
    eligible = np.flatnonzero(split.train_lengths >= 2)
    users = rng.choice(eligible, size=min(cfg.sample.train_users, len(eligible)), replace=False)
    out = []
    for user in sorted(int(u) for u in users):
        n = int(split.train_lengths[user])
        for p in rng.integers(1, n, size=cfg.sample.examples_per_user):
            out.append(make_example(ds, user, int(p), cfg.sample.history_len))
    return out


def eval_examples(split: Split, cfg: LLMRunConfig, which: Literal["valid", "test"]) -> list[Example]:
    """A seeded subset of the split's test (``sample.eval_users``) or validation (``sample.valid_users``)
    samples, in the split's order: the same samples for every run with the same data, split and seed."""
    samples = split.samples(which)
    rng = Seeds(cfg.sample.seed).numpy(f"llm-{which}")
    wanted = cfg.sample.eval_users if which == "test" else cfg.sample.valid_users or cfg.sample.eval_users
    index = np.sort(rng.choice(len(samples), size=min(wanted, len(samples)), replace=False))
    return [
        make_example(split.dataset, int(samples.users[i]), int(samples.positions[i]), cfg.sample.history_len)
        for i in index
    ]


def has_timestamps(cfg: LLMRunConfig) -> bool:
    """Whether the source has real timestamps (else prompts list titles without times)."""
    source = cfg.data.source
    return source.format in ("ml100k", "seqrecbench") or (source.format == "table" and source.time_col is not None)


def time_format(cfg: LLMRunConfig) -> TimeFormat:
    """The resolved ``prompt.time_format``: the older ``relative_time`` switch wins when set; ``auto`` =
    dates on ml100k (its users rate in bursts: most relative times read minutes) and seqrecbench (day
    timestamps: same-day items read "0.0min ago"), relative times on other timestamped sources (tables),
    none without timestamps."""
    p = cfg.prompt
    if p.relative_time is not None:
        return "relative" if p.relative_time else "none"
    if p.time_format != "auto":
        return p.time_format
    if not has_timestamps(cfg):
        return "none"
    return "date" if cfg.data.source.format in ("ml100k", "seqrecbench") else "relative"


class PromptBank:
    """Prompt text and token ids for examples and for every catalogue item (built once)."""

    def __init__(
        self, ds: SequenceDataset, cfg: LLMRunConfig, builder: PromptBuilder, side: SideInfo | None = None
    ) -> None:
        self.ds = ds
        self.cfg = cfg
        self.builder = builder
        self.side = side if side is not None else read_side_info(ds, cfg)
        titles = ds.titles or [""] + [str(i) for i in ds.item_ids]
        self.titles = titles
        available = {**ds.item_text, **self.side.item_columns}
        fields = cfg.prompt.item_fields or list(available) or ["title"]
        if "title" in fields:  # the title first
            fields = ["title", *(f for f in fields if f != "title")]
        columns = {f: available.get(f, titles if f == "title" else [""] * (ds.n_items + 1)) for f in fields}
        self.item_texts = [""] + [
            item_text({f: columns[f][i] for f in fields}, cfg.prompt.field_words) for i in range(1, ds.n_items + 1)
        ]
        # genres (or categories) beside each history title, when the data has them and item text shows them
        detail = next(
            (f for f in ("genres", "genre", "categories", "category") if f in available and f in fields), None
        )
        self.history_details = available[detail] if detail else None
        self._item_ids: list[list[int]] | None = None
        self.time_format = time_format(cfg)
        show = cfg.prompt.show_ratings
        self.ratings = self.side.ratings if show or (show is None and self.side.ratings is not None) else None
        if show and self.side.ratings is None:
            raise ValueError("prompt.show_ratings=true but the source has no ratings (only ml100k's are read)")

    def shown_ratings(self, ex: Example) -> list[float] | None:
        """Ratings of the example's shown history items (``None`` when not shown or for a made-up history)."""
        if self.ratings is None or ex.user < 0 or ex.position > int(self.ds.lengths[ex.user]):
            return None
        start = int(self.ds.offsets[ex.user]) + ex.position - len(ex.shown)
        return [float(r) for r in self.ratings[start : start + len(ex.shown)]]

    def history_lines(self, ex: Example) -> list[str]:
        """One line per shown history item, oldest first: ``<time>: [title] (genres; rated r/5)``."""
        ratings = self.shown_ratings(ex)
        lines = []
        for j, item in enumerate(ex.shown):
            when = None
            if self.time_format == "relative":
                when = format_time_ago(ex.target_time - ex.shown_times[j])
            elif self.time_format == "date":
                when = format_date(ex.shown_times[j])
            details = [self.history_details[item]] if self.history_details is not None else []
            if ratings is not None and not np.isnan(ratings[j]):
                details.append(format_rating(ratings[j]))
            lines.append(history_line(self.titles[item], when, details))
        return lines

    def user_text(self, ex: Example, lines: list[str] | None = None) -> str:
        p = self.cfg.prompt
        history = "\n".join(self.history_lines(ex) if lines is None else lines)
        return user_prompt_text(history, p.noun_singular, p.noun_plural, p.answer_marker)

    def user_ids(self, ex: Example) -> list[int]:
        """The prompt's token ids; over ``model.max_prompt_tokens`` the oldest history lines are dropped
        (whole lines, never half a title) before the builder's own head + tail cut."""
        lines = self.history_lines(ex)
        ids = self.builder.chat_ids(self.user_text(ex, lines))
        while len(ids) > self.builder.max_prompt_tokens and len(lines) > 1:
            over = len(ids) - self.builder.max_prompt_tokens
            # drop about as many lines as the excess needs (at least one), then re-measure
            per_line = max(1, (len(ids) - self.builder.max_prompt_tokens // 4) // max(1, len(lines)))
            lines = lines[min(len(lines) - 1, max(1, over // per_line)) :]
            ids = self.builder.chat_ids(self.user_text(ex, lines))
        return self.builder.user_ids(self.user_text(ex, lines))

    @property
    def item_ids(self) -> list[list[int]]:
        """Token ids of every item sequence, index = item id (index 0: the pad item's, never scored)."""
        if self._item_ids is None:
            head = item_instruction(self.cfg.prompt.noun_singular, self.cfg.prompt.answer_marker)
            seqs = [self.builder.item_ids(self.item_texts[i], head) for i in range(1, self.ds.n_items + 1)]
            self._item_ids = [seqs[0] if seqs else [], *seqs]
        return self._item_ids
