"""Prompt text builders (pure) and their token ids with a tiny in-code tokenizer."""

from __future__ import annotations

from pathlib import Path

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


def test_history_line_and_date_and_rating_formats() -> None:
    from thinkrec.llm.prompts import format_date, format_rating, history_line

    assert format_date(0) == "1970-01-01" and format_date(86400 * 365) == "1971-01-01"
    assert format_rating(4.0) == "rated 4/5" and format_rating(3.5) == "rated 3.5/5"
    assert history_line(" Heat\n(1995)", "1998-04-16", ["Action, Crime", "rated 4/5"]) == (
        "1998-04-16: [Heat (1995)] (Action, Crime; rated 4/5)"
    )
    assert history_line("Heat", None, []) == "- [Heat]"


def _toy_ml100k(root: Path) -> Path:
    """Three users, four movies, in the raw MovieLens-100K layout (u.data tab-separated, u.item pipes)."""
    folder = root / "ml"
    folder.mkdir()
    rows = [(1, 1, 5, 100), (1, 2, 3, 200), (1, 3, 4, 300), (1, 4, 1, 400), (2, 2, 2, 150), (2, 1, 4, 250)]
    rows += [(2, 3, 5, 350), (3, 4, 4, 120), (3, 3, 3, 220), (3, 1, 2, 320)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    flags = {1: (3, 4, 5), 2: (1, 2), 3: (8,), 4: ()}
    lines = []
    for item, on in flags.items():
        genre = "|".join("1" if g in on else "0" for g in range(19))
        lines.append(f"{item}|Movie {item} (1995)|01-Jan-199{item}||http://x|{genre}")
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def test_ml100k_prompts_show_dates_genres_and_ratings(tmp_path: Path) -> None:
    from thinkrec.data.prepare import load_or_prepare
    from thinkrec.llm.data import PromptBank, read_side_info, time_format
    from thinkrec.llm.prompts import PromptBuilder
    from thinkrec.llm.tiny import tiny_tokenizer

    folder = _toy_ml100k(tmp_path)
    cfg = load_llm_config(
        None,
        [
            "data.source.format=ml100k",
            f"data.source.path={folder}",
            "data.name=toy-ml",
            "data.split.kind=loo",
            "sample.history_len=20",
        ],
    )
    ds = load_or_prepare(cfg.data.source, cfg.data.prepare, cfg.data.name)
    side = read_side_info(ds, cfg)
    assert side.ratings is not None and len(side.ratings) == len(ds.items) and not np.isnan(side.ratings).any()
    assert time_format(cfg) == "date"
    bank = PromptBank(ds, cfg, PromptBuilder(tiny_tokenizer(), system_prompt="s"), side)
    user = [str(u) for u in ds.user_ids].index("1")
    ex = make_example(ds, user, 3, 20)
    lines = bank.history_lines(ex)
    assert lines[0] == "1970-01-01: [Movie 1 (1995)] (Animation, Children's, Comedy; rated 5/5)"
    assert lines[1].endswith("[Movie 2 (1995)] (Action, Adventure; rated 3/5)") and len(lines) == 3
    item = [str(i) for i in ds.item_ids].index("3") + 1
    assert bank.item_texts[item] == "Title: Movie 3 (1995)\nGenres: Drama\nYear: 1993"
    # titles only and no times when asked
    plain = load_llm_config(
        None,
        [
            "data.source.format=ml100k",
            f"data.source.path={folder}",
            "prompt.side_info=false",
            "prompt.time_format=none",
        ],
    )
    bare = PromptBank(ds, plain, PromptBuilder(tiny_tokenizer(), system_prompt="s"))
    assert bare.history_lines(ex)[0] == "- [Movie 1 (1995)]" and bare.item_texts[item] == "Title: Movie 3 (1995)"
    # over the token budget the oldest lines go first, whole
    tight = PromptBuilder(tiny_tokenizer(), system_prompt="s", max_prompt_tokens=len(bank.user_ids(ex)) - 5)
    short = PromptBank(ds, cfg, tight, side)
    text = tiny_tokenizer().decode(short.user_ids(ex))
    assert "Movie 1 (1995)" not in text and lines[-1] in text


def test_time_format_resolution() -> None:
    from thinkrec.llm.data import time_format

    assert time_format(load_llm_config(None, [])) == "date"  # ml100k default
    assert time_format(load_llm_config(None, ["prompt.relative_time=true"])) == "relative"
    assert time_format(load_llm_config(None, ["prompt.time_format=none"])) == "none"
    beauty = load_llm_config("benchmarks/llm/llm_beauty.toml", [])
    assert time_format(beauty) == "date" and beauty.prompt.noun_singular == "product"


def test_categories_of_a_table_source_go_beside_history_titles() -> None:
    from dataclasses import replace

    from thinkrec.llm.data import PromptBank
    from thinkrec.llm.prompts import PromptBuilder
    from thinkrec.llm.tiny import tiny_tokenizer

    ds = toy_dataset()
    ds = replace(ds, item_text={**ds.item_text, "category": [""] + [f"Cat {i % 3}" for i in range(1, 13)]})
    cfg = load_llm_config(
        None, ["data.source.format=table", "data.source.path=/nowhere.csv", "prompt.time_format=none"]
    )
    bank = PromptBank(ds, cfg, PromptBuilder(tiny_tokenizer(), system_prompt="s"))
    ex = make_example(ds, 0, 2, 5)
    first = ex.shown[0]
    assert bank.history_lines(ex)[0] == f"- [Item {first}] (Cat {first % 3})"
    assert bank.item_texts[first] == f"Title: Item {first}\nCategory: Cat {first % 3}"
