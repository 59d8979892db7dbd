"""BERT4Rec: bidirectional masks, prefix-masked reasoning (cached == recomputed), cloze masking and loss,
and the rejection of all-prefix next-item training."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import TrainBatch, position_ids
from thinkrec.errors import ConfigError, ThinkrecError
from thinkrec.inference.runner import FoldedRunner, runner_for
from thinkrec.models.base import CachedBackbone, Scorer
from thinkrec.models.bert4rec import BERT4Rec, BERT4RecConfig
from thinkrec.models.model import SeqRecModel
from thinkrec.models.sasrec import SASRec, SASRecConfig
from thinkrec.objectives.cloze import ClozeObjective, cloze_mask
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.reasoning.reasoner import LatentReasoner
from thinkrec.runs import build_objective
from thinkrec.seed import Seeds

N_ITEMS = 20


def tiny(objective: str = "next", steps: int = 2) -> SeqRecModel:
    torch.manual_seed(0)
    cfg = BERT4RecConfig(hidden=8, layers=2, heads=2, max_len=6, train_objective=objective)  # type: ignore[arg-type]
    backbone = BERT4Rec(N_ITEMS, cfg)  # first, so it is the same with and without a reasoner
    reasoner = LatentReasoner(8, steps) if steps else None
    return SeqRecModel(backbone, Scorer(), reasoner).eval()


INPUTS = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
POS = position_ids(6, 6)


def test_shapes_and_protocol() -> None:
    model = tiny()
    assert isinstance(model.backbone, CachedBackbone)
    assert not model.backbone.causal
    encoded = model.backbone(INPUTS, POS, use_cache=True)
    assert encoded.hidden.shape == (2, 6, 8)
    assert encoded.cache is not None and len(encoded.cache) == 2
    assert model.encode(INPUTS, POS).shape == (2, 3, 8)
    assert model.item_vectors().shape == (N_ITEMS, 8)  # the [MASK] vector is not an item


def test_attention_is_bidirectional_over_items_and_ignores_padding() -> None:
    bert = tiny().backbone
    torch.manual_seed(0)
    sas = SASRec(N_ITEMS, SASRecConfig(hidden=8, layers=2, heads=2, max_len=6)).eval()
    changed = INPUTS.clone()
    changed[:, -1] = 9  # change the newest item only
    with torch.no_grad():
        # BERT4Rec: earlier columns see the later item; SASRec: they do not.
        assert not torch.allclose(bert(INPUTS, POS).hidden[:, 2], bert(changed, POS).hidden[:, 2])
        assert torch.allclose(sas(INPUTS, POS).hidden[:, 2], sas(changed, POS).hidden[:, 2])
        # More left padding changes nothing on the real columns.
        short = INPUTS[:1, 2:]
        assert torch.allclose(bert(INPUTS[:1], POS).hidden[:, 2:], bert(short, position_ids(4, 6)).hidden, atol=1e-6)


def test_zero_steps_is_the_backbone_last_column() -> None:
    model = tiny()
    with torch.no_grad():
        last = model.backbone(INPUTS, POS).hidden[:, -1]
        # At inference the final block computes the newest column alone: a matmul of another shape, whose
        # rounding differs by CPU (equal bit for bit on Intel AMX, ~1e-7 apart on AMD EPYC), hence allclose.
        assert torch.allclose(model.encode(INPUTS, POS, steps=0)[:, 0], last, atol=1e-6)
        assert torch.allclose(model.encode(INPUTS, POS)[:, 0], last, atol=1e-6)
        assert torch.allclose(tiny(steps=0).encode(INPUTS, POS)[:, 0], last, atol=1e-6)
        # ... and one reasoning step moves the state far more than that tolerance.
        assert not torch.allclose(model.encode(INPUTS, POS, steps=1)[:, 1], last, atol=1e-3)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_cached_reasoning_equals_recomputing_with_prefix_masking(steps: int, folded: bool) -> None:
    """Recompute [items, z_1..z_k] from scratch: items attend to all items only (bidirectionally), reasoning
    token j to all real items and tokens <= j. Its last column must equal the cached r_k (the plain path,
    and the CPU inference runner's folded cache)."""
    model = tiny(steps=3)
    bert = model.backbone
    assert isinstance(bert, BERT4Rec) and isinstance(model.reasoner, LatentReasoner)
    encode = FoldedRunner.from_model(model).encode if folded else model.encode
    with torch.no_grad():
        states = encode(INPUTS, POS, steps)
        items = bert.embed(INPUTS, POS)
        pad = INPUTS == 0
        r = states[:, 0]
        tokens = []
        for k in range(1, steps + 1):
            tokens.append(bert.input_tokens(r + model.reasoner.rpe[k - 1])[:, None])
            x = torch.cat([items, *tokens], dim=1)
            w, s = items.shape[1], x.shape[1]
            mask = torch.zeros(2, s, s, dtype=torch.bool)
            mask[:, :w, :w] = ~pad[:, None, :] | torch.eye(w, dtype=torch.bool)
            mask[:, w:, :w] = ~pad[:, None, :]
            mask[:, w:, w:] = torch.ones(k, k, dtype=torch.bool).tril()
            r = bert.run_blocks(x, mask[:, None], None).hidden[:, -1]
            assert torch.allclose(r, states[:, k], atol=1e-5), k


def test_all_prefix_next_item_training_is_rejected() -> None:
    model = tiny(steps=0)
    batch = TrainBatch(INPUTS, POS, torch.tensor([[-100, -100, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7]]), "all")
    with pytest.raises(ThinkrecError, match="sample_mode='last'"):
        CrossEntropy()(model, batch)
    # rejected when the config loads, before anything is built
    with pytest.raises(ConfigError, match="sample_mode='last'"):
        load_config(None, ["model.kind=bert4rec", "train.sample_mode=all"])
    with pytest.raises(ConfigError, match="no reasoning variant"):
        load_config(None, ["model.kind=bert4rec", "model.train_objective=cloze", "reasoning.kind=erl"])
    last = RunConfig.model_validate({"model": {"kind": "bert4rec"}, "train": {"sample_mode": "last"}})
    assert isinstance(build_objective(last), CrossEntropy)
    cloze = RunConfig.model_validate({"model": {"kind": "bert4rec", "train_objective": "cloze"}})
    assert isinstance(build_objective(cloze), ClozeObjective)


def test_cloze_mask_hand_checked() -> None:
    inputs = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 8], [0, 0, 0, 0, 0]])
    g = torch.Generator().manual_seed(3)
    draws = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(3))
    chosen = cloze_mask(inputs, 0.5, g)
    expected = (draws < 0.5) & (inputs != 0)
    for row in range(2):
        if not expected[row].any():
            expected[row, -1] = True
    assert torch.equal(chosen, expected)
    # Never a padding column; a row that drew nothing gets its last item masked.
    nothing = cloze_mask(inputs, 1e-9)
    assert nothing.tolist() == [[False] * 4 + [True], [False] * 4 + [True], [False] * 5]
    everything = cloze_mask(inputs, 1 - 1e-9)
    assert torch.equal(everything, inputs != 0)


def test_cloze_loss_is_cross_entropy_on_the_masked_items() -> None:
    model = tiny("cloze", steps=0).train()
    model.backbone.input_dropout.p = 0.0
    for block in model.backbone.blocks:  # type: ignore[attr-defined]
        block.attn_dropout = 0.0
        block.dropout.p = 0.0
        block.ffn[2].p = 0.0
    batch = TrainBatch(
        torch.tensor([[0, 3, 4, 5, 6], [1, 2, 3, 4, 5]]), position_ids(5, 6), torch.tensor([7, 6]), "last"
    )
    objective = ClozeObjective(0.4, Seeds(1))
    out = objective(model, batch)
    # By hand: the same draws, [MASK] in place, cross-entropy of the masked columns.
    seq = torch.cat([batch.inputs, batch.targets[:, None]], 1)[:, -6:]
    g = torch.Generator().manual_seed(Seeds(1).torch_seed("cloze-mask/0"))
    chosen = cloze_mask(seq, 0.4, g)
    bert = model.backbone
    assert isinstance(bert, BERT4Rec)
    masked = torch.where(chosen, N_ITEMS + 1, seq)
    hidden = bert.encode_tokens(masked, position_ids(6, 6)).hidden
    expected = F.cross_entropy(hidden[chosen] @ model.item_vectors().T, seq[chosen] - 1)
    assert torch.allclose(out.total, expected, atol=1e-5)
    out.total.backward()
    assert bert.mask_embedding.grad is not None and bert.mask_embedding.grad.abs().sum() > 0


def test_cloze_model_appends_a_mask_at_inference() -> None:
    model = tiny("cloze", steps=0)
    bert = model.backbone
    assert isinstance(bert, BERT4Rec)
    with torch.no_grad():
        short = torch.tensor([[3, 4, 5]])
        appended, positions = bert.append_mask(short)
        assert appended.tolist() == [[3, 4, 5, N_ITEMS + 1]] and positions.tolist() == [2, 3, 4, 5]
        full, _ = bert.append_mask(INPUTS)
        assert full.shape == (2, 6) and full[1].tolist() == [2, 3, 4, 5, 6, N_ITEMS + 1]
        assert torch.equal(
            model.encode(short, position_ids(3, 6))[:, 0], bert.encode_tokens(appended, positions).hidden[:, -1]
        )


@pytest.mark.skipif("positions" not in SASRecConfig.model_fields, reason="SASRec has no model.positions option")
def test_position_option_is_honoured_like_sasrec() -> None:
    for positions in ("from_end", "from_start"):
        torch.manual_seed(0)
        bert = BERT4Rec(N_ITEMS, BERT4RecConfig(hidden=8, max_len=6, positions=positions)).eval()  # type: ignore[call-arg]
        sas = SASRec(N_ITEMS, SASRecConfig(hidden=8, max_len=6, positions=positions)).eval()  # type: ignore[call-arg]
        sas.load_state_dict(bert.state_dict(), strict=False)
        with torch.no_grad():
            assert torch.equal(bert.embed(INPUTS, POS), sas.embed(INPUTS, POS)), positions


@pytest.mark.parametrize("objective", ["next", "cloze"])
def test_reasoning_in_passes_equals_one_pass(objective: str) -> None:
    """The evaluator's path (item passes of a few rows, each trimmed; reasoning once over the laid-out folded
    cache) gives the states of one pass, also when a cloze model appends its [MASK] column (one more column
    than the histories: ``FoldedEncoder.width``)."""
    model = tiny(objective, steps=2)
    inputs = torch.tensor([[0, 0, 0, 0, 7, 8], [0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])[:, 1:]  # width 5 < max_len
    runner = runner_for(model)
    assert isinstance(runner, FoldedRunner)
    with torch.no_grad():
        whole = model.encode(inputs, position_ids(5, 6), 2)
        torch.testing.assert_close(runner.encode(inputs, position_ids(5, 6), 2), whole, atol=1e-5, rtol=1e-5)
        for rows in (1, 2):
            passes = runner.encode_passes(inputs, rows, 2)
            torch.testing.assert_close(passes, whole, atol=1e-5, rtol=1e-5)
    assert runner.encoder.width(5) == (6 if objective == "cloze" else 5)
