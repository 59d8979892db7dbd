"""Serving an R²ec run (``thinkrec llm train``): the LLM writes its reasoning, then ranks the catalogue.

:class:`LLMRecommender` answers the same calls as :class:`~thinkrec.serve.recommender.Recommender`, so the
HTTP API and its web page serve either kind of run. Per history it builds the user prompt from the item
titles (with the times of the items when the caller gives them, as for a known user of the dataset;
else without), generates the reasoning greedily up to the run's
``recpo.max_new_tokens`` (stopping at the answer marker), pools the user vector, and scores every item
against the run's cached item table (cosine / tau). The reasoning text is returned with the top-K.
Generation is serialised by a lock, like the engine models' inference.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from thinkrec.serve.recommender import (
    ExternalId,
    TopK,
    UserHistories,
    UserHistory,
    Vocabulary,
    check_request,
    title_column,
)


def is_llm_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by ``thinkrec llm train`` (its config has a ``recpo`` section)."""
    path = Path(run_dir) / "config.json"
    try:
        return "recpo" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


class LLMRecommender:
    """A trained R²ec run behind the :class:`~thinkrec.serve.recommender.Recommender` interface."""

    reasoning_steps = 0  # latent reasoning steps: none (this model reasons in text)
    max_reasoning_steps = 0

    def __init__(
        self,
        trainer: Any,
        vocabulary: Vocabulary,
        history_len: int,
        dataset: str,
        timed_trainer: Any = None,
        users: UserHistories | None = None,
    ) -> None:
        self.trainer = trainer  # prompts without times
        self.timed_trainer = timed_trainer or trainer  # prompts with the run's time setting (histories with times)
        self.vocabulary = vocabulary
        self.max_len = history_len
        self.dataset = dataset
        self._users = users
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> LLMRecommender:
        """Load the run's model (LoRA adapters and item table) and its dataset's titles."""
        from thinkrec.llm.data import PromptBank
        from thinkrec.llm.run import load_llm_run, load_split, make_builder
        from thinkrec.llm.trainer import LLMTrainer

        run_cfg, model = load_llm_run(run_dir)
        split = load_split(run_cfg)
        ds = split.dataset
        timed_bank = PromptBank(ds, run_cfg, make_builder(model, run_cfg))
        cfg = run_cfg.model_copy(update={"prompt": run_cfg.prompt.model_copy(update={"relative_time": False})})
        bank = PromptBank(ds, cfg, make_builder(model, cfg))
        if model.item_table is None:
            model.build_item_table(bank.item_ids, cfg.eval.item_batch_size, progress=True)
        shown = ds.item_text.get(title_column(cfg) or "")
        titles = shown[1:] if shown is not None else bank.titles[1:]
        vocabulary = Vocabulary([e if isinstance(e, int) else str(e) for e in ds.item_ids], [str(t) for t in titles])
        model.eval()
        return cls(
            LLMTrainer(model, bank, cfg),
            vocabulary,
            cfg.sample.history_len,
            cfg.data.name,
            timed_trainer=LLMTrainer(model, timed_bank, run_cfg),
            users=UserHistories(lambda: (ds, split)),
        )

    def user_history(self, user: ExternalId, hold_out: bool = False) -> UserHistory:
        """A user of the run's dataset (see :class:`~thinkrec.serve.recommender.UserHistory`)."""
        if self._users is None:
            raise KeyError(f"user {user!r}: this recommender was built without its dataset")
        return self._users(user, hold_out)

    @property
    def n_items(self) -> int:
        return self.vocabulary.n_items

    def describe(self) -> dict[str, Any]:
        cfg = self.trainer.cfg
        reasons = cfg.recpo.variant == "recpo"
        return {
            "kind": "r2ec",
            "n_items": self.n_items,
            "max_len": self.max_len,
            "reasoning_steps": 0,
            "max_reasoning_steps": 0,
            "reasoning": f"text, greedy, <= {cfg.recpo.max_new_tokens} tokens" if reasons else "none",
            "scorer": (
                f"cosine{' of centred vectors' if cfg.model.center_items else ''} / {cfg.model.tau}"
                + (", items through a trained linear map" if cfg.model.item_head == "linear" else "")
                + (" + log(1 + training count)" if cfg.model.item_prior == "log_popularity" else "")
            ),
            "top_k": "exact (full catalogue)",
            "dataset": self.dataset,
        }

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
        """Top-``k`` internal ids and scores per history, with the reasoning text of each in ``TopK.texts``.

        ``times``: per history, the time of each item and then the time of "now" (``len(history) + 1``
        values); the prompts then show how long ago each item was, as in training. Without, they show titles only.
        """
        from thinkrec.llm.data import Example
        from thinkrec.llm.recpo import history_mask, mask_scores

        check_request(histories, k, self.n_items)
        if steps:
            raise ValueError("this model reasons in text; it has no latent reasoning steps (use 0 or none)")
        if depth is not None and depth.strip() != "none":
            raise ValueError("this model reasons in text; a depth selector chooses among latent reasoning steps")
        if times is not None and [len(t) for t in times] != [len(h) + 1 for h in histories]:
            raise ValueError("times must hold, per history, one time per item and then the time of 'now'")
        examples = []
        for row, history in enumerate(histories):
            shown = list(history)[-self.max_len :]
            shown_times = [int(t) for t in times[row][:-1]][-self.max_len :] if times else [0] * len(shown)
            now = int(times[row][-1]) if times else 0
            examples.append(Example(-1, len(history), shown, shown_times, 0, now, sorted(set(history))))
        reasons = self.trainer.cfg.recpo.variant == "recpo"
        trainer = self.timed_trainer if times is not None else self.trainer
        with self._lock, torch.inference_mode():
            users, texts, _ = trainer.user_vectors(examples, reasons)
            scores = self.trainer.model.score_all(users)[:, 1:]  # column 0 is the pad item
        if exclude_seen:
            seen = history_mask(
                [[i - 1 for i in ex.seen] for ex in examples], self.n_items, mask_pad=False, device=scores.device
            )
            scores = mask_scores(scores, seen)
        # a stable sort: equal scores keep the lower item id first (cosine scores of an LLM tie more often)
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        k = min(k, self.n_items)
        return TopK((order[:, :k] + 1).cpu(), values[:, :k].cpu(), texts=list(texts) if reasons else None)

    def search(self, query: str, limit: int = 20) -> list[int]:
        return self.vocabulary.search(query, limit)

    def item_vectors(self) -> torch.Tensor:
        """The item vectors as the scorer compares them (``[n_items, d]``, on the CPU: the cached table, centred
        and through the item head where the run has them; row ``i`` = internal id ``i + 1``, the pad row
        dropped). A run with ``model.item_prior`` adds each item's prior to the cosine: not in these vectors."""
        model = self.trainer.model
        if model.item_table is None:
            raise ValueError("this run has no item table yet")
        with torch.no_grad():
            vectors: torch.Tensor = model.item_space(model.item_table)[1:].detach().cpu().clone()
        return vectors
