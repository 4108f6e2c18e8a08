"""mitchell.matmul: the kernel, the torch path and a scalar loop agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexue import mitchell
from kexue.mitchell import _native
from kexue.mitchell import reference as ref

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
    got = mitchell.matmul(a, b, backend="torch", correction=correction)
    assert _same(got, _scalar(a, b, correction))


@native
@pytest.mark.parametrize("correction", [None, "constant", "piecewise", "lmul"])
def test_kernel_matches_torch_path_bit_for_bit(correction) -> None:
    a, b = _inputs(1)
    k, t = (
        mitchell.matmul(a, b, backend="native", correction=correction),
        mitchell.matmul(a, b, backend="torch", correction=correction),
    )
    assert _same(k, t)
    assert torch.isinf(k).any()  # the overflow reached the output as inf, not garbage


def test_non_finite_inputs_and_other_dtypes() -> None:
    a, b = _inputs(2)
    a[0, 0] = float("nan")
    out = mitchell.matmul(a, b)
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1:]).any()
    x, y = torch.randn(4, 37).to(torch.bfloat16), torch.randn(37, 50).to(torch.bfloat16)
    got = mitchell.matmul(x, y)
    assert got.dtype == torch.bfloat16
    exact = x.float() @ y.float()
    rel = ((got.float() - exact).norm() / exact.norm()).item()
    assert 0.005 < rel < 0.1  # Mitchell's few-percent error, not exact, not garbage


def test_batched_leading_dims_and_errors() -> None:
    a, b = torch.randn(2, 3, 8), torch.randn(8, 4)
    got = mitchell.matmul(a, b)
    assert got.shape == (2, 3, 4) and torch.equal(got[1], mitchell.matmul(a[1], b))
    with pytest.raises(ValueError, match="do not multiply"):
        mitchell.matmul(torch.randn(3, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="correction"):
        mitchell.matmul(a, b, correction="table")


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize(
    ("a_shape", "b_shape"), [((12, 0), (0, 26)), ((0, 5), (5, 3)), ((4, 5), (5, 0)), ((2, 3, 0), (0, 4))]
)
def test_zero_size_operands_give_what_torch_matmul_gives(backend: str, a_shape: tuple, b_shape: tuple) -> None:
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    got = mitchell.matmul(a, b, backend=backend)
    want = torch.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=native)])
def test_bmm_is_mitchell_matmul_per_batch_entry_with_broadcasting(backend: str) -> None:
    a, b = _inputs(3)
    a3 = torch.stack([a, a.flip(0), -a])  # (3, 5, 37)
    b3 = torch.stack([b[:, :40], b[:, 40:80]])[:, None]  # (2, 1, 37, 40): broadcasts against (3,)
    got = mitchell.bmm(a3, b3, backend=backend, correction="lmul")
    assert got.shape == (2, 3, 5, 40)
    for i in range(2):
        for j in range(3):
            assert _same(got[i, j], mitchell.matmul(a3[j], b3[i, 0], backend="torch", correction="lmul"))
    with pytest.raises(ValueError, match="do not broadcast"):
        mitchell.bmm(torch.randn(3, 2, 4), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="do not multiply"):
        mitchell.bmm(torch.randn(3, 2, 4), torch.randn(3, 3, 5))


def test_bmm_in_bfloat16_and_float8_rounds_products_in_the_format() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, 6, generator=g), torch.randn(2, 6, 4, generator=g)
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        x, y = a.to(dtype), b.to(dtype)
        got = mitchell.bmm(x, y)
        # the scalar definition: products in the format, float32 sums in increasing k, one final rounding
        prods = [
            [
                [
                    [
                        ref.mul(float(x[i, r, k].float()), float(y[i, k, c].float()), str(dtype).split(".")[1])
                        for k in range(6)
                    ]
                    for c in range(4)
                ]
                for r in range(3)
            ]
            for i in range(2)
        ]
        want = torch.zeros(2, 3, 4)
        for k in range(6):
            want += torch.tensor([[[p[k] for p in row] for row in m] for m in prods], dtype=torch.float32)
        assert torch.equal(got.float(), want.to(dtype).float())


@native
@pytest.mark.parametrize("correction", [None, "lmul"])
def test_tiled_kernel_matches_torch_path_across_tiles_blocks_and_edges(correction) -> None:
    """Shapes with register tiles, several k-blocks (K > 256), edge rows and columns, and tiles
    that must leave the fast path (a zero, a subnormal, an underflow) beside tiles that overflow
    inside it: bit for bit the torch path."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(2, 9, 600, generator=g) * 4
    b = torch.randn(2, 600, 200, generator=g)
    a[0, 1, 300] = 0.0  # zero in one tile of one k-block
    b[1, 10, 70] = 1e-40  # subnormal
    a[1, 5, 20], b[1, 20, 150] = 1e-30, 1e-20  # an underflowing product
    a[0, 6, 590], b[0, 590, 3] = 3e38, 4.0  # overflow to inf inside a fast tile
    a[1, 0, :] = -a[1, 0, :]  # signs
    got = mitchell.bmm(a, b, backend="native", correction=correction)
    want = mitchell.bmm(a, b, backend="torch", correction=correction)
    assert _same(got, want)
    assert torch.isinf(got[0, 6, 3])


def _cpu_has(*flags: str) -> bool:
    from kexue._native import cpu_signature

    words = set(cpu_signature().split())
    return all(f in words for f in flags)


@native
@pytest.mark.slow  # two compilations
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_avx2_and_plain_builds_give_the_same_bits(march: str, tmp_path, monkeypatch) -> None:
    """The AVX2 tiles (x86-64-v3) and the generic-only build (x86-64) agree with the torch path
    bit for bit, wherever the machine can run them."""
    import platform

    from kexue._native import FLAGS, NativeLibrary

    if platform.machine() != "x86_64" or (march == "x86-64-v3" and not _cpu_has("avx2", "fma", "bmi2")):
        pytest.skip(f"this CPU cannot run -march={march} code")
    monkeypatch.setenv("KEXUE_CACHE_DIR", str(tmp_path))
    flags = [f for f in FLAGS if not f.startswith("-march")] + [f"-march={march}", "-ffp-contract=off"]
    library = NativeLibrary(f"mitchell-{march}", _native._LIBRARY.source, _native._LIBRARY.symbols, flags)
    monkeypatch.setattr(_native, "_LIBRARY", library)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 37, 300, generator=g) * 3, torch.randn(3, 300, 130, generator=g)
    a[0, 5, 7], b[2, 3, 100] = 0.0, 1e-41
    a[1, 2, 250], b[1, 250, 40] = 3e38, 8.0
    assert _same(mitchell.bmm(a, b, backend="native"), mitchell.bmm(a, b, backend="torch"))
