"""The orthogonal maps on every device: no host sync with validate=False, the meta device, autocast, CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_contract import count_host_syncs, cuda_sync_errors
from kexue.orthogonal import KINDS, apply_orthogonal_map, low_rank_factors, orthogonal_map, reference


def _pair(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_validate_false_reads_nothing_back_and_gives_the_same_map(kind: str) -> None:
    """Regression: every call read a and b's checks and the degenerate test back to the host (5 bool())."""
    a, b = _pair(24, 0)
    x = torch.randn(10, 24, dtype=torch.float64)
    with count_host_syncs() as syncs:
        fast = apply_orthogonal_map(x.bfloat16(), a.bfloat16(), b.bfloat16(), kind=kind, validate=False)
        matrix = orthogonal_map(a, b, kind=kind, validate=False)
    assert syncs == []
    torch.testing.assert_close(
        fast, apply_orthogonal_map(x.bfloat16(), a.bfloat16(), b.bfloat16(), kind=kind), rtol=0, atol=0
    )
    torch.testing.assert_close(matrix, orthogonal_map(a, b, kind=kind), rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "sign"), [("reflection", 1.0), ("rotation", -1.0), ("symmetric", -1.0)])
def test_degenerate_pairs_take_the_canonical_map_without_a_branch(kind: str, sign: float) -> None:
    """The canonical perpendicular is chosen by torch.where: a batch mixing degenerate and regular pairs
    gives, row by row, the same maps as one pair at a time, with no host sync."""
    a, b = _pair(6, 1)
    a_batch = torch.stack([a, a, b])
    b_batch = torch.stack([sign * 3 * a, b, sign * b])  # degenerate, regular, degenerate
    with count_host_syncs() as syncs:
        T = orthogonal_map(a_batch, b_batch, kind=kind, validate=False)
    assert syncs == []
    for i in range(3):
        torch.testing.assert_close(T[i], orthogonal_map(a_batch[i], b_batch[i], kind=kind), rtol=0, atol=1e-15)
        unit_a, unit_b = a_batch[i] / a_batch[i].norm(), b_batch[i] / b_batch[i].norm()
        torch.testing.assert_close(T[i] @ unit_a, unit_b, rtol=0, atol=1e-14)
        torch.testing.assert_close(T[i] @ T[i].T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-14)


def test_validate_false_turns_bad_vectors_into_nan_not_a_wrong_map() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    for a in (torch.zeros(4, dtype=torch.float64), torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=torch.float64)):
        y = apply_orthogonal_map(x, a, torch.ones(4, dtype=torch.float64), validate=False)
        assert torch.isnan(y).all()
        with pytest.raises(ValueError, match=r"a (has zero norm|contains 1 non-finite)"):
            apply_orthogonal_map(x, a, torch.ones(4, dtype=torch.float64))


def test_degenerate_raise_and_dimension_one_still_check() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="degenerate input"):
        orthogonal_map(a, 2 * a, degenerate="raise", validate=False)
    with pytest.raises(ValueError, match="dimension 1"):
        orthogonal_map(torch.ones(1), torch.ones(1), validate=False)


def test_meta_device_gives_shapes_and_refuses_value_checks() -> None:
    x = torch.empty(7, 16, device="meta", dtype=torch.bfloat16)
    a, b = torch.empty(16, device="meta"), torch.empty(16, device="meta")
    for kind in KINDS:
        y = apply_orthogonal_map(x, a, b, kind=kind, validate=False)
        assert y.device.type == "meta" and y.shape == (7, 16) and y.dtype == torch.bfloat16
    T = orthogonal_map(a.half(), b.half(), kind="rotation", validate=False)
    assert T.device.type == "meta" and T.shape == (16, 16) and T.dtype == torch.float16
    _beta, U, V = low_rank_factors(a, b, kind="rotation", validate=False)
    assert U.shape == V.shape == (16, 2) and U.dtype == torch.float64
    with pytest.raises(ValueError, match="validate=False on the meta device"):
        apply_orthogonal_map(x, a, b)
    with pytest.raises(ValueError, match="degenerate='canonical'"):
        orthogonal_map(a, b, degenerate="raise", validate=False)


def test_validate_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="validate='no' must be True or False"):
        orthogonal_map([1.0, 0.0], [0.0, 1.0], validate="no")


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_does_not_lower_the_precision(kind: str) -> None:
    a, b = (v.float() for v in _pair(32, 2))
    x = torch.randn(9, 32)
    batched = (torch.randn(9, 32), torch.randn(9, 32))  # per-row pairs: the batched matmul path
    plain = (
        orthogonal_map(a, b, kind=kind),
        apply_orthogonal_map(x, a, b, kind=kind),
        apply_orthogonal_map(x, *batched, kind=kind),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = (
            orthogonal_map(a, b, kind=kind),
            apply_orthogonal_map(x, a, b, kind=kind),
            apply_orthogonal_map(x, *batched, kind=kind),
        )
    for p, u in zip(plain, under, strict=True):
        assert u.dtype == torch.float32
        torch.testing.assert_close(u, p, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_apply_without_validation_does_not_synchronise(kind: str, dtype: torch.dtype) -> None:
    a, b = _pair(256, 3)
    x = torch.randn(2048, 256, dtype=torch.float64)
    xc, ac, bc = x.to("cuda", dtype), a.to("cuda", dtype), b.to("cuda", dtype)
    apply_orthogonal_map(xc, ac, bc, kind=kind, validate=False)  # warm-up outside the checked call
    with cuda_sync_errors():
        y = apply_orthogonal_map(xc, ac, bc, kind=kind, validate=False)
        T = orthogonal_map(ac, bc, kind=kind, validate=False)
    assert y.device.type == "cuda" and y.dtype == dtype and T.device.type == "cuda"
    # the float64 map of the inputs as rounded to dtype; the O(d) update in dtype rounds at the output's scale
    rounded = (v.to(dtype).double().numpy() for v in (x, a, b))
    xr, ar, br = rounded
    exact = xr @ reference.closed_form(ar, br, kind=kind).T
    assert np.abs(y.double().cpu().numpy() - exact).max() <= 4 * torch.finfo(dtype).eps * np.abs(exact).max()
