"""SASRec's masks and position ids."""

from __future__ import annotations

import pytest
import torch

from thinkrec.data.batches import position_ids
from thinkrec.inference.folded import FoldedBlock, FoldedEncoder
from thinkrec.models.sasrec import SASRec, SASRecConfig
from thinkrec.models.transformer import Norm


def _model(positions: str) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(hidden=8, layers=2, heads=2, max_len=6, positions=positions))  # type: ignore[arg-type]
    return model.eval()


@pytest.mark.parametrize("positions", ["from_end", "from_start"])
def test_causal_and_padding_invariant(positions: str) -> None:
    model = _model(positions)
    seq = torch.tensor([[3, 5, 7, 9]])
    full = model(seq, position_ids(4, 6)).hidden
    # changing a later item does not change earlier outputs
    changed = model(torch.tensor([[3, 5, 7, 1]]), position_ids(4, 6)).hidden
    torch.testing.assert_close(full[:, :3], changed[:, :3])
    assert not torch.allclose(full[:, 3], changed[:, 3])
    # extra left padding (an untrimmed batch) gives the same states for the real columns
    padded = model(torch.tensor([[0, 0, 3, 5, 7, 9]]), position_ids(6, 6)).hidden
    torch.testing.assert_close(full, padded[:, 2:], rtol=1e-5, atol=1e-6)


def test_from_start_positions_count_from_the_oldest_item() -> None:
    model = _model("from_start")
    a = model(torch.tensor([[3, 5]]), position_ids(2, 6)).hidden
    # the same two items as the start of a longer sequence: the causal state at column 1 is identical
    b = model(torch.tensor([[3, 5, 7, 9]]), position_ids(4, 6)).hidden
    torch.testing.assert_close(a[:, 1], b[:, 1], rtol=1e-5, atol=1e-6)
    end = _model("from_end")
    c = end(torch.tensor([[3, 5]]), position_ids(2, 6)).hidden
    d = end(torch.tensor([[3, 5, 7, 9]]), position_ids(4, 6)).hidden
    assert not torch.allclose(c[:, 1], d[:, 1])


@pytest.mark.parametrize("positions", ["from_end", "from_start"])
def test_last_only_equals_the_last_column_of_the_full_pass(positions: str) -> None:
    model = _model(positions)
    seq = torch.tensor([[0, 0, 3, 5, 7, 9], [1, 2, 3, 4, 5, 6]])
    full = model(seq, position_ids(6, 6)).hidden[:, -1:]
    last = model(seq, position_ids(6, 6), last_only=True).hidden
    assert last.shape == (2, 1, 8)
    torch.testing.assert_close(full, last, rtol=1e-5, atol=1e-6)
    # the inference runner's folded pass: the same state, every layer's attention inputs instead of keys/values
    # (a FoldedPass, which the backbone's extend does not take)
    folded = FoldedEncoder(model).encode(seq, position_ids(6, 6))
    torch.testing.assert_close(folded.hidden, last, rtol=1e-5, atol=1e-6)
    assert [h.shape for h in folded.inputs] == [(2, 6, 8)] * 2 and folded.width == 6


@pytest.mark.parametrize("norm", ["pre", "post", "query"])
def test_last_column_with_folded_key_value_projections_equals_projecting_every_column(norm: Norm) -> None:
    """``forward_last_folded`` folds W_k into the query and W_v after the weighted sum. Random biases (the
    model's init zeroes them) so a mishandled bias shows; padding in one row, causal and bidirectional
    masks; outputs and parameter gradients both. Then one reasoning step on a folded cache with room
    (``extend_slot``) equals the chain step on the keys/values (``forward_chains``), with an earlier token."""
    from thinkrec.models.transformer import Block

    torch.manual_seed(0)
    block = Block(8, 2, 16, 0.0, 0.0, norm=norm)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    x = torch.randn(3, 5, 8)
    pad = torch.tensor([[True, True, False, False, False], [False] * 5, [True] + [False] * 4])
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    eye = torch.eye(5, dtype=torch.bool)
    for mask in ((causal[None] & ~pad[:, None]) | eye, (~pad[:, None]).expand(-1, 5, -1) | eye):
        expected = block.forward_last(x, mask[:, None])[0]
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), block.qkv.weight)
        folded, inputs = block.forward_last_folded(x, mask[:, None])
        (folded_grad,) = torch.autograd.grad(folded.square().sum(), block.qkv.weight)
        assert folded.shape == (3, 1, 8)
        torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded_grad, expected_grad, rtol=1e-4, atol=1e-5)
        assert folded_grad[8:16].abs().sum() > 0  # the key rows get a gradient through the folded query

    # a reasoning token over the folded cache with room (extend_slot) == the same token as a chain over the
    # keys/values (forward_chains), with one earlier reasoning token given as attention input / keys+values
    _, (keys, values) = block.forward_last(x, mask[:, None])
    inputs = block.forward_last_folded(x, mask[:, None])[1]
    token, earlier = torch.randn(3, 1, 8), torch.randn(3, 1, 8)
    own = tuple(kv[:, :, :, None] for kv in block._project(earlier, slice(8, None)))  # [B, h, 1, 1, hd]
    chain_out, _ = block.forward_chains(token, (keys, values), ~pad[:, None, None], (own[0], own[1]))
    room = torch.cat([inputs, earlier, torch.full((3, 1, 8), float("nan"))], dim=1)  # item columns, token 1, room
    bias = torch.zeros(3, 1, 7).masked_fill(
        torch.cat([pad, torch.zeros(3, 2, dtype=torch.bool)], 1)[:, None], float("-inf")
    )
    slot_out = FoldedBlock(block).extend_slot(token, room, 6, bias)
    torch.testing.assert_close(slot_out, chain_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(room[:, 6:], block._attn_input(token))  # the token's own input is kept for later ones


def test_post_norm_block_is_layernorm_after_each_residual_sum() -> None:
    """The post-LN block against the formula written out: LN2(h + FFN(h)), h = LN1(x + Attn(x))."""
    from torch.nn import functional as F

    from thinkrec.models.transformer import Block

    torch.manual_seed(0)
    block = Block(8, 2, 16, 0.0, 0.0, norm="post").eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    q, k, v = block.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(2, 5, 8)
    h = block.ln_attn(x + block.out(attn))
    expected = block.ln_ffn(h + block.ffn(h))
    torch.testing.assert_close(block(x, mask)[0], expected)
    pre = Block(8, 2, 16, 0.0, 0.0).eval()
    pre.load_state_dict(block.state_dict())
    assert not torch.allclose(pre(x, mask)[0], expected)  # the two placements really differ
    model = SASRec(20, SASRecConfig(hidden=8, layers=1, heads=2, max_len=6, norm="post"))
    assert isinstance(model.final_norm, torch.nn.Identity)


def test_query_norm_block_is_the_original_sasrec_layer() -> None:
    """The query-LN block against the original SASRec code's layer written out (RecTools' too): the queries
    are LN1(x), keys and values x itself, h = LN1(x) + Attn; then f + FFN(f) with f = LN2(h), ReLU inside."""
    from torch.nn import functional as F

    from thinkrec.models.transformer import Block

    torch.manual_seed(0)
    block = Block(8, 2, 16, 0.0, 0.0, norm="query", activation="relu").eval()
    with torch.no_grad():  # LayerNorm weights and biases away from 1 / 0, so a misplaced norm shows
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    x = torch.randn(2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    w_q, w_k, w_v = block.qkv.weight.split(8)
    b_q, b_k, b_v = block.qkv.bias.split(8)
    normed = block.ln_attn(x)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, 5, 2, 4).transpose(1, 2)

    q, k, v = heads(normed @ w_q.T + b_q), heads(x @ w_k.T + b_k), heads(x @ w_v.T + b_v)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(2, 5, 8)
    f = block.ln_ffn(normed + block.out(attn))
    first, second = block.ffn[0], block.ffn[3]
    expected = f + second(torch.relu(first(f)))
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask)[0], expected)  # the inference path
    torch.testing.assert_close(block(x, mask)[0], expected)  # the training ops
    for other in ("pre", "post"):  # the layouts really differ
        layout = Block(8, 2, 16, 0.0, 0.0, norm=other, activation="relu").eval()
        layout.load_state_dict(block.state_dict())
        assert not torch.allclose(layout(x, mask)[0], expected)
    gelu = Block(8, 2, 16, 0.0, 0.0, norm="query").eval()
    gelu.load_state_dict(block.state_dict())
    assert not torch.allclose(gelu(x, mask)[0], expected)  # and so do the activations
    # in training, dropout falls on the attention weights and the feed-forward output, not on the attention
    # output: with attention dropout off and a zero feed-forward, a training pass is deterministic and exact
    train = Block(8, 2, 16, 0.5, 0.0, norm="query", activation="relu").train()
    train.load_state_dict(block.state_dict())
    with torch.no_grad():
        train.ffn[3].weight.zero_()
        train.ffn[3].bias.zero_()
    torch.testing.assert_close(train(x, mask)[0], f)
    # ... and with the feed-forward back (no dropout inside it), its output is dropped: every element of
    # out - f is 0 or FFN(f) / (1 - p), both occurring
    outer = Block(8, 2, 16, 0.5, 0.0, norm="query", ffn_dropout=False, activation="relu").train()
    outer.load_state_dict(block.state_dict())
    with torch.no_grad():
        added = outer(x, mask)[0] - f
        full = 2.0 * second(torch.relu(first(f)))
    kept = torch.isclose(added, full, atol=1e-5)
    zero = added.abs() < 1e-6
    assert bool((kept | zero).all()) and kept.any() and (zero & (full.abs() > 1e-3)).any()
    with pytest.raises(ValueError, match="pre, post or query"):
        Block(8, 2, 16, 0.0, 0.0, norm="sandwich")  # type: ignore[arg-type]


def test_initialisations_and_input_norm() -> None:
    """'normal': N(0, 0.02) everywhere; 'xavier': Xavier-normal per weight matrix (std sqrt(2 / (fan_in +
    fan_out))), embeddings included; biases zero and the padding row zero either way. Without the input
    LayerNorm the input tokens are the embeddings themselves (before dropout)."""
    n_items, d = 3000, 64
    for init, expected_std in (
        ("normal", lambda rows, cols: 0.02),
        ("xavier", lambda rows, cols: (2 / (rows + cols)) ** 0.5),
    ):
        torch.manual_seed(0)
        model = SASRec(n_items, SASRecConfig(hidden=d, layers=1, heads=1, ffn=256, init=init))  # type: ignore[arg-type]
        block = model.blocks[0]
        table = model.item_embedding.weight
        for weight, (rows, cols) in (
            (block.qkv.weight, block.qkv.weight.shape),
            (block.ffn[0].weight, block.ffn[0].weight.shape),
            (table[1:], table.shape),  # the table's fans include the padding row
        ):
            assert float(weight.detach().std()) == pytest.approx(expected_std(rows, cols), rel=0.05)
        assert not block.qkv.bias.any() and not block.ffn[0].bias.any()
        assert not model.item_embedding.weight[0].any()
    # xavier's embedding std (~0.026 here) and its 64 x 192 projection's (~0.088) differ from 0.02 both ways
    assert (2 / (n_items + 1 + d)) ** 0.5 > 0.02 * 1.2 and (2 / (3 * d + d)) ** 0.5 > 0.02 * 4

    model = SASRec(20, SASRecConfig(hidden=8, layers=1, heads=2, max_len=6, input_norm=False)).eval()
    vectors = torch.randn(2, 3, 8) * 5
    assert isinstance(model.input_norm, torch.nn.Identity)
    assert torch.equal(model.input_tokens(vectors), vectors)
    normed = SASRec(20, SASRecConfig(hidden=8, layers=1, heads=2, max_len=6)).eval()
    torch.testing.assert_close(
        normed.input_tokens(vectors).std(-1, unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0
    )


def test_untied_output_embeddings_score_items() -> None:
    from thinkrec.models.registry import build_model

    torch.manual_seed(0)
    tied = build_model(SASRecConfig(hidden=8, layers=1, heads=2, max_len=6), n_items=20)
    untied = build_model(SASRecConfig(hidden=8, layers=1, heads=2, max_len=6, tie_embeddings=False), n_items=20)
    assert tied.item_vectors().data_ptr() == tied.backbone.item_embedding.weight[1:].data_ptr()
    out = untied.backbone.output_embedding
    assert isinstance(out, torch.nn.Embedding) and untied.item_vectors().shape == (20, 8)
    assert untied.item_vectors().data_ptr() == out.weight[1:].data_ptr()
    users = untied.encode(torch.tensor([[3, 5, 7]]), position_ids(3, 6))[:, -1]
    untied.score(users)[0, 4].backward()
    assert out.weight.grad is not None and out.weight.grad[5].abs().sum() > 0  # column 4 = item 5


def test_folded_reasoning_weights_follow_parameter_changes_and_dropout_keeps_the_unfolded_path() -> None:
    """``extend_slot`` keeps its combined weights between calls without autograd; an in-place parameter
    update (an optimiser step, ``load_state_dict``) must not leave it with stale ones. In training with
    attention dropout it drops the weights of the unfolded formulas instead."""
    from thinkrec.models.transformer import Block

    torch.manual_seed(0)
    block = Block(8, 2, 16, 0.0, 0.5).eval()
    folded = FoldedBlock(block)
    inputs, token = torch.randn(3, 6, 8), torch.randn(3, 1, 8)
    bias = torch.zeros(3, 1, 6)
    with torch.no_grad():
        before = folded.extend_slot(token, inputs.clone(), 5, bias)
        block.qkv.weight.mul_(2.0)
        block.out.bias.add_(1.0)
        after = folded.extend_slot(token, inputs.clone(), 5, bias)
    fresh = folded.extend_slot(token, inputs.clone(), 5, bias)  # autograd on: formed anew
    torch.testing.assert_close(after, fresh.detach())
    with torch.no_grad():  # formed under bf16 autocast first, the kept weights still serve float32
        block.qkv.bias.add_(0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = folded.extend_slot(token, inputs.clone(), 5, bias)
        full = folded.extend_slot(token, inputs.clone(), 5, bias)
    assert full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.05)
    assert (after - before).abs().amax() > 0.1
    block.train()
    torch.manual_seed(1)
    dropped = folded.extend_slot(token, inputs.clone(), 5, bias)
    assert torch.isfinite(dropped).all() and (dropped - full).abs().amax() > 1e-3
