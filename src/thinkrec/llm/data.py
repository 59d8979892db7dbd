"""Examples for the LLM recommender from the engine's datasets and splits.

A training example is a random prefix of a drawn user's *training* sequence: history = the items before
position ``p`` (the last ``history_len`` shown in the prompt), target = item ``p``. Evaluation examples are a
seeded subset of the split's validation / test samples, with the same history rule. The items masked from
the ranking are the user's whole history (every earlier interaction), the same set for every model compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.split import Split
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.prompts import PromptBuilder, history_text, item_prompt_text, item_text, user_prompt_text
from thinkrec.seed import Seeds


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
    """A seeded subset of ``eval_users`` validation / test samples (in the split's order)."""
    samples = split.samples(which)
    rng = Seeds(cfg.sample.seed).numpy(f"llm-{which}")
    index = np.sort(rng.choice(len(samples), size=min(cfg.sample.eval_users, len(samples)), replace=False))
    return [
        make_example(split.dataset, int(samples.users[i]), int(samples.positions[i]), cfg.sample.history_len)
        for i in index
    ]


def has_timestamps(cfg: LLMRunConfig) -> bool:
    """Whether the source has real timestamps (else prompts list titles without relative times)."""
    source = cfg.data.source
    if cfg.prompt.relative_time is not None:
        return cfg.prompt.relative_time
    return source.format in ("ml100k", "seqrecbench") or (source.format == "table" and source.time_col is not None)


class PromptBank:
    """Prompt text and token ids for examples and for every catalogue item (built once)."""

    def __init__(self, ds: SequenceDataset, cfg: LLMRunConfig, builder: PromptBuilder) -> None:
        self.ds = ds
        self.cfg = cfg
        self.builder = builder
        titles = ds.titles or [""] + [str(i) for i in ds.item_ids]
        self.titles = titles
        fields = cfg.prompt.item_fields or list(ds.item_text) or ["title"]
        columns = {f: ds.item_text.get(f, titles if f == "title" else [""] * (ds.n_items + 1)) for f in fields}
        self.item_texts = [""] + [
            item_text({f: columns[f][i] for f in fields}, cfg.prompt.field_words) for i in range(1, ds.n_items + 1)
        ]
        self._item_ids: list[list[int]] | None = None
        self.has_time = has_timestamps(cfg)

    def user_text(self, ex: Example) -> str:
        p = self.cfg.prompt
        titles = [self.titles[i] for i in ex.shown]
        times = ex.shown_times if self.has_time else None
        hist = history_text(titles, times, ex.target_time if self.has_time else None)
        return user_prompt_text(hist, p.noun_singular, p.noun_plural, p.answer_marker)

    def user_ids(self, ex: Example) -> list[int]:
        return self.builder.user_ids(self.user_text(ex))

    def item_prompt(self, item: int) -> str:
        return item_prompt_text(self.item_texts[item], self.cfg.prompt.noun_singular, self.cfg.prompt.answer_marker)

    @property
    def item_ids(self) -> list[list[int]]:
        """Token ids of every item sequence, index = item id (index 0: the pad item's, never scored)."""
        if self._item_ids is None:
            pad = self.builder.item_ids(self.item_prompt(1)) if self.ds.n_items else []
            self._item_ids = [pad] + [self.builder.item_ids(self.item_prompt(i)) for i in range(1, self.ds.n_items + 1)]
        return self._item_ids
