"""The Triton rotary kernel (:mod:`kexue.positional._triton`) without a GPU, and on one where present.

Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors (numpy, one program at a time): it is
compared with the torch path bit for bit (the kernel rounds like the separate torch ops: FP fusion is
off), with Liger-Kernel's own Triton RoPE as the peer oracle, and through ``gradcheck``. The kernel is
also compiled ahead of time for sm_80 and sm_90 (bundled ``ptxas``), which must succeed with no
register spills. ``gpu`` tests repeat the comparisons on CUDA.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("triton")

from kexue.positional.rope import _rotate_torch
from triton_support import assert_no_spills, compile_report, compiled, interpreted

HALF_TYPES = (torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def kernels() -> Iterator[ModuleType]:
    """The kernel module built for the Triton interpreter (CPU tensors)."""
    with interpreted("kexue.positional._triton", "_rope_kernel") as module:
        yield module


def _tables(*shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    phi = torch.rand(*shape, generator=g, dtype=torch.float64) * 40
    return phi.cos().float(), phi.sin().float()


def _queries(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("inverse", "products"), [(False, False), (True, False), (False, True)])
def test_matches_torch_path_bit_for_bit(
    kernels: ModuleType, dtype: torch.dtype, interleaved: bool, inverse: bool, products: bool
) -> None:
    x = _queries(2, 5, 3, 12, dtype=dtype).transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D); R = 8 of D = 12
    cos, sin = _tables(2, 1, 5, 4)  # per-sequence tables, broadcast over heads
    got = kernels.rotate(x, cos, sin, interleaved=interleaved, transpose=inverse, round_products=products)
    want = _rotate_torch(x, cos, sin, interleaved, inverse, products and dtype in HALF_TYPES)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, want)
    assert torch.equal(got[..., 8:], x[..., 8:])  # the coordinates past R are copied


def test_products_rounding_differs_from_once_in_bfloat16(kernels: ModuleType) -> None:
    x = _queries(4, 64, 32, dtype=torch.bfloat16)
    cos, sin = _tables(64, 16)
    once = kernels.rotate(x, cos, sin)
    products = kernels.rotate(x, cos, sin, round_products=True)
    assert not torch.equal(once, products)  # the flag reaches the kernel
    assert torch.equal(products, _rotate_torch(x, cos, sin, False, False, True))


def test_float64_tables_round_once_to_float32(kernels: ModuleType) -> None:
    x = _queries(3, 7, 16)
    g = torch.Generator().manual_seed(3)
    phi = torch.rand(7, 8, generator=g, dtype=torch.float64) * 100
    got = kernels.rotate(x, phi.cos(), phi.sin())
    assert torch.equal(got, _rotate_torch(x, phi.cos(), phi.sin(), False, False))


def test_error_against_float64_oracle(kernels: ModuleType) -> None:
    x = _queries(2, 16, 64)
    cos, sin = _tables(16, 32)
    got = kernels.rotate(x, cos, sin).double()
    exact = _rotate_torch(x.double(), cos.double(), sin.double(), False, False)
    assert (got - exact).abs().max().item() <= 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()


def test_out_in_place_and_separate(kernels: ModuleType) -> None:
    x = _queries(2, 3, 6, 10)
    cos, sin = _tables(6, 3)  # R = 6 of D = 10
    want = _rotate_torch(x, cos, sin, True, False)
    buffer = torch.full_like(x, float("nan"))
    assert kernels.rotate(x, cos, sin, buffer, interleaved=True) is buffer
    assert torch.equal(buffer, want)  # tail copied into a fresh buffer
    y = x.clone()
    kernels.rotate(y, cos, sin, y, interleaved=True)
    assert torch.equal(y, want)


def test_strided_out_view(kernels: ModuleType) -> None:
    x = _queries(2, 4, 3, 8).transpose(1, 2)  # (B, H, T, D) view
    cos, sin = _tables(4, 4)
    storage = torch.zeros(2, 4, 3, 8)
    out = storage.transpose(1, 2)
    kernels.rotate(x, cos, sin, out)
    assert torch.equal(out, _rotate_torch(x, cos, sin, False, False))


def test_queries_and_keys_in_one_launch(kernels: ModuleType) -> None:
    q = _queries(2, 4, 5, 16, dtype=torch.bfloat16, seed=4)
    k = _queries(2, 2, 5, 16, dtype=torch.bfloat16, seed=5)  # grouped-query attention: 2 kv heads
    cos, sin = _tables(5, 8)
    q_out, k_out = torch.empty_like(q), k  # keys in place
    k_before = k.clone()
    kernels.rotate_many([(q, cos, sin, q_out), (k, cos, sin, k_out)], interleaved=False, transpose=False, block_rows=4)
    assert torch.equal(q_out, _rotate_torch(q, cos, sin, False, False))
    assert torch.equal(k, _rotate_torch(k_before, cos, sin, False, False))


def test_positions_index_the_table(kernels: ModuleType) -> None:
    x = _queries(3, 2, 4, 12)
    cos, sin = _tables(50, 6)  # (P, R/2)
    offset = torch.tensor([0, 17, 41])
    positions = (offset[:, None] + torch.arange(4))[:, None, :]  # (B, 1, T): one KV-cache offset per sequence
    got = kernels.rotate(x, cos, sin, positions=positions, transpose=True)
    assert torch.equal(got, _rotate_torch(x, cos[positions], sin[positions], False, True))


def test_more_than_four_unmergeable_dimensions(kernels: ModuleType) -> None:
    x = _queries(2, 2, 2, 2, 2, 3, 8).permute(4, 0, 3, 1, 2, 5, 6)  # six leading dimensions that do not merge
    cos, sin = _tables(2, 2, 1, 2, 2, 3, 4)
    out = torch.empty_like(x)
    kernels.rotate(x, cos, sin, out)
    assert torch.equal(out, _rotate_torch(x, cos, sin, False, False))


def test_empty_input(kernels: ModuleType) -> None:
    x = torch.empty(0, 4, 8)
    cos, sin = _tables(4, 4)
    assert kernels.rotate(x, cos, sin).shape == (0, 4, 8)


def test_rejects_mismatched_out(kernels: ModuleType) -> None:
    x = _queries(2, 8)
    cos, sin = _tables(2, 4)
    with pytest.raises(ValueError, match="one shape and dtype"):
        kernels.rotate(x, cos, sin, torch.empty(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("interleaved", [False, True])
def test_gradcheck_float64(kernels: ModuleType, interleaved: bool) -> None:
    x = _queries(2, 3, 6, dtype=torch.float64).requires_grad_()
    phi = torch.rand(3, 2, dtype=torch.float64)
    cos, sin = phi.cos().requires_grad_(), phi.sin().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: kernels.apply(*a, interleaved=interleaved, inverse=True), (x, cos, sin))


def test_backward_is_the_inverse_rotation(kernels: ModuleType) -> None:
    x = _queries(2, 4, 8).requires_grad_()
    cos, sin = _tables(4, 4)
    g = _queries(2, 4, 8, seed=9)
    kernels.apply(x, cos, sin).backward(g)
    assert torch.equal(x.grad, _rotate_torch(g, cos, sin, False, True))


def test_liger_kernel_rope_as_peer_oracle(kernels: ModuleType) -> None:
    pytest.importorskip("liger_kernel")
    liger = importlib.import_module("liger_kernel.ops.rope")
    if not isinstance(liger._triton_rope, type(kernels._rope_kernel)):
        liger = importlib.reload(liger)  # imported before TRITON_INTERPRET was set
    q = _queries(2, 4, 6, 16, seed=11)
    k = _queries(2, 2, 6, 16, seed=12)
    cos, sin = _tables(6, 8)
    hf_cos, hf_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]  # HF's duplicated (1, T, D)
    liger_q, liger_k = liger.rope_forward(q.clone(), k.clone(), hf_cos, hf_sin)[:2]
    ours_q, ours_k = torch.empty_like(q), torch.empty_like(k)
    kernels.rotate_many([(q, cos, sin, ours_q), (k, cos, sin, ours_k)], interleaved=False, transpose=False)
    # float32 tables and inputs: Liger's ``q · cos − rotate_half(q) · sin`` rounds as ours, operation by operation
    assert torch.equal(ours_q, liger_q) and torch.equal(ours_k, liger_k)


def test_compiles_for_sm80_and_sm90_without_spills(tmp_path: Path) -> None:
    report = compile_report("kexue.positional._triton", tmp_path)
    assert len(report) == 8
    assert_no_spills(report)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True])
def test_cuda_matches_torch_path(dtype: torch.dtype, interleaved: bool) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the interpreter is on: the compiled kernel is not what runs")
    kernels = compiled("kexue.positional._triton", "_rope_kernel")
    x = _queries(4, 256, 16, 128, dtype=dtype).cuda().transpose(1, 2)
    cos, sin = (t.cuda() for t in _tables(4, 1, 256, 48))  # partial rotary: R = 96 of 128
    for products in (False, True):
        got = kernels.rotate(x, cos, sin, interleaved=interleaved, round_products=products)
        want = _rotate_torch(x, cos, sin, interleaved, False, products and dtype in HALF_TYPES)
        assert torch.equal(got, want)
    y = x.clone()
    kernels.rotate(y, cos, sin, y, interleaved=interleaved, transpose=True)
    assert torch.equal(y, _rotate_torch(x, cos, sin, interleaved, True))


def test_auto_backend_takes_the_triton_kernel_for_cuda_tensors(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backend="auto"`` sends CUDA tensors to the Triton kernel (here: CPU tensors under the interpreter,
    declared CUDA), for ``apply_rotary`` with and without autograd and ``apply_rotary_qk`` in one launch;
    ``backend="torch"`` never does. Results equal the torch path."""
    from kexue import _triton as shared
    from kexue.positional import apply_rotary, apply_rotary_qk

    launches: list[int] = []
    real = kernels.rotate_many
    monkeypatch.setattr(kernels, "rotate_many", lambda jobs, **kw: (launches.append(len(jobs)), real(jobs, **kw))[1])
    monkeypatch.setattr(shared, "on_cuda", lambda *tensors: True)
    q, k = _queries(1, 4, 6, 8, dtype=torch.bfloat16), _queries(1, 2, 6, 8, dtype=torch.bfloat16, seed=2)
    cos, sin = _tables(6, 4)
    want_q = _rotate_torch(q, cos, sin, False, False, False)
    assert torch.equal(apply_rotary(q, cos, sin), want_q) and launches == [1]
    rq, rk = apply_rotary_qk(q, k, cos, sin)
    assert torch.equal(rq, want_q) and torch.equal(rk, _rotate_torch(k, cos, sin, False, False, False))
    assert launches == [1, 2]  # q and k in one launch
    x = q.float().requires_grad_()
    apply_rotary(x, cos, sin).sum().backward()  # through TritonRotary: the gradient is the inverse rotation
    assert torch.allclose(x.grad, _rotate_torch(torch.ones_like(x), cos, sin, False, True, False), atol=1e-6)
    assert launches[2:] and len(launches) >= 4
    before = len(launches)
    apply_rotary(q, cos, sin, backend="torch")
    assert len(launches) == before


def test_a_failing_triton_kernel_falls_back_to_torch_with_one_warning(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that fails to compile or launch on a user's GPU never breaks the call: one
    NativeFallbackWarning, the torch path's result, and the torch path for every later call."""
    from kexue import _triton as shared
    from kexue._native import NativeFallbackWarning
    from kexue.positional import _native, apply_rotary

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("PTX JIT compilation failed")

    monkeypatch.setattr(shared, "on_cuda", lambda *tensors: True)
    monkeypatch.setattr(kernels, "rotate_many", broken)
    monkeypatch.setattr(shared, "_FAILURES", {})
    x = _queries(1, 2, 6, 8)
    cos, sin = _tables(6, 4)
    with pytest.warns(NativeFallbackWarning, match="PTX JIT compilation failed"):
        got = apply_rotary(x, cos, sin)
    assert torch.equal(got, _rotate_torch(x, cos, sin, False, False, False))
    assert not _native.use_triton("auto", x, cos, sin)  # later calls go straight to the torch path
