import pytest
import torch
from torch.nn import functional as F

from thinkrec.losses import softmax_cross_entropy


@pytest.mark.parametrize(("m", "n", "chunk", "temperature"), [(7, 5, 3, 1.0), (50, 40, 8, 0.07), (33, 300, None, 2.0)])
def test_chunked_cross_entropy_equals_the_plain_one_with_gradients(
    m: int, n: int, chunk: int | None, temperature: float
) -> None:
    g = torch.Generator().manual_seed(m)
    users = torch.randn(m, 6, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, n, (m,), generator=g)
    plain = F.cross_entropy(users @ items.T / temperature, targets)
    ours = softmax_cross_entropy(users, items, targets, temperature, chunk)
    assert float(ours) == pytest.approx(float(plain), rel=1e-6)
    g_plain = torch.autograd.grad(plain, [users, items])
    g_ours = torch.autograd.grad(ours, [users, items])
    for a, b in zip(g_plain, g_ours, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_hand_computed_value() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 2])
    # row 0 logits (1, 0, 1), target 0; row 1 logits (0, 2, 2), target 2
    expected = (
        -torch.log(torch.tensor(torch.e / (2 * torch.e + 1)))
        - torch.log(torch.tensor(torch.e**2 / (2 * torch.e**2 + 1)))
    ) / 2
    assert float(softmax_cross_entropy(users, items, targets, chunk=1)) == pytest.approx(float(expected), rel=1e-6)


def test_the_gradient_formed_in_the_forward_pass_follows_the_loss_weight_and_no_grad_skips_it() -> None:
    """The chunked loss forms its gradient while the logits are in cache and the backward pass only scales
    it: a weighted loss summed with another term must still get exactly the weighted gradient."""
    g = torch.Generator().manual_seed(3)
    users = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (9,), generator=g)
    plain = 0.3 * F.cross_entropy(users @ items.T / 0.5, targets) + users.square().sum()
    ours = 0.3 * softmax_cross_entropy(users, items, targets, 0.5, chunk=4) + users.square().sum()
    for a, b in zip(torch.autograd.grad(plain, [users, items]), torch.autograd.grad(ours, [users, items]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        value = softmax_cross_entropy(users, items, targets, 0.5, chunk=4)
    assert not value.requires_grad
    assert float(value) == pytest.approx(float(F.cross_entropy(users @ items.T / 0.5, targets)), rel=1e-9)
