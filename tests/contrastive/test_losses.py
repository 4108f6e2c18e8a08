"""InfoNCE (dense and tiled) against the float64 definition; general targets; temperature gradients."""

from __future__ import annotations

import pytest
import torch

from kexue.contrastive.losses import InfoNCE, info_nce, info_nce_tiled
from kexue.contrastive.reference import info_nce_reference


def _data(n: int = 12, m: int = 17, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=g), torch.randn(m, d, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_dense_matches_definition_with_general_targets(similarity: str, symmetric: bool) -> None:
    q, d = _data()  # 5 extra documents = hard negatives
    multi = torch.zeros(12, 17, dtype=torch.float64)
    multi[torch.arange(12), torch.arange(12)] = 0.5
    multi[torch.arange(12), (torch.arange(12) + 1) % 12] = 0.5  # two positives per row
    index = torch.randint(0, 17, (12,), generator=torch.Generator().manual_seed(1))
    for targets, dense in ((None, torch.eye(12, 17, dtype=torch.float64)), (index, torch.nn.functional.one_hot(index, 17)), (multi, multi)):
        got = info_nce(q, d, targets, scale=7.0, similarity=similarity, symmetric=symmetric)
        want = info_nce_reference(q, d, dense, scale=7.0, similarity=similarity, symmetric=symmetric)
        assert float(got) == pytest.approx(float(want), abs=1e-12)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_tiled_equals_dense_values_and_gradients(similarity: str) -> None:
    q, d = (t.requires_grad_() for t in _data(37, 50))
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 50, (37,), generator=torch.Generator().manual_seed(2))
    dense = info_nce(q, d, index, scale=scale, similarity=similarity)
    tiled = info_nce_tiled(q, d, index, scale=scale, similarity=similarity, tile=8)
    assert float(tiled.detach()) == pytest.approx(float(dense.detach()), abs=1e-12)
    for a, b in zip(torch.autograd.grad(tiled, (q, d, scale)), torch.autograd.grad(dense, (q, d, scale))):
        assert torch.allclose(a, b, atol=1e-12)


def test_tiled_gradcheck() -> None:
    q, d = (t.requires_grad_() for t in _data(7, 9, 3))
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 2, 8, 4, 5, 1])
    assert torch.autograd.gradcheck(lambda a, b, s: info_nce_tiled(a, b, index, scale=s, similarity="dot", tile=4), (q, d, scale))


def test_tiled_float32_does_not_materialise_the_matrix() -> None:
    # the peak of a tile-by-tile pass: checked through the autograd graph, which holds no (N, M) tensor
    q = torch.randn(3000, 32, requires_grad=True)
    loss = info_nce_tiled(q, torch.randn(3000, 32), tile=256)
    saved = [t for t in loss.grad_fn.saved_tensors if isinstance(t, torch.Tensor)]
    assert all(t.numel() < 3000 * 3000 // 10 for t in saved)


def test_learnable_temperature_gradient_matches_finite_difference() -> None:
    q, d = _data()
    loss_fn = InfoNCE(0.1, learnable=True).double()
    loss_fn(q, d).backward()
    eps = 1e-6
    with torch.no_grad():
        base = loss_fn.log_scale.detach().item()
        loss_fn.log_scale.fill_(base + eps)
        up = float(loss_fn(q, d))
        loss_fn.log_scale.fill_(base - eps)
        down = float(loss_fn(q, d))
    assert loss_fn.log_scale.grad.item() == pytest.approx((up - down) / (2 * eps), rel=1e-6)
    assert InfoNCE(0.05).log_scale.requires_grad is False
    assert float(InfoNCE(1e-4, learnable=True).scale.detach()) == pytest.approx(100.0)  # clamped like CLIP


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 5)), "same D"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(3, 3)), "at least as many rows as q"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 9])), r"\[0, 4\)"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.ones(4, 5)), r"shape \(4, 4\)"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), -torch.eye(4)), "non-negative"),
        (lambda: info_nce(torch.randn(4, 3), similarity="l2"), "similarity='l2'"),
        (lambda: info_nce_tiled(torch.randn(4, 3), tile=0), "tile=0"),
        (lambda: info_nce_tiled(torch.randn(4, 3), targets=torch.eye(4)), "dense target"),
        (lambda: InfoNCE(0.0), "temperature=0.0"),
        (lambda: InfoNCE(tiled=True, symmetric=True), "row direction"),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()
