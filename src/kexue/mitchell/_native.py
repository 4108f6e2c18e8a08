"""The compiled float32 kernels (``_mitchell_kernel.c``): element-wise product and matrix product.

Built and cached by :mod:`kexue._native` (``KEXUE_NATIVE=0`` disables it). Every entry point
has a torch equivalent, which is what runs when the kernel is unavailable, for other dtypes
and on other devices; the tests compare the two bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from kexue._native import FLAGS, NativeLibrary, NativeUnavailable
from kexue._shared import check_choice

__all__ = ["BACKENDS", "available", "check_backend", "matmul", "mul", "use_native"]

BACKENDS = ("auto", "torch", "native")
_LIBRARY = NativeLibrary("mitchell", Path(__file__).with_name("_mitchell_kernel.c"),
                         ["kx_mitchell_mul_f32", "kx_mitchell_matmul_f32"], flags=[*FLAGS, "-ffp-contract=off"])
_MODES = {None: 0, "constant": 1, "piecewise": 2}


def available() -> bool:
    return _LIBRARY.available()


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)


def use_native(backend: str, *tensors: torch.Tensor) -> bool:
    """Whether to run the kernel: float32 CPU tensors, and the kernel builds (``native`` insists)."""
    fits = all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
    if backend == "torch":
        return False
    if backend == "native":
        if not fits:
            raise ValueError("backend='native' takes float32 CPU tensors only; use backend='auto' or 'torch'")
        try:
            _LIBRARY.load()
        except NativeUnavailable as exc:
            raise RuntimeError(f"backend='native' is unavailable: {exc}; use backend='torch' or 'auto'") from exc
        return True
    return fits and _LIBRARY.available()


@functools.lru_cache(maxsize=None)
def _correction_args(correction: str | None) -> tuple[int, int, ctypes.Array]:
    """(mode, constant, table) for the kernel; cached: layers call the kernel three times a step."""
    from kexue.mitchell.correction import constant_correction, piecewise_table

    table = (ctypes.c_int32 * 64)()
    c = 0
    if correction == "constant":
        c = constant_correction(23)
    elif correction == "piecewise":
        for i, v in enumerate(piecewise_table(23).flatten().tolist()):
            table[i] = v
    return _MODES[correction], c, table


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def mul(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """Element-wise product (broadcast first; contiguous copies only where needed)."""
    a, b = torch.broadcast_tensors(a, b)
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    mode, c, table = _correction_args(correction)
    _LIBRARY.load().kx_mitchell_mul_f32(_ptr(a), _ptr(b), _ptr(out), ctypes.c_int64(a.numel()), ctypes.c_int(mode),
                                        ctypes.c_int32(c), table, ctypes.c_int(max(1, torch.get_num_threads())))
    return out


def matmul(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """``(M, K) ⊗ (K, N)`` with float32 accumulation in increasing ``k`` (finite inputs only)."""
    a, b = a.contiguous(), b.contiguous()
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=torch.float32)
    mode, c, table = _correction_args(correction)
    _LIBRARY.load().kx_mitchell_matmul_f32(_ptr(a), _ptr(b), _ptr(out), ctypes.c_int64(m), ctypes.c_int64(k), ctypes.c_int64(n),
                                           ctypes.c_int(mode), ctypes.c_int32(c), table, ctypes.c_int(max(1, torch.get_num_threads())))
    return out
