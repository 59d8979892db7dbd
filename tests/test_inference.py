"""Which inference runner a trained model gets: the folded one on the CPU where it applies, the plain one
(forward pass and extend) elsewhere."""

from __future__ import annotations

import pytest
import torch

from thinkrec.data.batches import position_ids
from thinkrec.inference.folded import reasoning_cache
from thinkrec.inference.runner import FoldedRunner, PlainRunner, runner_for, trimmed
from thinkrec.models.bert4rec import BERT4RecConfig
from thinkrec.models.gru4rec import GRU4RecConfig
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.reasoning.reasoner import LatentReasoner


def _model(cfg: SASRecConfig | BERT4RecConfig | GRU4RecConfig, steps: int) -> SeqRecModel:
    torch.manual_seed(0)
    model = build_model(cfg, n_items=20)
    if steps:
        model.reasoner = LatentReasoner(8, steps)
    return model.eval()


def test_the_folded_runner_serves_sasrec_family_reasoning_on_the_cpu_only() -> None:
    sasrec = _model(SASRecConfig(hidden=8, layers=1, heads=2, max_len=6), steps=2)
    bert = _model(BERT4RecConfig(hidden=8, layers=1, heads=2, max_len=6), steps=2)
    assert isinstance(runner_for(sasrec), FoldedRunner) and isinstance(runner_for(bert, "auto"), FoldedRunner)
    # a GPU gets the plain path (the folded kernels are chosen for CPUs); naming it moves nothing
    assert type(runner_for(sasrec, "cuda")) is PlainRunner
    assert type(runner_for(_model(SASRecConfig(hidden=8, layers=1, heads=2, max_len=6), steps=0))) is PlainRunner
    gru = _model(GRU4RecConfig(hidden=8, max_len=6), steps=2)
    assert type(runner_for(gru)) is PlainRunner
    with pytest.raises(TypeError, match="SASRec-family"):
        FoldedRunner.from_model(gru)


def test_a_reasoning_cache_has_room_for_its_steps_only() -> None:
    model = _model(SASRecConfig(hidden=8, layers=2, heads=2, max_len=6), steps=2)
    runner = FoldedRunner.from_model(model)
    inputs = torch.tensor([[0, 3, 4], [1, 2, 5]])
    with torch.no_grad():
        part = runner.encoder.encode(inputs, position_ids(3, 6))
        cache = reasoning_cache([part], 2, 3, 1)
        runner.encoder.extend_slot(torch.randn(2, 1, 8), cache, 1)
        with pytest.raises(ValueError, match="room"):
            runner.encoder.extend_slot(torch.randn(2, 1, 8), cache, 2)
        with pytest.raises(ValueError, match="does not fit"):
            reasoning_cache([part], 1, 3, 1)


def test_trimming_keeps_one_column_of_an_all_padding_batch() -> None:
    assert trimmed(torch.tensor([[0, 0, 3], [0, 1, 2]])).tolist() == [[0, 3], [1, 2]]
    assert trimmed(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 1)
