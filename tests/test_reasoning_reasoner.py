"""LatentReasoner: the KV-cache path equals recomputing the extended sequence, all-prefix reasoning equals
one prefix per row, K = 0 is the backbone."""

from __future__ import annotations

import pytest
import torch

from thinkrec.errors import ThinkrecError
from thinkrec.inference.runner import FoldedRunner, PlainRunner, runner_for
from thinkrec.models.base import CachedBackbone, ChainBackbone, Encoded
from thinkrec.models.model import SeqRecModel
from thinkrec.models.registry import build_model
from thinkrec.models.sasrec import SASRec, SASRecConfig
from thinkrec.reasoning.reasoner import LatentReasoner

HIDDEN = 16
INPUTS = torch.tensor(
    [
        [0, 0, 0, 0, 3, 9, 4],
        [5, 1, 7, 2, 8, 6, 3],
        [0, 0, 0, 0, 0, 0, 11],
        [0, 0, 12, 12, 4, 2, 1],
    ]
)
POSITIONS = torch.arange(3, 10)  # the last 7 positions of max_len = 10
# block layouts: "query" is the original SASRec code's (RecTools'): query-only LayerNorm, ReLU, no input LayerNorm
LAYOUTS: dict[str, dict[str, object]] = {
    "pre": {},
    "post": {"norm": "post"},
    "query": {"norm": "query", "activation": "relu", "input_norm": False},
}


def _model(steps: int = 3, normalise: bool = True, seed: int = 0, norm: str = "pre") -> SeqRecModel:
    torch.manual_seed(seed)
    cfg = SASRecConfig(hidden=HIDDEN, layers=2, heads=2, max_len=10, **LAYOUTS[norm])  # type: ignore[arg-type]
    model = build_model(cfg, n_items=15)
    with torch.no_grad():  # weights large enough that every sub-layer and every RPE row matters
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name:
                p.normal_(0.0, 0.3)
    model.reasoner = LatentReasoner(HIDDEN, steps, normalise_feedback=normalise)
    with torch.no_grad():
        model.reasoner.rpe.normal_(0.0, 1.0)
    return model.eval()


def _recompute(model: SeqRecModel, inputs: torch.Tensor, positions: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference without any cache: items + reasoning tokens fed as ONE sequence through every block, with
    the mask written out (items: causal over real items; reasoning tokens: all real items + causal)."""
    backbone = model.backbone
    assert isinstance(backbone, SASRec) and isinstance(model.reasoner, LatentReasoner)
    items = backbone.embed(inputs, positions)
    pad = inputs == 0
    b, w = inputs.shape
    tokens: list[torch.Tensor] = []
    states = []
    for k in range(steps + 1):
        s = w + k
        mask = torch.zeros(b, s, s, dtype=torch.bool)
        causal = torch.ones(w, w, dtype=torch.bool).tril()
        mask[:, :w, :w] = (causal & ~pad[:, None, :]) | torch.eye(w, dtype=torch.bool)
        mask[:, w:, :w] = ~pad[:, None, :]
        mask[:, w:, w:] = torch.ones(k, k, dtype=torch.bool).tril()
        r = backbone.run_blocks(torch.cat([items, *tokens], dim=1), mask[:, None], None).hidden[:, -1]
        states.append(r)
        z = r + model.reasoner.rpe[k] if k < steps else r
        tokens.append((backbone.input_tokens(z) if model.reasoner.normalise_feedback else z)[:, None])
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("norm", list(LAYOUTS))
@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_cached_reasoning_equals_recomputing_the_extended_sequence(steps: int, normalise: bool, norm: str) -> None:
    model = _model(steps=3, normalise=normalise, norm=norm)
    with torch.no_grad():
        cached = model.encode(INPUTS, POSITIONS, steps)  # the plain path: forward, then extend (chains)
        folded = FoldedRunner.from_model(model).encode(INPUTS, POSITIONS, steps)  # the CPU inference runner
        full = _recompute(model, INPUTS, POSITIONS, steps)
    assert cached.shape == folded.shape == (len(INPUTS), steps + 1, HIDDEN)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(folded, full, atol=1e-5, rtol=0)
    # the steps really differ from each other (the test is not comparing constants)
    assert (cached[:, 1:] - cached[:, :-1]).abs().amax() > 0.1


def test_normalising_the_feedback_changes_the_states() -> None:
    with torch.no_grad():
        a = _model(normalise=True).encode(INPUTS, POSITIONS)
        b = _model(normalise=False).encode(INPUTS, POSITIONS)
    torch.testing.assert_close(a[:, 0], b[:, 0])  # same backbone
    assert (a[:, 1:] - b[:, 1:]).abs().amax() > 0.1


def test_zero_steps_is_exactly_the_backbone_and_fewer_steps_are_a_prefix() -> None:
    model = _model()
    assert isinstance(model.reasoner, LatentReasoner)
    with torch.no_grad():
        plain = model.backbone(INPUTS, POSITIONS).hidden[:, -1:]
        # K = 0 computes only the last column of the final block: the same numbers up to float rounding
        torch.testing.assert_close(model.encode(INPUTS, POSITIONS, 0), plain, atol=1e-6, rtol=1e-6)
        assert torch.equal(model.reasoner(model.cached_backbone, model.backbone(INPUTS, POSITIONS), 0), plain)
        three = model.encode(INPUTS, POSITIONS, 3)
        torch.testing.assert_close(model.encode(INPUTS, POSITIONS, 1), three[:, :2], atol=1e-6, rtol=0)
        runner = FoldedRunner.from_model(model)
        assert torch.equal(runner.encode(INPUTS, POSITIONS, 0), model.encode(INPUTS, POSITIONS, 0))
        three = runner.encode(INPUTS, POSITIONS, 3)
        torch.testing.assert_close(runner.encode(INPUTS, POSITIONS, 1), three[:, :2], atol=1e-6, rtol=0)
    with pytest.raises(ThinkrecError, match=r"reasoning position embeddings for 0\.\.3"):
        model.encode(INPUTS, POSITIONS, 4)
    with pytest.raises(ThinkrecError, match=r"reasoning position embeddings for 0\.\.3"):
        runner.encode(INPUTS, POSITIONS, 4)


def test_the_reasoning_position_embeddings_are_the_only_new_parameters() -> None:
    torch.manual_seed(0)
    plain = build_model(SASRecConfig(hidden=HIDDEN, layers=2, heads=2, max_len=10), n_items=15)
    reasoning = _model(steps=2)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in reasoning.parameters()) - n_plain == 2 * HIDDEN
    wide = LatentReasoner(HIDDEN, steps=2, max_steps=4)
    assert wide.rpe.shape == (4, HIDDEN) and wide.steps == 2


@pytest.mark.parametrize("norm", list(LAYOUTS))
@pytest.mark.parametrize("normalise", [True, False])
def test_all_prefix_reasoning_equals_one_prefix_per_row(normalise: bool, norm: str) -> None:
    """Every prefix of every row in one pass == the 'last' path (model.encode) on each prefix alone,
    with the same item positions."""
    model = _model(steps=2, normalise=normalise, norm=norm)
    assert isinstance(model.reasoner, LatentReasoner)
    b, w = INPUTS.shape
    with torch.no_grad():
        encoded = model.backbone(INPUTS, POSITIONS, use_cache=True)
        every = model.reasoner.prefixes(model.cached_backbone, encoded, torch.arange(w).expand(b, w))
        # a ragged subset too, as the objectives gather it (different columns per row, repeats allowed)
        subset = torch.tensor([[4, 6, 5], [0, 3, 6], [6, 6, 6], [2, 5, 3]])
        some = model.reasoner.prefixes(model.cached_backbone, encoded, subset)
        assert torch.isfinite(every).all()  # padded columns reason too (on nothing) and stay finite
        for t in range(w):
            alone = model.encode(INPUTS[:, : t + 1], POSITIONS[: t + 1])
            real = INPUTS[:, t] != 0
            torch.testing.assert_close(every[real, t], alone[real], atol=1e-5, rtol=0)
            rows, slots = (subset == t).nonzero(as_tuple=True)
            torch.testing.assert_close(some[rows, slots], alone[rows], atol=1e-5, rtol=0)


def test_perturbation_reaches_the_reasoning_inputs_only() -> None:
    model = _model(steps=2)
    assert isinstance(model.reasoner, LatentReasoner)
    with torch.no_grad():
        encoded = model.backbone(INPUTS, POSITIONS, use_cache=True)
        clean = model.reasoner(model.cached_backbone, encoded)
        shifted = model.reasoner(model.cached_backbone, encoded, perturb=lambda z: z + torch.linspace(-1, 1, HIDDEN))
    assert torch.equal(clean[:, 0], shifted[:, 0])
    assert (clean[:, 1:] - shifted[:, 1:]).abs().amax() > 1e-3


class _PlainCache:
    """Any CachedBackbone: SASRec seen through the protocol only (no extend_chains fast path)."""

    def __init__(self, inner: SASRec) -> None:
        self.inner = inner
        self.hidden_size, self.max_len, self.causal = inner.hidden_size, inner.max_len, inner.causal
        self.item_embedding = inner.item_embedding

    def __call__(self, inputs: torch.Tensor, positions: torch.Tensor, use_cache: bool = False) -> Encoded:
        return self.inner(inputs, positions, use_cache)

    def input_tokens(self, vectors: torch.Tensor, dropout: float | None = None) -> torch.Tensor:
        return self.inner.input_tokens(vectors, dropout)

    def extend(self, tokens: torch.Tensor, encoded: Encoded, extra_mask: torch.Tensor | None = None) -> Encoded:
        return self.inner.extend(tokens, encoded, extra_mask)


def test_the_generic_kv_cache_path_equals_the_chain_fast_path() -> None:
    """The block-diagonal mask through plain ``extend`` (any CachedBackbone) and SASRec's ``extend_chains``
    give the same states for every prefix."""
    model = _model(steps=3)
    assert isinstance(model.backbone, SASRec) and isinstance(model.reasoner, LatentReasoner)
    plain = _PlainCache(model.backbone)
    assert isinstance(plain, CachedBackbone) and not isinstance(plain, ChainBackbone)
    assert isinstance(model.backbone, ChainBackbone)
    b, w = INPUTS.shape
    columns = torch.arange(w).expand(b, w)
    with torch.no_grad():
        encoded = model.backbone(INPUTS, POSITIONS, use_cache=True)
        fast = model.reasoner.prefixes(model.backbone, encoded, columns)
        generic = model.reasoner.prefixes(plain, encoded, columns)
    torch.testing.assert_close(fast, generic, atol=1e-5, rtol=0)
    model.train()  # with dropout both paths stay finite and differentiable
    fast = model.reasoner.prefixes(model.backbone, model.backbone(INPUTS, POSITIONS), columns)
    generic = model.reasoner.prefixes(plain, model.backbone(INPUTS, POSITIONS), columns)
    (fast.sum() + generic.sum()).backward()
    assert model.reasoner.rpe.grad is not None and torch.isfinite(model.reasoner.rpe.grad).all()


def test_inference_with_only_the_last_column_computed_equals_the_full_pass() -> None:
    model = _model().eval()
    with torch.no_grad():
        last = model.encode(INPUTS, POSITIONS, 3)  # eval mode: the final block computes the last column only
        fast = FoldedRunner.from_model(model).encode(INPUTS, POSITIONS, 3)  # ... and forms no keys/values
        full = model.reasoner(model.cached_backbone, model.backbone(INPUTS, POSITIONS, use_cache=True), 3)
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_encoding_in_passes_equals_one_pass(steps: int, rows: int) -> None:
    # the item pass runs per group of rows (each trimmed to its longest row); the reasoning steps run once
    # over a cache assembled from the groups, left-padded to the full width: the states must not change
    model = _model(steps=3)
    inputs = INPUTS[[2, 0, 3, 1]]  # shortest first, as the evaluator orders them: the groups have different widths
    whole = model.encode(inputs, POSITIONS, steps)
    runner = runner_for(model)
    assert isinstance(runner, FoldedRunner)  # a CPU model with a SASRec backbone and a LatentReasoner
    passes = runner.encode_passes(inputs, rows, steps)
    plain = PlainRunner(model).encode_passes(inputs, rows, steps)  # any backbone: reasoning per pass
    assert passes.shape == plain.shape == whole.shape == (4, steps + 1, HIDDEN)
    assert torch.allclose(passes, whole, atol=1e-5)
    assert torch.allclose(plain, whole, atol=1e-5)
