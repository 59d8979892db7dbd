"""Small made-up datasets for unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.data.dataset import SequenceDataset
from thinkrec.models.sasrec import SASRecConfig


def random_dataset(
    n_users: int = 40, n_items: int = 30, min_len: int = 1, max_len: int = 25, seed: int = 0
) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n_users)
    items = rng.integers(1, n_items + 1, int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # Chronological, with ties: times grow by 0 or 1 per step within a user, users interleave in time.
    steps = rng.integers(0, 2, int(lengths.sum()))
    times = np.concatenate(
        [rng.integers(0, 50) + np.cumsum(steps[offsets[u] : offsets[u + 1]]) for u in range(n_users)]
    )
    return SequenceDataset(
        name="toy",
        offsets=offsets,
        items=items,
        timestamps=times,
        user_ids=np.arange(n_users) + 100,
        item_ids=np.arange(n_items) + 1000,
        item_text={"title": ["", *(f"item {i}" for i in range(1, n_items + 1))]},
    )


def cyclic_dataset(n_users: int = 200, n_items: int = 50, length: int = 30, seed: int = 0) -> SequenceDataset:
    """Each user walks the catalogue in steps of +1 from a random start: perfectly predictable."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    items = ((starts[:, None] + np.arange(length)[None, :]) % n_items + 1).ravel()
    offsets = np.arange(n_users + 1) * length
    return SequenceDataset(
        name="cyclic",
        offsets=offsets,
        items=items,
        timestamps=np.tile(np.arange(length), n_users),
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items) + 1,
    )


def write_walk_csv(folder: Path, n_users: int, n_items: int, length: int, seed: int = 0) -> Path:
    """``events.csv`` (user_id, item_id, ts) where every user walks the catalogue in steps of +1."""
    rng = np.random.default_rng(seed)
    rows = ["user_id,item_id,ts"]
    for user in range(n_users):
        start = rng.integers(0, n_items)
        rows += [f"u{user},{(start + i) % n_items + 1},{1000 + 10 * i}" for i in range(length)]
    path = folder / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


TITLE_WORDS = ["zebra", "a quiet harbour", "x", "ninety-nine red balloons", "oslo", "!!", "qqqq", "m", "tea", "yo"]


def write_tiny_llm_setup(
    root: Path,
    n_users: int,
    train_users: int,
    eval_users: int,
    users_per_step: int,
    extra_model: str = "",
    extra_recpo: str = "",
) -> Path:
    """A tiny random LM directory (``root/model``), a titled 10-item toy log and an LLM config using them
    (``root/llm.toml``, 2 RecPO steps of groups of 2, 4 new tokens); returns ``root``. Needs the llm extra."""
    from thinkrec.llm.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_llama(len(tok), init_std=0.5).save_pretrained(str(root / "model"))  # distinct item vectors
    tok.save_pretrained(str(root / "model"))
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        for j in range(7):
            lines.append(f"u{u},i{(u * 3 + j) % 10},{1000 + 3600 * j + u}")
    (root / "log.csv").write_text("\n".join(lines) + "\n")
    titles = "".join(f"i{i},Film {i} {TITLE_WORDS[i]}\n" for i in range(10))
    (root / "items.csv").write_text("item_id,title\n" + titles)
    (root / "llm.toml").write_text(
        f"""
[data]
name = "toy"
source = {{ format = "table", path = "{root / "log.csv"}", items_path = "{root / "items.csv"}" }}
split = {{ kind = "loo" }}
[sample]
train_users = {train_users}
eval_users = {eval_users}
history_len = 3
[model]
path = "{root / "model"}"
system_prompt = "s"
max_item_tokens = 12
{extra_model}
[recpo]
steps = 2
users_per_step = {users_per_step}
group_size = 2
max_new_tokens = 4
{extra_recpo}
[eval]
item_batch_size = 4
"""
    )
    return root


def build_reasoning_objective(cfg: Any, tau: float, seed: int) -> Any:
    """The ERL or PRL objective of reasoning settings ``cfg`` at temperature ``tau`` (through the registry)."""
    from thinkrec.objectives import ObjectiveContext, build_objective
    from thinkrec.reasoning.config import ERLConfig, PRLConfig

    assert isinstance(cfg, ERLConfig | PRLConfig)
    model = SASRecConfig(temperature=tau)
    return build_objective(cfg.kind, ObjectiveContext(model, cfg.model_copy(update={"tau": tau}), seed))


def write_walk_shop(
    folder: Path, n_users: int, n_items: int, length: int, model: str = "", train: str = "", eval: str = ""
) -> Path:
    """``events.csv`` (:func:`write_walk_csv`) and ``shop.toml``: a small config reading it, with extra lines
    for its ``[model]``, ``[train]`` and ``[eval]`` tables."""
    write_walk_csv(folder, n_users=n_users, n_items=n_items, length=length)
    path = folder / "shop.toml"
    path.write_text(
        f'[data]\nname = "shop"\nsource = {{ format = "table", path = "{folder / "events.csv"}", time_col = "ts" }}\n'
        f"\n[model]\nhidden = 16\nlayers = 1\nmax_len = 8\n{model}"
        f"\n[train]\nbatch_size = 32\nlr = 0.01\nprogress = false\n{train}"
        f"\n[eval]\n{eval}"
    )
    return path


def train_walk_prl_run(folder: Path, n_users: int = 80, n_items: int = 20, length: int = 10) -> None:
    """A tiny PRL run (K = 2) in ``folder/run``, trained through the CLI on :func:`write_walk_shop`'s log
    (the caller sets the working directory to ``folder`` and the cache directory)."""
    from thinkrec.cli.main import main

    write_walk_shop(
        folder,
        n_users=n_users,
        n_items=n_items,
        length=length,
        model="temperature = 0.2\n",
        train='epochs = 2\nvalid_metric = "NDCG@5"\n',
        eval="ks = [5, 20]\n",
    )
    assert main(["train", "shop.toml", "reasoning.kind=prl", "reasoning.warmup_epochs=1", "--run-dir", "run"]) == 0
