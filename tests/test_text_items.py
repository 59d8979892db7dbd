"""Text item representations: whitening / MoE shapes and formulas, UniSRec and MoRec backbones (the scorer
uses the computed table, an item unseen in training is scored from its text), reasoning K=0, checkpoints."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import TrainBatch, position_ids
from thinkrec.data.split import leave_one_out
from thinkrec.models.text_items import MoEAdaptor, ParametricWhitening, TextSASRec, attach_item_text, mark_known_items
from thinkrec.reasoning.config import reasoning_config
from thinkrec.runs import build
from thinkrec.train.checkpoint import load_checkpoint, save_checkpoint

from helpers import build_reasoning_objective, random_dataset

N_ITEMS = 12
TEXT_DIM = 6


class StandInEncoder:
    """A tiny deterministic text encoder: a seeded random vector per distinct text (no model load)."""

    name = "stand-in"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=TEXT_DIM) for t in texts]).astype(
            np.float32
        )


def text_model(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int = 0, **extra: object) -> tuple:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = RunConfig.model_validate(
        {
            "model": {
                "kind": kind,
                "hidden": 8,
                "layers": 1,
                "heads": 2,
                "max_len": 6,
                "text": {"dim": TEXT_DIM},
                **extra,
            },
            "reasoning": {"kind": "prl", "steps": steps} if steps else {"kind": "none"},
        }
    )
    ds = random_dataset(n_users=10, n_items=N_ITEMS, min_len=3, max_len=8)
    model = build(cfg, ds.n_items).eval()
    assert attach_item_text(model, ds, StandInEncoder(), progress=False)
    return model, ds


def test_parametric_whitening_and_moe_formulas() -> None:
    torch.manual_seed(0)
    pw = ParametricWhitening(TEXT_DIM, 4, 0.0)
    with torch.no_grad():
        pw.bias.normal_()
    x = torch.randn(3, 5, TEXT_DIM)
    assert torch.allclose(pw(x), (x - pw.bias) @ pw.linear.weight.T, atol=1e-6)
    # gradients of the centre and the map equal those of the plain formula (the centre is folded past the map)
    upstream = torch.randn(3, 5, 4)
    grads = torch.autograd.grad((pw(x) * upstream).sum(), [pw.bias, pw.linear.weight])
    plain = torch.autograd.grad((((x - pw.bias) @ pw.linear.weight.T) * upstream).sum(), [pw.bias, pw.linear.weight])
    for got, want in zip(grads, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    moe = MoEAdaptor(TEXT_DIM, 4, experts=3, dropout=0.0)
    with torch.no_grad():
        moe.gate.normal_()
    gates = moe.gates(x)
    assert gates.shape == (3, 5, 3) and torch.allclose(gates.sum(-1), torch.ones(3, 5))
    expected = sum(gates[..., e : e + 1] * moe.experts[e](x) for e in range(3))
    out = moe(x)
    assert out.shape == (3, 5, 4) and torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["unisrec", "morec"])
def test_text_backbone_uses_one_computed_table_for_inputs_and_scores(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = text_model(kind, tmp_path, monkeypatch)
    backbone = model.backbone
    assert isinstance(backbone, TextSASRec)
    table = backbone.item_table()
    assert table.shape == (N_ITEMS + 1, 8) and torch.equal(table[0], torch.zeros(8))
    assert torch.equal(model.item_vectors(), table[1:])
    assert model.n_items == N_ITEMS
    inputs = torch.tensor([[0, 3, 5], [1, 2, 4]])
    assert torch.allclose(backbone.item_vectors_of(inputs), table[inputs], atol=1e-6)
    assert (backbone.item_embedding.embedding_dim == 8) == (kind == "unisrec")  # MoRec: no ID embedding
    assert model.score(model.encode(inputs, position_ids(3, 6))[:, -1]).shape == (2, N_ITEMS)


def test_morec_scores_an_item_unseen_in_training_from_its_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, ds = text_model("morec", tmp_path, monkeypatch)
    item = N_ITEMS
    ds.items[ds.items == item] = 1  # the item never occurs in the log, so never in training
    assert not leave_one_out(ds).known_items[item]
    backbone = model.backbone
    assert isinstance(backbone, TextSASRec)
    items = backbone.items
    with torch.no_grad():
        text = items.text[item].float()
        projection = items.projection  # type: ignore[union-attr]
        assert torch.allclose(model.item_vectors()[item - 1], projection(text), atol=1e-3)
        user = torch.randn(1, 8)
        before = model.score(user)[0, item - 1]
        items.text[item] = -items.text[item]  # another text -> another vector and score
        after = model.score(user)[0, item - 1]
    assert not torch.isclose(before, after)


def test_unisrec_without_ids_and_reasoning_zero_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = text_model("unisrec", tmp_path, monkeypatch, steps=2, id_embedding=False, experts=2)
    inputs = torch.tensor([[0, 3, 5], [1, 2, 4]])
    with torch.no_grad():
        plain = model.backbone(inputs, position_ids(3, 6)).hidden[:, -1]
        assert torch.equal(model.encode(inputs, position_ids(3, 6), steps=0)[:, 0], plain)
        assert model.encode(inputs, position_ids(3, 6)).shape == (2, 3, 8)


def test_text_model_checkpoint_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = text_model("morec", tmp_path, monkeypatch)
    save_checkpoint(tmp_path / "ckpt", "best", model, {})
    cfg = RunConfig.model_validate(
        {"model": {"kind": "morec", "hidden": 8, "layers": 1, "max_len": 6, "text": {"dim": TEXT_DIM}}}
    )
    fresh = build(cfg, N_ITEMS).eval()
    load_checkpoint(tmp_path / "ckpt", "best", fresh)
    assert torch.equal(fresh.item_vectors(), model.item_vectors())  # the frozen text table travels along


def test_erl_draws_a_computed_item_table_once_per_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the cross-entropy of the mean and the diversity term score against the same table: one pass of the text
    # encoder (and one dropout draw of it) per batch
    model, _ = text_model("unisrec", tmp_path, monkeypatch, steps=2, adaptor_dropout=0.3)
    model.train()
    backbone = model.backbone
    assert isinstance(backbone, TextSASRec)
    tables: list[int] = []
    vectors = backbone.items.vectors

    def counted(text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        tables.append(ids.numel())
        return vectors(text, ids)

    monkeypatch.setattr(backbone.items, "vectors", counted)
    objective = build_reasoning_objective(reasoning_config(kind="erl", steps=2, warmup_epochs=0), 0.5, seed=1)
    objective.start_epoch(0)
    inputs = torch.tensor([[0, 3, 5, 2], [1, 2, 4, 6]])
    out = objective(model, TrainBatch(inputs, position_ids(4, 6), torch.tensor([7, 8]), "last"))
    assert torch.isfinite(out.total) and out.parts["kl"] > 0
    # the input tokens' vectors (8 ids) and one whole table (N_ITEMS + 1 ids)
    assert sorted(tables) == [inputs.numel(), N_ITEMS + 1]


def test_unseen_items_text_only_removes_their_id_part_in_training_and_at_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, ds = text_model("unisrec", tmp_path, monkeypatch, unseen_items="text_only", adaptor_dropout=0.0)
    backbone = model.backbone
    assert isinstance(backbone, TextSASRec) and backbone.id_known is not None
    item = N_ITEMS
    ds.items[ds.items == item] = 1  # never in the log, so never in training
    known = leave_one_out(ds).known_items
    assert mark_known_items(model, known) and not known[item]
    seen = int(np.flatnonzero(known[1:])[0]) + 1
    with torch.no_grad():
        backbone.item_embedding.weight.normal_()
    text = backbone.items.table()
    ids = backbone.item_embedding.weight
    for mode in (model.eval, model.train):
        mode()
        table = backbone.item_table()
        torch.testing.assert_close(table[item], text[item])  # text alone
        torch.testing.assert_close(table, text + ids * torch.from_numpy(known)[:, None])  # seen: text + ID
        pair = torch.tensor([[item, seen]])
        torch.testing.assert_close(backbone.item_vectors_of(pair), table[pair])
    # the unseen item's ID row gets no gradient from the scores (it used to be pushed down as a negative)
    (backbone.item_table() @ torch.randn(8)).logsumexp(0).backward()
    assert backbone.item_embedding.weight.grad is not None
    assert torch.count_nonzero(backbone.item_embedding.weight.grad[item]) == 0
    assert torch.count_nonzero(backbone.item_embedding.weight.grad[seen]) > 0
    # saved with the checkpoint: a loaded model knows which items were unseen
    save_checkpoint(tmp_path / "ckpt", "best", model, {})
    fresh, _ = text_model("unisrec", tmp_path, monkeypatch, unseen_items="text_only", adaptor_dropout=0.0)
    load_checkpoint(tmp_path / "ckpt", "best", fresh)
    assert fresh.backbone.id_known is not None and torch.equal(fresh.backbone.id_known, torch.from_numpy(known).float())


def test_id_dropout_leaves_id_parts_out_only_while_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = text_model("unisrec", tmp_path, monkeypatch, id_dropout=1.0, adaptor_dropout=0.0)
    backbone = model.backbone
    assert isinstance(backbone, TextSASRec)
    with torch.no_grad():
        backbone.item_embedding.weight.normal_()
    text, ids = backbone.items.table(), backbone.item_embedding.weight
    inputs = torch.tensor([[0, 3, 5], [1, 2, 4]])
    model.train()
    torch.testing.assert_close(backbone.item_table(), text)  # every ID part dropped
    torch.testing.assert_close(backbone.item_vectors_of(inputs), text[inputs])
    model.eval()
    torch.testing.assert_close(backbone.item_table(), text + ids)  # inference keeps them all
    half, _ = text_model("unisrec", tmp_path, monkeypatch, id_dropout=0.5, adaptor_dropout=0.0)
    half.train()
    torch.manual_seed(3)
    many = torch.randint(1, N_ITEMS + 1, (4000,))
    hb = half.backbone
    assert isinstance(hb, TextSASRec)
    with torch.no_grad():
        dropped = (hb.item_vectors_of(many) - hb.items(many)).abs().sum(-1) == 0
    assert 0.45 < dropped.float().mean().item() < 0.55  # each occurrence on its own, not scaled


def test_id_options_need_the_id_embedding() -> None:
    with pytest.raises(ValueError, match=r"need model\.id_embedding = true"):
        RunConfig.model_validate({"model": {"kind": "unisrec", "id_embedding": False, "id_dropout": 0.2}})
    with pytest.raises(ValueError, match=r"need model\.id_embedding = true"):
        RunConfig.model_validate({"model": {"kind": "unisrec", "id_embedding": False, "unseen_items": "text_only"}})


@pytest.mark.parametrize("kind", ["unisrec", "morec"])
def test_inference_keeps_the_item_table_until_a_parameter_changes(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = text_model(kind, tmp_path, monkeypatch)
    backbone: TextSASRec = model.backbone
    ids = torch.tensor([[0, 3, 5, 12], [1, 1, 0, 7]])

    def computed() -> torch.Tensor:  # the per-id path, without any kept table
        out: torch.Tensor = backbone.items(ids)
        return out + backbone.id_part(ids, backbone.item_embedding(ids)) if backbone.use_ids else out

    calls = 0
    table_of = backbone.items.table

    def counted() -> torch.Tensor:
        nonlocal calls
        calls += 1
        return table_of()

    monkeypatch.setattr(backbone.items, "table", counted)
    with torch.no_grad():
        first = backbone.item_table()
        assert torch.equal(backbone.item_vectors_of(ids), first[ids])  # looked up in the kept table
        torch.testing.assert_close(first[ids], computed(), rtol=1e-6, atol=1e-6)
        backbone.item_table()
        assert calls == 1  # kept
        backbone.items.text.mul_(2.0)  # a buffer (or parameter) changes: the table is formed again
        second = backbone.item_table()
        assert calls == 2 and not torch.equal(first, second)
        torch.testing.assert_close(backbone.item_vectors_of(ids), computed(), rtol=1e-6, atol=1e-6)
    # with autograd, in training or under autocast, nothing kept is used: inputs are computed per id
    assert backbone._kept_table() is None and backbone.item_vectors_of(ids).requires_grad
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert backbone._kept_table() is None
    backbone.train()
    with torch.no_grad():
        assert backbone._kept_table() is None
