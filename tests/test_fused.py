"""Inference fast paths of the Transformer block: fused linear, bf16 attention, key/value-only projection."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from thinkrec.models import fused
from thinkrec.models.fused import fused_ok, linear
from thinkrec.models.transformer import Activation, Block, Norm, attend, formed_attention

needs_onednn = pytest.mark.skipif(fused._POINTWISE is None, reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("onednn", [pytest.param(True, marks=needs_onednn), False])
@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
def test_fused_linear_equals_linear_then_gelu(gelu: str | None, onednn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both inference kernels (oneDNN with its epilogue; MKL with an in-place GELU) equal the plain ops."""
    monkeypatch.setattr(fused, "ONEDNN", onednn)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 7, 16), torch.randn(24, 16), torch.randn(24)
    expected = F.linear(x, weight, bias)
    expected = expected if gelu is None else F.gelu(expected, approximate=gelu)
    with torch.no_grad():
        assert fused_ok(x, weight)
        out = linear(x, weight, bias, gelu)
        # a non-contiguous input (the last column of a batch) as the final block passes it
        last = linear(x[:, -1:], weight, bias, gelu)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, expected[:, -1:], rtol=1e-5, atol=1e-5)


def test_bucket_rows_bounds_the_shapes_and_the_padding() -> None:
    """oneDNN keeps one primitive per shape: a server's arbitrary row counts must map to few sizes."""
    sizes = [fused.bucket_rows(rows) for rows in range(1, 1 << 16)]
    assert all(size >= rows for rows, size in enumerate(sizes, start=1))
    assert all(size <= max(rows * 1.0625, rows + 7) for rows, size in enumerate(sizes, start=1))
    assert sizes == sorted(sizes)
    # 8 sizes up to 64, then 16 per power of two: 8 + 16 * 10 for 65 .. 2**16
    assert len(set(sizes)) == 8 + 16 * 10
    assert fused.bucket_rows(12_800) == 12_800  # an evaluation pass: no padding


@needs_onednn
@pytest.mark.parametrize("rows", [1, 9, 65, 100, 1000])
def test_padded_onednn_rows_give_the_unpadded_product(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "ONEDNN", True)
    torch.manual_seed(rows)
    x, weight, bias = torch.randn(rows, 64), torch.randn(256, 64), torch.randn(256)
    with torch.no_grad():
        out = linear(x, weight, bias, "none")
    assert out.shape == (rows, 256)
    torch.testing.assert_close(out, F.gelu(F.linear(x, weight, bias)), rtol=1e-5, atol=1e-5)


def test_the_onednn_kernel_is_chosen_by_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    for capability, expected in [("AVX512", True), ("AVX2", False), ("DEFAULT", False)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert fused.prefers_onednn() is (expected and fused._POINTWISE is not None)


def test_fused_linear_is_only_taken_without_autograd_in_float32() -> None:
    x, weight = torch.randn(4, 8), torch.randn(8, 8)
    assert not fused_ok(x, weight)  # gradients enabled: training keeps the plain ops
    with torch.no_grad():
        assert not fused_ok(x.bfloat16(), weight.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused_ok(x, weight)
    # and the plain path still gives gradients
    w = weight.clone().requires_grad_()
    linear(x, w, None, "none").sum().backward()
    assert w.grad is not None


def test_bf16_inference_attention_matches_the_fused_kernel() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4) for _ in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].repeat(3, 1, 1, 1)
    mask[0, :, :, :2] = False  # left padding of row 0 ...
    mask[0, :, :2, :2] = torch.eye(2, dtype=torch.bool)  # ... whose padding columns attend to themselves
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.no_grad():
        formed = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, 0.0, False)
    assert formed.dtype == torch.bfloat16
    torch.testing.assert_close(formed.float(), reference, rtol=0.03, atol=0.03)
    # float32 inference forms the weights too (same numbers up to rounding); with autograd on and no
    # dropout the kernel itself runs: identical numbers
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, mask, 0.0, False), reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(attend(q, k, v, mask, 0.5, False), reference)


@pytest.mark.parametrize(("norm", "activation"), [("pre", "gelu"), ("post", "gelu"), ("query", "relu")])
def test_block_inference_path_equals_the_training_ops(norm: Norm, activation: Activation) -> None:
    """An eval-mode block under ``no_grad`` (fused linears, key/value-only final projection) gives the
    same outputs and keys/values as with autograd on (the plain ops)."""
    torch.manual_seed(0)
    block = Block(16, 2, 32, 0.3, 0.3, norm=norm, activation=activation).eval()
    x = torch.randn(3, 7, 16)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    plain, (k_plain, v_plain) = block(x, mask)
    last_plain, _ = block.forward_last(x, mask)
    with torch.no_grad():
        fast, (k_fast, v_fast) = block(x, mask)
        last_fast, (k_last, v_last) = block.forward_last(x, mask)
    for a, b in [(fast, plain), (k_fast, k_plain), (v_fast, v_plain), (last_fast, last_plain)]:
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    # the last-column pass has the full keys/values and the full pass's last column
    torch.testing.assert_close(last_fast, fast[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_last, k_fast, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_last, v_fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_rows", [1, 3])
def test_formed_attention_on_strided_head_views_matches_the_kernel_with_gradients(mask_rows: int) -> None:
    # a Block's queries/keys/values are strided views [B, heads, T, hd] of one [B, T, 3d] projection; the formed
    # path reads each head in place and returns a view of [B, T, heads, hd]
    torch.manual_seed(1)
    projected = torch.randn(3, 6, 3 * 2 * 4, requires_grad=True)
    q, k, v = projected.view(3, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].repeat(mask_rows, 1, 1, 1)
    mask[-1, :, :, :2] = False
    mask[-1, :, :2, :2] = torch.eye(2, dtype=torch.bool)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (expected,) = torch.autograd.grad((reference * torch.arange(4.0)).sum(), projected)
    formed = formed_attention(q, k, v, mask)
    assert formed.shape == reference.shape
    assert formed.transpose(1, 2).is_contiguous()  # heads merge without a copy
    torch.testing.assert_close(formed, reference, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad((formed * torch.arange(4.0)).sum(), projected)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
