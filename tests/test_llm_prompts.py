"""Prompt text builders (pure) and their token ids with a tiny in-code tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from thinkrec.data.dataset import SequenceDataset
from thinkrec.data.split import SplitConfig, make_split
from thinkrec.llm.config import LLMRunConfig, load_llm_config
from thinkrec.llm.data import Example, eval_examples, make_example, train_examples
from thinkrec.llm.prompts import (
    cut_words,
    format_time_ago,
    history_text,
    item_prompt_text,
    item_text,
    user_prompt_text,
)


def test_format_time_ago_three_regimes() -> None:
    assert format_time_ago(12 * 86400 + 3.5 * 3600) == "12d 3.5h ago"
    assert format_time_ago(3 * 3600 + 12.5 * 60) == "3h 12.5min ago"
    assert format_time_ago(240) == "4.0min ago"
    assert format_time_ago(-5) == "0.0min ago"


def test_history_text_with_and_without_times() -> None:
    titles = ["Toy Story (1995)", "  Heat\n(1995) "]
    assert history_text(titles, [0, 86400], 2 * 86400) == "2d 0.0h ago: [Toy Story (1995)]\n1d 0.0h ago: [Heat (1995)]"
    assert history_text(titles, None, None) == "- [Toy Story (1995)]\n- [Heat (1995)]"


def test_user_and_item_prompt_text_are_deterministic() -> None:
    text = user_prompt_text("- [A]", "movie", "movies", "<answer>")
    assert text == user_prompt_text("- [A]", "movie", "movies", "<answer>")
    assert "<answer>a movie</answer>" in text and text.endswith("Below is my movies history, oldest first:\n- [A]")
    body = item_text({"title": "Heat (1995)", "description": "one two three four", "genre": ""}, 2)
    assert body == "Title: Heat (1995)\nDescription: one two ..."
    assert item_prompt_text(body, "movie", "<answer>").startswith(
        "Summarise the key attributes of the following movie inside <answer> and </answer>.\n\nTitle:"
    )
    assert cut_words("a b", 5) == "a b"


def toy_dataset(n_users: int = 8, n_items: int = 12, length: int = 9, seed: int = 0) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    items = np.concatenate([rng.choice(np.arange(1, n_items + 1), size=length, replace=False) for _ in range(n_users)])
    base = np.arange(length) * 3600
    times = np.concatenate([base + u * 60 for u in range(n_users)])
    return SequenceDataset(
        name="toy",
        offsets=np.arange(n_users + 1) * length,
        items=items,
        timestamps=times,
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(1, n_items + 1)]),
        item_text={"title": [""] + [f"Item {i}" for i in range(1, n_items + 1)]},
    )


def test_examples_from_split_are_seeded_and_leak_free() -> None:
    ds = toy_dataset()
    split = make_split(ds, SplitConfig(kind="loo"))
    cfg = load_llm_config(None, ["sample.train_users=5", "sample.examples_per_user=2", "sample.history_len=3"])
    a, b = train_examples(split, cfg), train_examples(split, cfg)
    assert a == b and len(a) == 10
    for ex in a:
        assert ex.position < split.train_lengths[ex.user]  # training targets come from the training prefix
        assert len(ex.shown) <= 3 and ex.target not in ex.shown
        seq = ds.sequence(ex.user)
        assert ex.target == seq[ex.position] and ex.seen == sorted(set(seq[: ex.position].tolist()))
    test = eval_examples(split, cfg, "test")
    assert all(ex.position == ds.lengths[ex.user] - 1 for ex in test)


def test_make_example_history_window() -> None:
    ds = toy_dataset()
    ex: Example = make_example(ds, 1, 5, 2)
    seq = ds.sequence(1)
    assert ex.shown == seq[3:5].tolist() and ex.target == seq[5]
    assert ex.shown_times == ds.timestamps[ds.offsets[1] + 3 : ds.offsets[1] + 5].tolist()


def test_config_rejects_unknown_keys_with_a_suggestion() -> None:
    from thinkrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"did you mean 'recpo\.group_size'"):
        load_llm_config(None, ["recpo.group_sise=3"])
    cfg = load_llm_config(None, ["recpo.pairing=faithful_to_code", "model.finetune=full"])
    assert cfg.recpo.pairing == "faithful_to_code" and isinstance(cfg, LLMRunConfig)
