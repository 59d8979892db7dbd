"""The cheap dropout: drop rate, scaling, gradient, reproducibility, identity when not training."""

from __future__ import annotations

import pytest
import torch

from thinkrec.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_drop_rate_and_expectation(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # not a multiple of 4: the last 64-bit draw is partly used
    y = dropout(x, p)
    dropped = float((y == 0).float().mean())
    # binomial standard deviation sqrt(p(1-p)/n) <= 5e-4: 6 sigma
    assert dropped == pytest.approx(p, abs=3e-3)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))
    assert float(y.mean()) == pytest.approx(1.0, abs=6e-3)


def test_lanes_are_independent_of_their_neighbours() -> None:
    # the four 16-bit lanes of one draw must not be correlated (e.g. a lane order bug repeating a lane)
    torch.manual_seed(1)
    keep = keep_mask(torch.Size([400_000]), 0.5, torch.float32, torch.device("cpu")) > 0
    a, b = keep[0::2].float(), keep[1::2].float()
    both = float((a * b).mean())
    assert both == pytest.approx(0.25, abs=5e-3)


def test_gradient_is_the_same_mask_and_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    # where the output kept x, d y / d x is the scale; where it dropped, 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    expected = torch.where(y != 0, torch.tensor(scale), torch.tensor(0.0))
    assert torch.allclose(x.grad, expected)
    assert torch.allclose(y.detach(), x.detach() * expected)


def test_seeded_masks_repeat_and_differ_between_calls() -> None:
    x = torch.ones(10_000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(first, second)


def test_identity_when_not_training_or_zero() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    module = Dropout(0.5).eval()
    assert module(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0)


def test_bf16_inputs_keep_their_dtype() -> None:
    x = torch.randn(8, 8, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.2)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_attention_dropout_path_matches_the_fused_kernel_when_nothing_drops() -> None:
    from torch.nn import functional as F

    from thinkrec.models.transformer import attend

    torch.manual_seed(4)
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None] & (torch.rand(3, 1, 1, 5) > 0.3)
    mask = mask | torch.eye(5, dtype=torch.bool)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # p below 1/65536 rounds to "drop nothing", so the manual training path must equal the fused kernel
    assert torch.allclose(attend(q, k, v, mask, 1e-9, training=True), fused, atol=1e-6)
    assert torch.allclose(attend(q, k, v, mask, 0.5, training=False), fused, atol=1e-6)
    one_query = attend(q[:, :, -1:], k, v, mask[..., -1:, :], 0.0, training=False)
    assert torch.allclose(one_query, fused[:, :, -1:], atol=1e-6)
    dropped = attend(q, k, v, mask, 0.5, training=True)
    assert not torch.allclose(dropped, fused, atol=1e-3)


def test_torch_dropout_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKREC_DROPOUT", "torch")
    x = torch.ones(1000)
    torch.manual_seed(5)
    ours = dropout(x, 0.3)
    torch.manual_seed(5)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.3, True))


def test_output_and_gradient_equal_the_float_mask_formula_exactly() -> None:
    # the boolean mask is applied as x * scale * keep: bit for bit what x * (keep * scale) gives
    x = torch.randn(37, 41, requires_grad=True)
    torch.manual_seed(6)
    y = dropout(x, 0.2)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y) * 3)
    torch.manual_seed(6)
    mask = keep_mask(x.shape, 0.2, torch.float32, torch.device("cpu"))
    assert torch.equal(y, x * mask)
    assert torch.equal(grad, 3 * mask)
