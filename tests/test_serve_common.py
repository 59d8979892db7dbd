"""Shared builders for the serving tests (tiny run directories made in code), plus vocabulary tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from thinkrec.config.schema import DataConfig, RunConfig
from thinkrec.models.model import Reasoner, SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.serve.recommender import Recommender, Vocabulary
from thinkrec.storage import atomic_write_json
from thinkrec.train.checkpoint import save_checkpoint

N_ITEMS = 60
MAX_LEN = 8
WORDS = ["Star", "Toy", "Dark", "Lost", "Blue", "Silent", "Iron", "Wild", "Last", "Grand"]
NOUNS = ["Wars", "Story", "Night", "River", "Planet", "Garden", "Empire", "Road"]


def title(i: int) -> str:
    """A made-up title for internal id ``i`` (1-based)."""
    return f"{WORDS[i % len(WORDS)]} {NOUNS[(i // len(WORDS)) % len(NOUNS)]} ({1950 + i})"


def config() -> RunConfig:
    model = SASRecConfig(hidden=16, layers=1, heads=2, max_len=MAX_LEN, dropout=0.0, attn_dropout=0.0)
    return RunConfig(data=DataConfig(name="toy"), model=model)


def tiny_model(cfg: RunConfig, reasoner: Reasoner | None = None, seed: int = 0) -> SeqRecModel:
    """A random SASRec with well-spread weights (so scores are not near-ties)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, N_ITEMS, reasoner)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        model.backbone.item_embedding.weight[0].zero_()
    return model.eval()


def external_ids() -> list[int]:
    return [1000 + 7 * i for i in range(1, N_ITEMS + 1)]


def make_run(root: Path, reasoning: str | None = None) -> Path:
    """A complete run directory: config.json, checkpoints/best.*, items.parquet (a ReaRec run if asked)."""
    cfg = config() if reasoning is None else reasoning_config(reasoning)
    model = tiny_model(cfg) if reasoning is None else reasoning_model(cfg)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "config.json", json.loads(cfg.model_dump_json()))
    save_checkpoint(root / "checkpoints", "best", model, {"epoch": 0})
    table = pa.table(
        {
            "item": pa.array(range(1, N_ITEMS + 1)),
            "external_id": pa.array(external_ids()),
            "title": pa.array([title(i) for i in range(1, N_ITEMS + 1)]),
        }
    )
    pq.write_table(table, root / "items.parquet")
    return root


def reasoning_config(kind: str = "prl") -> RunConfig:
    """A reasoning run: K = 2 trained steps, up to 3 at inference (PRL scores the last step, ERL the mean)."""
    cfg = config()
    return RunConfig.model_validate(
        {**cfg.model_dump(), "reasoning": {"kind": kind, "steps": 2, "max_steps": 3}, "eval": {"inference": "auto"}}
    )


def reasoning_model(cfg: RunConfig, seed: int = 1) -> SeqRecModel:
    r = cfg.reasoning
    reasoner = LatentReasoner(cfg.model.hidden, r.steps, r.table_size, r.normalise_feedback)
    return tiny_model(cfg, reasoner, seed=seed)


def reasoning_recommender(kind: str = "prl") -> Recommender:
    cfg = reasoning_config(kind)
    titles = [title(i) for i in range(1, N_ITEMS + 1)]
    return Recommender(reasoning_model(cfg), Vocabulary([str(e) for e in external_ids()], titles), cfg)


def test_vocabulary_maps_ids_both_ways_as_text() -> None:
    vocab = Vocabulary([10, 20, 30], ["A", "B", "C"])
    assert vocab.internal(20) == 2
    assert vocab.internal("20") == 2
    assert vocab.internal("21") is None
    assert vocab.external_id(3) == 30
    assert vocab.title(1) == "A"


def test_search_is_case_insensitive_ranked_and_limited() -> None:
    vocab = Vocabulary([1, 2, 3, 4, 5], ["The Star Wars", "Star Wars", "Lodestar", "Nothing", "Star Wars: Episode V"])
    assert vocab.search("star wars") == [2, 5, 1]
    assert vocab.search("STAR") == [2, 5, 1, 3]
    assert vocab.search("star", limit=2) == [2, 5]
    assert vocab.search("   ") == []
    assert vocab.search("4") == [4]  # an exact external id comes first
    assert vocab.search("zzz") == []
