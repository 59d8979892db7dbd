"""ReaRec loss terms against numbers computed by hand / with independent numpy code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thinkrec.losses import info_nce, pairwise_kl, per_step_cross_entropy, progressive_temperatures

E = math.e


def _np_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def test_pairwise_kl_by_hand() -> None:
    # sample 0: the steps prefer different items; sample 1: identical steps (KL 0)
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]]])
    # p0 = (e, 1, 1)/(e+2), p1 = (1, e, 1)/(e+2): KL(p0||p1) = KL(p1||p0) = (e-1)/(e+2)
    # mean over 2 samples x 2 ordered pairs = 2 (e-1)/(e+2) / 4
    expected = (E - 1) / (E + 2) / 2
    assert float(pairwise_kl(logits, torch.eye(3))) == pytest.approx(expected, rel=1e-6)
    # the same logits as users . items^T / tau with a real item table and temperature
    items = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    users = torch.tensor([[[0.5, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    assert float(pairwise_kl(users, items, temperature=1.0)) == pytest.approx(expected, rel=1e-6)


def test_pairwise_kl_three_steps_matches_numpy_and_is_symmetric_in_the_steps() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4))
    expected = []
    for m in range(2):
        for j in range(3):
            for k in range(3):
                if j != k:
                    p, q = _np_softmax(logits[m, j]), _np_softmax(logits[m, k])
                    expected.append(float(np.sum(p * np.log(p / q))))
    value = pairwise_kl(torch.tensor(logits, dtype=torch.float32), torch.eye(4))
    assert float(value) == pytest.approx(np.mean(expected), rel=1e-5)
    flipped = pairwise_kl(torch.tensor(logits[:, ::-1].copy(), dtype=torch.float32), torch.eye(4))
    assert float(flipped) == pytest.approx(float(value), rel=1e-6)
    assert float(pairwise_kl(torch.zeros(2, 1, 4), torch.eye(4))) == 0.0  # one step: no pairs


def test_pairwise_kl_gradient_flows_through_the_first_argument_only() -> None:
    """d/dl_0 of mean[KL(p0 || sg p1), KL(p1 || sg p0)] = p0 * (log p0 - log p1 - KL(p0||p1)) / (#samples x
    #pairs): the second pair, where p0 is the detached reference, contributes nothing."""
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]]], requires_grad=True)
    pairwise_kl(logits, torch.eye(3)).backward()
    assert logits.grad is not None
    p0 = np.array([E, 1, 1]) / (E + 2)
    kl = (E - 1) / (E + 2)
    expected = p0 * (np.array([1.0, -1.0, 0.0]) - kl) / 4
    np.testing.assert_allclose(logits.grad[0, 0].numpy(), expected, atol=1e-6)
    # with gradient through both sides the reference term would add (p0 - p1)/4 ; it must not be there
    p1 = np.array([1, E, 1]) / (E + 2)
    assert not np.allclose(logits.grad[0, 0].numpy(), expected + (p0 - p1) / 4, atol=1e-3)


def test_subtracting_the_kl_pushes_the_steps_apart() -> None:
    """ERL's sign: a gradient step on ``-lambda * KL`` makes the steps disagree more, and more disagreement
    means a lower loss."""
    logits = torch.tensor([[[0.5, 0.1, 0.0], [0.4, 0.2, 0.0]]], requires_grad=True)
    eye = torch.eye(3)
    before = float(pairwise_kl(logits.detach(), eye))
    (-0.1 * pairwise_kl(logits, eye)).backward()
    assert logits.grad is not None
    with torch.no_grad():
        stepped = logits - 10.0 * logits.grad
    assert float(pairwise_kl(stepped, eye)) > before
    agree = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    disagree = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert -0.1 * float(pairwise_kl(disagree, eye)) < -0.1 * float(pairwise_kl(agree, eye)) == 0.0


def test_chunked_pairwise_kl_equals_the_dense_formula_with_gradients() -> None:
    """Values and gradients (users and items) of the chunked KL against autograd through the plain
    formula with the reference detached, for several chunk sizes."""
    torch.manual_seed(0)
    users = torch.randn(7, 3, 4, requires_grad=True)
    items = torch.randn(5, 4, requires_grad=True)

    def dense(u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(u @ e.T / 0.5, dim=-1)
        p = logp.exp()
        kl = (p * logp).sum(-1)[:, :, None] - torch.einsum("mjn,mkn->mjk", p, logp.detach())
        return kl[:, ~torch.eye(3, dtype=torch.bool)].mean()

    expected = dense(users, items)
    want = torch.autograd.grad(expected, (users, items))
    for chunk in (1, 3, 100):
        got = pairwise_kl(users, items, 0.5, chunk=chunk)
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
        grads = torch.autograd.grad(got, (users, items))
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def test_progressive_temperatures() -> None:
    np.testing.assert_allclose(progressive_temperatures(2, 0.07, 5.0).numpy(), [1.75, 0.35, 0.07], rtol=1e-6)
    np.testing.assert_allclose(progressive_temperatures(1, 0.1, 2.0).numpy(), [0.2, 0.1], rtol=1e-6)


def test_per_step_cross_entropy_by_hand() -> None:
    # with the identity as item table the states are the similarities themselves
    sims = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.0, 1.0]], [[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])
    targets = torch.tensor([0, 2])
    temps = torch.tensor([2.0, 1.0])
    got = per_step_cross_entropy(sims, torch.eye(3), targets, temps).numpy()
    # step 0 at T=2: sample 0 logits (1,0,0) target 0 -> log(e+2) - 1; sample 1 logits (0,1,0) target 2 ->
    # log(e+2). step 1 at T=1: sample 0 (1,0,1) target 0 -> log(2e+1) - 1; sample 1 (0,0,3) target 2 ->
    # log(e^3+2) - 3
    step0 = ((math.log(E + 2) - 1) + math.log(E + 2)) / 2
    step1 = ((math.log(2 * E + 1) - 1) + (math.log(E**3 + 2) - 3)) / 2
    np.testing.assert_allclose(got, [step0, step1], rtol=1e-6)


def test_info_nce_by_hand_cosine_and_dot() -> None:
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    candidates = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    valid = torch.tensor([[True, True]])
    c = 1 / math.sqrt(2)
    # cosine / 0.5: row 0 logits (2, 2c) -> target 0; row 1 logits (0, 2c) -> target 1
    loss0 = -math.log(E**2 / (E**2 + E ** (2 * c)))
    loss1 = -math.log(E ** (2 * c) / (1 + E ** (2 * c)))
    assert float(info_nce(anchors, candidates, valid, 0.5)) == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    # dot / 0.5: row 0 logits (4, 2); row 1 logits (0, 2)
    dot0, dot1 = -math.log(E**4 / (E**4 + E**2)), -math.log(E**2 / (1 + E**2))
    assert float(info_nce(anchors, candidates, valid, 0.5, "dot")) == pytest.approx((dot0 + dot1) / 2, rel=1e-6)


def test_info_nce_ignores_invalid_samples_without_nan_gradients() -> None:
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 2.0]]], requires_grad=True)
    candidates = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    valid = torch.tensor([[True, False], [False, False]])
    loss = info_nce(anchors, candidates, valid, 0.5)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)  # the only valid anchor has no negatives
    full = info_nce(anchors, candidates, torch.tensor([[True, True], [False, False]]), 0.5)
    (loss + full).backward()
    assert anchors.grad is not None and candidates.grad is not None
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(candidates.grad).all()
    # gradient reaches both views (no stop-gradient on the clean side)
    assert anchors.grad[0].abs().sum() > 0 and candidates.grad[0].abs().sum() > 0
    assert anchors.grad[1].abs().sum() == 0  # the all-invalid group contributes nothing


def test_pairwise_kl_gradient_follows_the_loss_weight_across_chunks() -> None:
    """The gradient is formed in the forward pass, chunk by chunk: it must equal autograd through an
    unchunked reference (stop-gradient on the reference side) under a loss weight, for any chunking."""
    g = torch.Generator().manual_seed(5)
    users = torch.randn(7, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def reference() -> torch.Tensor:
        logp = torch.log_softmax(users @ items.T / 0.5, dim=-1)  # [7, 3, 10]
        pairs = [
            (logp[:, j].exp() * (logp[:, j] - logp[:, k].detach())).sum(-1)
            for j in range(3)
            for k in range(3)
            if j != k
        ]
        return torch.stack(pairs).mean()

    expected = torch.autograd.grad(-0.01 * reference(), [users, items])
    for chunk in (1, 3, 7):
        got = torch.autograd.grad(-0.01 * pairwise_kl(users, items, 0.5, chunk=chunk), [users, items])
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)  # computed in float32
