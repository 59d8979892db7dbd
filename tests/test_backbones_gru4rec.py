"""GRU4Rec: causality, exact left padding, what a reasoning step is (one recurrent step from the cached
state), all-prefix reasoning, and training in both sample modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from thinkrec.data.batches import TrainSampler, position_ids
from thinkrec.data.split import leave_one_out
from thinkrec.models.base import CachedBackbone, Scorer
from thinkrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from thinkrec.models.model import SeqRecModel
from thinkrec.objectives.cross_entropy import CrossEntropy
from thinkrec.reasoning.config import reasoning_config
from thinkrec.reasoning.reasoner import LatentReasoner

from helpers import build_reasoning_objective, random_dataset

N_ITEMS = 20
INPUTS = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
POS = position_ids(6, 6)


def tiny(layers: int = 2, steps: int = 2) -> SeqRecModel:
    torch.manual_seed(0)
    backbone = GRU4Rec(N_ITEMS, GRU4RecConfig(hidden=8, layers=layers, max_len=6))
    reasoner = LatentReasoner(8, steps) if steps else None
    return SeqRecModel(backbone, Scorer(), reasoner).eval()


def test_shapes_causality_and_exact_padding() -> None:
    gru = tiny().backbone
    assert isinstance(gru, CachedBackbone) and gru.causal
    with torch.no_grad():
        encoded = gru(INPUTS, POS, use_cache=True)
        assert encoded.hidden.shape == (3, 6, 8)
        assert encoded.cache is not None and len(encoded.cache) == 2 and encoded.cache[0][0].shape == (3, 6, 8)
        changed = INPUTS.clone()
        changed[:, -1] = 9
        assert torch.equal(gru(changed, POS).hidden[:, :-1], encoded.hidden[:, :-1])  # the past ignores the future
        # A row's real columns do not depend on how much padding precedes them.
        alone = gru(INPUTS[:1, 2:], position_ids(4, 6)).hidden
        assert torch.allclose(alone, encoded.hidden[:1, 2:], atol=1e-6)
        assert torch.equal(encoded.cache[0][0][0, :2], torch.zeros(2, 8))  # padded columns hold the zero state


def test_zero_steps_is_exactly_the_backbone() -> None:
    model = tiny()
    with torch.no_grad():
        last = model.backbone(INPUTS, POS).hidden[:, -1]
        assert torch.equal(model.encode(INPUTS, POS, steps=0)[:, 0], last)
        assert torch.equal(model.encode(INPUTS, POS)[:, 0], last)
        assert torch.equal(tiny(steps=0).encode(INPUTS, POS)[:, 0], last)


def test_a_reasoning_step_is_one_gru_cell_application_from_the_cached_state() -> None:
    model = tiny(layers=1, steps=2)
    gru = model.backbone
    assert isinstance(gru, GRU4Rec) and isinstance(model.reasoner, LatentReasoner)
    cell = nn.GRUCell(8, 8)
    layer = gru.grus[0]
    assert isinstance(layer, nn.GRU)
    cell.load_state_dict(
        {
            "weight_ih": layer.weight_ih_l0,
            "weight_hh": layer.weight_hh_l0,
            "bias_ih": layer.bias_ih_l0,
            "bias_hh": layer.bias_hh_l0,
        }
    )
    with torch.no_grad():
        states = model.encode(INPUTS, POS)
        encoded = gru(INPUTS, POS, use_cache=True)
        assert encoded.cache is not None
        h = encoded.cache[0][0][:, -1]  # the cached state after the last item
        for k in (1, 2):
            z = gru.input_tokens(states[:, k - 1] + model.reasoner.rpe[k - 1])
            h = cell(z, h)
            assert torch.allclose(gru.final_norm(h), states[:, k], atol=1e-6)


def test_extend_continues_the_recurrence_like_a_longer_sequence() -> None:
    gru = tiny(layers=2).backbone
    assert isinstance(gru, GRU4Rec)
    longer = torch.cat([INPUTS, torch.tensor([[8, 9]] * 3)], dim=1)
    with torch.no_grad():
        full = gru(longer, position_ids(8, 8)).hidden
        encoded = gru(INPUTS, POS, use_cache=True)
        tokens = gru.input_tokens(gru.item_embedding(torch.tensor([[8, 9]] * 3)))
        extended = gru.extend(tokens, encoded)  # default mask: token 2 continues from token 1
        assert torch.allclose(extended.hidden, full[:, -2:], atol=1e-6)


@pytest.mark.parametrize("normalise", [True, False])
def test_all_prefix_reasoning_equals_reasoning_on_each_truncated_prefix(normalise: bool) -> None:
    model = tiny(layers=2, steps=2)
    assert isinstance(model.reasoner, LatentReasoner)
    model.reasoner.normalise_feedback = normalise
    gru = model.cached_backbone
    columns = torch.tensor([[2, 3, 5], [0, 4, 5], [5, 5, 5]])
    with torch.no_grad():
        states = model.reasoner.prefixes(gru, gru(INPUTS, POS, use_cache=True), columns)
        for b in range(3):
            for i in range(3):
                prefix = INPUTS[b : b + 1, : int(columns[b, i]) + 1]
                alone = model.encode(prefix, position_ids(prefix.shape[1], 6))
                assert torch.allclose(states[b, i], alone[0], atol=1e-5), (b, i)


def test_gru_trains_in_all_mode_with_and_without_reasoning() -> None:
    split = leave_one_out(random_dataset(n_users=12, n_items=N_ITEMS, min_len=4, max_len=12))
    sampler = TrainSampler(split, 6, "all")
    batch = next(sampler.batches(8, np.random.default_rng(0)))
    model = tiny().train()
    out = CrossEntropy()(model, batch)
    out.total.backward()
    assert torch.isfinite(out.total)
    for kind in ("erl", "prl"):
        model.zero_grad()
        objective = build_reasoning_objective(reasoning_config(kind=kind, warmup_epochs=0), 1.0, 0)
        loss = objective(model, batch)
        loss.total.backward()
        assert torch.isfinite(loss.total)
        assert isinstance(model.reasoner, LatentReasoner) and model.reasoner.rpe.grad is not None
