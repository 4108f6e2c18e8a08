"""mitchell_matmul: the kernel, the torch path and a scalar loop agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexue.mitchell import _native
from kexue.mitchell import reference as ref
from kexue.mitchell.matmul import mitchell_matmul

native = pytest.mark.skipif(not _native.available(), reason="no C compiler: the native kernel is not built")


def _scalar(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """Scalar reference: struct products, float32 sums in increasing k (numpy float32 scalars)."""
    from kexue.mitchell.correction import constant_correction

    corr = {None: 0, "constant": constant_correction(23)}[correction]
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            acc = np.float32(0)
            for k in range(a.shape[1]):
                acc = np.float32(acc + np.float32(ref.mul(float(a[i, k]), float(b[k, j]), "float32", corr)))
            out[i, j] = acc
    return torch.from_numpy(out)


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit-identical, NaN equal to NaN (inf + -inf in a sum gives NaN in both)."""
    return bool(((x.view(torch.int32) == y.view(torch.int32)) | (torch.isnan(x) & torch.isnan(y))).all())


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 37, generator=g)
    b = torch.randn(37, 300, generator=g)  # N > one 256-wide block
    a[0, :5] = 0.0  # zeros are skipped by the kernel: must not change anything
    a[1, 3] = 1e-39  # subnormal operand
    b[2, :7] = 3e-20  # products below the normal range
    b[4, 10], a[2, 4] = 3e38, 8.0  # overflow to inf
    return a, b


@pytest.mark.parametrize("correction", [None, "constant"])
def test_torch_path_matches_scalar_loop(correction) -> None:
    a, b = _inputs(0)
    b = b[:, :6]
    got = mitchell_matmul(a, b, backend="torch", correction=correction)
    assert _same(got, _scalar(a, b, correction))


@native
@pytest.mark.parametrize("correction", [None, "constant", "piecewise"])
def test_kernel_matches_torch_path_bit_for_bit(correction) -> None:
    a, b = _inputs(1)
    k, t = mitchell_matmul(a, b, backend="native", correction=correction), mitchell_matmul(a, b, backend="torch", correction=correction)
    assert _same(k, t)
    assert torch.isinf(k).any()  # the overflow reached the output as inf, not garbage


def test_non_finite_inputs_and_other_dtypes_take_the_torch_path() -> None:
    a, b = _inputs(2)
    a[0, 0] = float("nan")
    out = mitchell_matmul(a, b)
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1:]).any()
    x, y = torch.randn(4, 37).to(torch.bfloat16), torch.randn(37, 50).to(torch.bfloat16)
    got = mitchell_matmul(x, y)
    assert got.dtype == torch.bfloat16
    exact = x.float() @ y.float()
    rel = ((got.float() - exact).norm() / exact.norm()).item()
    assert 0.005 < rel < 0.1  # Mitchell's few-percent error, not exact, not garbage


def test_batched_leading_dims_and_errors() -> None:
    a, b = torch.randn(2, 3, 8), torch.randn(8, 4)
    got = mitchell_matmul(a, b)
    assert got.shape == (2, 3, 4) and torch.equal(got[1], mitchell_matmul(a[1], b))
    with pytest.raises(ValueError, match="do not multiply"):
        mitchell_matmul(torch.randn(3, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="correction"):
        mitchell_matmul(a, b, correction="table")


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize(("a_shape", "b_shape"), [((12, 0), (0, 26)), ((0, 5), (5, 3)), ((4, 5), (5, 0)), ((2, 3, 0), (0, 4))])
def test_zero_size_operands_give_what_torch_matmul_gives(backend: str, a_shape: tuple, b_shape: tuple) -> None:
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    got = mitchell_matmul(a, b, backend=backend)
    want = torch.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)
