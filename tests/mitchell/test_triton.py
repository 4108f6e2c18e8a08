"""The Triton Mitchell kernels (:mod:`kexue.mitchell._triton`) without a GPU, and on one where present.

Under ``TRITON_INTERPRET=1`` every kernel runs on CPU tensors and must equal the torch path bit for bit
on random bit patterns (which include NaN, infinities and subnormals) and on a grid of special operands;
the matrix product is compared with ``matmul._accumulate`` (float32 sums in increasing ``k``), NaN
payloads aside. The kernels are also compiled ahead of time for sm_80 and sm_90 with no register spills.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("triton")

from kexue import mitchell
from kexue.mitchell._bits import torch_binary
from kexue.mitchell.correction import lambda_correction
from kexue.mitchell.matrix import _accumulate
from triton_support import assert_no_spills, compile_report, compiled, interpreted

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CORRECTIONS = (None, "constant", "piecewise", "lmul")
_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(scope="module")
def kernels() -> Iterator[ModuleType]:
    """The kernel module built for the Triton interpreter (CPU tensors)."""
    with interpreted("kexue.mitchell._triton", "_binary_kernel") as module:
        yield module


def _random_bits(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``n`` uniformly random bit patterns viewed as ``dtype`` (every class of value occurs)."""
    width = torch.finfo(dtype).bits
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2 ** (width - 1)), 2 ** (width - 1), (n,), generator=g, dtype=torch.int64)
    return bits.to(_INT[dtype]).view(dtype)


def _specials(dtype: torch.dtype) -> torch.Tensor:
    """Zeros, infinities, NaN, the subnormal and normal range ends and values near carries, both signs."""
    info = torch.finfo(dtype)
    values = [
        0.0,
        float("inf"),
        float("nan"),
        info.smallest_normal,
        info.max,
        1.0,
        1.5,
        1.9990234375,
        3.0,
        info.smallest_normal / 2,
        info.smallest_normal * 0.75,
        2.0**-60,
        2.0**60,
    ]
    positive = torch.tensor(values, dtype=torch.float64).to(dtype)
    tiny = torch.tensor(
        [1, 3, (1 << (info.bits - 1 - (8 if info.bits == 32 or dtype == torch.bfloat16 else 5))) - 1], dtype=_INT[dtype]
    ).view(dtype)  # subnormals: the smallest, 3 ulp, the largest
    positive = torch.cat((positive, tiny))
    return torch.cat((positive, -positive))


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and torch.equal(got.view(_INT[got.dtype]), want.view(_INT[want.dtype]))


def _same_values(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bit for bit, except that any NaN matches any NaN (sums of ±∞ make NaN whose payload is the hardware's)."""
    nan = torch.isnan(want)
    return torch.equal(torch.isnan(got), nan) and _same_bits(got.masked_fill(nan, 0), want.masked_fill(nan, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("correction", CORRECTIONS)
def test_mul_random_bits(kernels: ModuleType, dtype: torch.dtype, correction: str | None) -> None:
    a, b = _random_bits(2048, dtype, 1), _random_bits(2048, dtype, 2)
    corr = 0 if correction is None else lambda_correction(correction, a, b)
    assert _same_bits(kernels.mul(a, b, correction=correction), torch_binary(a, b, "mul", corr))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["mul", "div"])
def test_special_operands(kernels: ModuleType, dtype: torch.dtype, op: str) -> None:
    s = _specials(dtype)
    a, b = s[:, None], s[None, :]  # every pair, through broadcasting (stride-0 operands)
    got = kernels.mul(a, b) if op == "mul" else kernels.div(a, b)
    want = torch_binary(a, b, op)
    assert _same_bits(got, want)
    assert torch.isnan(got).any() and torch.isinf(got).any() and (got == 0).any()  # the grid reaches the edge cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_div_random_bits(kernels: ModuleType, dtype: torch.dtype) -> None:
    a, b = _random_bits(2048, dtype, 3), _random_bits(2048, dtype, 4)
    assert _same_bits(kernels.div(a, b), torch_binary(a, b, "div"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log2(kernels: ModuleType, dtype: torch.dtype) -> None:
    x = torch.cat((_random_bits(2048, dtype, 5), _specials(dtype)))
    assert _same_bits(kernels.log2(x), mitchell.log2(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp2(kernels: ModuleType, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    halves = torch.arange(-600, 600, dtype=torch.float64) / 4  # ties: y · 2^m exactly half-way (for small m)
    y = torch.cat(
        (
            _random_bits(1024, dtype, 7),
            (torch.randn(1024, generator=g) * 60).to(dtype),
            halves.to(dtype),
            _specials(dtype),
        )
    )
    assert _same_bits(kernels.exp2(y), mitchell.exp2(y))


def test_strided_and_broadcast_operands(kernels: ModuleType) -> None:
    a = _random_bits(6 * 40, torch.float32, 8).view(6, 40).t()  # (40, 6) transposed view
    b = _random_bits(6, torch.float32, 9)  # broadcast along rows
    assert _same_bits(
        kernels.mul(a, b, correction="piecewise"), torch_binary(a, b, "mul", lambda_correction("piecewise", a, b))
    )
    scalar = torch.tensor(0.7, dtype=torch.float32)
    assert _same_bits(kernels.mul(a, scalar), torch_binary(a, scalar, "mul"))


def test_empty(kernels: ModuleType) -> None:
    assert kernels.mul(torch.empty(0, 3), torch.empty(0, 3)).shape == (0, 3)
    assert torch.equal(kernels.matmul(torch.ones(2, 0), torch.ones(0, 3)), torch.zeros(2, 3))


def test_rejects_other_formats(kernels: ModuleType) -> None:
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.mul(torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("correction", [None, "piecewise"])
def test_bmm_matches_torch_summation_order(kernels: ModuleType, dtype: torch.dtype, correction: str | None) -> None:
    g = torch.Generator().manual_seed(10)
    a = (torch.randn(2, 17, 9, generator=g) * 3).to(dtype)
    b = (torch.randn(2, 9, 12, generator=g) * 3).to(dtype)
    got = kernels.bmm(a, b, correction=correction, block=16)
    assert _same_bits(got, _accumulate(a, b, correction).to(dtype))


def test_bmm_order_is_increasing_k(kernels: ModuleType) -> None:
    # 1 + 2^-24 + 2^-24 + ... in increasing k stays 1 in float32; summing the small terms first would not
    a = torch.tensor([[[1.0] + [2.0**-24] * 7]])
    b = torch.ones(1, 8, 1)
    got = kernels.bmm(a, b, block=16)
    assert got.item() == 1.0 and _same_bits(got, _accumulate(a, b, None))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's ∞ − ∞ in the interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_special_values_and_views(kernels: ModuleType, dtype: torch.dtype) -> None:
    s = _specials(dtype)
    a = torch.cat((s, _random_bits(8, dtype, 11))).view(5, 8)  # NaN, ±∞, subnormals among the entries
    b = _random_bits(8 * 5, dtype, 12).view(5, 8).t()  # (8, 5) transposed view
    want = _accumulate(a, b.contiguous(), None).to(dtype)
    assert _same_values(kernels.matmul(a, b, block=16), want)


def test_bmm_broadcast_batch_view(kernels: ModuleType) -> None:
    a = _random_bits(3 * 6, torch.bfloat16, 13).view(1, 3, 6).abs().clamp(max=1e4)  # finite operands
    b = (torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(14))).to(torch.bfloat16)
    a2 = a.expand(2, 3, 6)  # stride 0 over the batch, read in place
    assert _same_bits(
        kernels.bmm(a2, b, correction="constant", block=16),
        _accumulate(a2.contiguous(), b, "constant").to(torch.bfloat16),
    )


def test_compiles_for_sm80_and_sm90_without_spills(tmp_path: Path) -> None:
    report = compile_report("kexue.mitchell._triton", tmp_path)
    assert len(report) == 30
    assert_no_spills(report)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_bit_identical(dtype: torch.dtype) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the interpreter is on: the compiled kernels are not what runs")
    kernels = compiled("kexue.mitchell._triton", "_binary_kernel")
    a, b = _random_bits(1 << 20, dtype, 15).cuda(), _random_bits(1 << 20, dtype, 16).cuda()
    for correction in CORRECTIONS:
        corr = 0 if correction is None else lambda_correction(correction, a, b)
        assert _same_bits(kernels.mul(a, b, correction=correction), torch_binary(a, b, "mul", corr))
    assert _same_bits(kernels.div(a, b), torch_binary(a, b, "div"))
    assert _same_bits(kernels.log2(a), mitchell.log2(a))
    assert _same_bits(kernels.exp2(a), mitchell.exp2(a))
    g = torch.Generator().manual_seed(17)
    x, w = torch.randn(3, 100, 70, generator=g).to(dtype).cuda(), torch.randn(3, 70, 90, generator=g).to(dtype).cuda()
    assert _same_values(kernels.bmm(x, w, correction="piecewise"), _accumulate(x, w, "piecewise").to(dtype))


def test_auto_backend_takes_the_triton_kernels_for_cuda_tensors(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backend="auto"`` sends CUDA operands of float32/float16/bfloat16 to the Triton kernels (here: CPU
    tensors under the interpreter, declared CUDA) for mul, matmul and bmm, bit-identical to the torch path;
    ``backend="torch"`` and float64 never take them."""
    from kexue import _triton as shared
    from kexue import mitchell

    calls: list[str] = []
    for name in ("mul", "matmul", "bmm"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    monkeypatch.setattr(shared, "on_cuda", lambda *tensors: True)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 7, generator=g).bfloat16(), torch.randn(7, 3, generator=g).bfloat16()
    assert torch.equal(
        mitchell.mul(a, a, correction="piecewise"), mitchell.mul(a, a, correction="piecewise", backend="torch")
    )
    assert torch.equal(mitchell.matmul(a, b), mitchell.matmul(a, b, backend="torch"))
    assert torch.equal(
        mitchell.bmm(a[None].expand(2, 5, 7), b), mitchell.bmm(a[None].expand(2, 5, 7), b, backend="torch")
    )
    assert calls[:2] == ["mul", "matmul"] and calls[-1] == "bmm"  # (the kernel's matmul runs through its bmm)
    launched = len(calls)
    mitchell.mul(a.double(), a.double())
    mitchell.matmul(a, b, backend="torch")
    assert len(calls) == launched


def test_a_failing_triton_kernel_falls_back_to_torch_with_one_warning(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Mitchell kernel that fails on a user's GPU never breaks the call: one NativeFallbackWarning, the torch
    path's (bit-identical) result, and the torch path from then on."""
    from kexue import _triton as shared
    from kexue import mitchell
    from kexue._native import NativeFallbackWarning

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(shared, "on_cuda", lambda *tensors: True)
    monkeypatch.setattr(shared, "_FAILURES", {})
    monkeypatch.setattr(kernels, "matmul", broken)
    a = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    with pytest.warns(NativeFallbackWarning, match="out of resources"):
        got = mitchell.matmul(a, a.T)
    assert torch.equal(got, mitchell.matmul(a, a.T, backend="torch"))
    assert not shared.usable("mitchell", "auto", a)
