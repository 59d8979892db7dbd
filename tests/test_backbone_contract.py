"""A new backbone needs only its forward pass and ``extend`` (the reasoning step) -- plus ``input_tokens``,
here the identity -- to reason, to train all prefixes at once and to be evaluated: a toy backbone written in
this file, run through the plain inference path."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from thinkrec.data.batches import eval_histories, position_ids
from thinkrec.data.split import leave_one_out
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.protocol import EvalConfig
from thinkrec.inference.runner import PlainRunner, runner_for
from thinkrec.models.base import CachedBackbone, ChainBackbone, Encoded, Scorer
from thinkrec.models.model import SeqRecModel
from thinkrec.reasoning.reasoner import LatentReasoner

from helpers import random_dataset

HIDDEN, MAX_LEN = 8, 10


class MeanBackbone(nn.Module):
    """The state of a column: ``tanh(W mean(x_j) + b)`` over the input vectors ``x_j`` it may see (itself and
    the earlier real columns). Its cache is the input vectors of every column, one ``(x, x)`` pair."""

    causal = True

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.hidden_size, self.max_len = HIDDEN, MAX_LEN
        self.item_embedding = nn.Embedding(n_items + 1, HIDDEN, padding_idx=0)
        self.mix = nn.Linear(HIDDEN, HIDDEN)

    def input_tokens(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors

    def _states(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen = mask.to(x.dtype)  # [B, T, S]
        return torch.tanh(self.mix(seen @ x / seen.sum(-1, keepdim=True).clamp(min=1.0)))

    def forward(
        self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False, last_only: bool = False
    ) -> Encoded:
        pad = inputs == 0
        w = inputs.shape[1]
        x = self.item_embedding(inputs)
        mask = torch.ones(w, w, dtype=torch.bool, device=inputs.device).tril()[None] & ~pad[:, None, :]
        return Encoded(self._states(x, mask), [(x, x)] if use_cache else None, pad)

    def extend(self, tokens: torch.Tensor, encoded: Encoded, extra_mask: torch.Tensor | None = None) -> Encoded:
        assert encoded.cache is not None and encoded.key_padding is not None
        b, t, _ = tokens.shape
        past, pad = encoded.cache[0][0], encoded.key_padding
        x = torch.cat([past, tokens], dim=1)
        new = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()[None].expand(b, t, t)
        mask = torch.cat([(~pad)[:, None, :].expand(b, t, pad.shape[1]), new], dim=2)
        if extra_mask is not None:
            mask = mask & extra_mask
        grown = torch.cat([pad, torch.zeros(b, t, dtype=torch.bool, device=pad.device)], dim=1)
        return Encoded(self._states(x, mask), [(x, x)], grown)


def _model(n_items: int, steps: int = 2) -> SeqRecModel:
    torch.manual_seed(0)
    model = SeqRecModel(MeanBackbone(n_items), Scorer(), LatentReasoner(HIDDEN, steps))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def test_a_backbone_with_forward_and_extend_reasons_and_is_evaluated() -> None:
    ds = random_dataset(n_users=50, n_items=40, seed=5)
    split = leave_one_out(ds)
    model = _model(ds.n_items)
    assert isinstance(model.backbone, CachedBackbone) and not isinstance(model.backbone, ChainBackbone)
    assert isinstance(runner_for(model), PlainRunner)
    cfg = EvalConfig(batch_size=16, encode_tokens=30, workers=1)
    result = evaluate(model, split, split.test, cfg)
    assert result.step_ranks.shape == (3, len(split.test)) and result.mean_ranks is not None
    # row workers and passes change nothing
    np.testing.assert_array_equal(
        evaluate(model, split, split.test, cfg.model_copy(update={"workers": 2})).ranks, result.ranks
    )
    # each sample alone, untrimmed, ranked by hand
    histories = eval_histories(split, split.test, MAX_LEN)
    items = model.item_vectors()
    with torch.no_grad():
        states = model.encode(torch.from_numpy(histories), position_ids(MAX_LEN, MAX_LEN))
    assert (states[:, 1] - states[:, 0]).abs().amax() > 0.1  # the reasoning steps move the state
    for i, target in enumerate(split.test.targets):
        for k in range(3):
            scores = items @ states[i, k]
            assert result.step_ranks[k, i] == int((scores >= scores[target - 1]).sum()) - 1, (i, k)
        scores = items @ states[i].mean(0)
        assert result.mean_ranks[i] == int((scores >= scores[target - 1]).sum()) - 1
    assert np.array_equal(result.ranks, result.step_ranks[-1])
    assert len(np.unique(result.ranks)) > 5


def test_all_prefix_reasoning_through_extend_equals_each_prefix_alone() -> None:
    """Training's all-prefix path (one extend per step with the prefix mask) over the toy backbone."""
    model = _model(30, steps=3)
    assert isinstance(model.reasoner, LatentReasoner)
    inputs = torch.tensor([[0, 0, 4, 9, 2, 7], [3, 1, 5, 8, 6, 2]])
    positions = position_ids(6, MAX_LEN)
    with torch.no_grad():
        encoded = model.cached_backbone(inputs, positions, use_cache=True)
        every = model.reasoner.prefixes(model.cached_backbone, encoded, torch.arange(6).expand(2, 6))
        for t in range(2, 6):
            alone = model.encode(inputs[:, : t + 1], positions[: t + 1])
            torch.testing.assert_close(every[:, t], alone, atol=1e-6, rtol=1e-5)
