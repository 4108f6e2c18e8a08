"""The compiled float32 kernels (``_mitchell_kernel.c``): element-wise product and matrix product.

Built, cached and chosen by :mod:`kexue._native` (``KEXUE_NATIVE=0`` disables it). Every entry
point has a torch equivalent, which is what runs when the kernel is unavailable (one warning under
``backend="auto"``), for other dtypes and on other devices; the tests compare the two bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from kexue._native import BACKENDS, FLAGS, NativeLibrary
from kexue._native import use_native as select
from kexue._shared import check_choice

__all__ = ["BACKENDS", "available", "bmm", "check_backend", "matmul", "mul", "use_native"]

_MUL, _MATMUL, _BMM = "kx_mitchell_mul_f32", "kx_mitchell_matmul_f32", "kx_mitchell_bmm_f32"
_LIBRARY = NativeLibrary(
    "mitchell",
    Path(__file__).with_name("_mitchell_kernel.c"),
    [_MUL, _MATMUL, _BMM],
    flags=[*FLAGS, "-ffp-contract=off"],
)
_MODES = {None: 0, "constant": 1, "piecewise": 2, "lmul": 1}  # lmul is a constant too


def available() -> bool:
    """Whether both entry points are built (building them now if needed) and loadable."""
    return all(_LIBRARY.available(s) for s in (_MUL, _MATMUL, _BMM))


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)


def _unsupported(tensors: tuple[torch.Tensor, ...]) -> str | None:
    bad = [t for t in tensors if t.dtype != torch.float32 or t.device.type != "cpu"]
    return f"takes float32 CPU tensors only; got {bad[0].dtype} on {bad[0].device}" if bad else None


def use_native(backend: str, *tensors: torch.Tensor, op: str = "mul") -> bool:
    """Whether ``op`` (``"mul"``, ``"matmul"`` or ``"bmm"``) runs in the kernel (see :func:`kexue._native.use_native`)."""
    return select(_LIBRARY, backend, {"mul": _MUL, "matmul": _MATMUL, "bmm": _BMM}[op], _unsupported(tensors))


@functools.cache
def _correction_args(correction: str | None) -> tuple[int, int, ctypes.Array]:
    """(mode, constant, table) for the kernel; cached: layers call the kernel three times a step."""
    from kexue.mitchell.correction import constant_correction, lmul_correction, piecewise_values

    table = (ctypes.c_int32 * 64)()
    c = 0
    if correction == "constant":
        c = constant_correction(23)
    elif correction == "lmul":
        c = lmul_correction(23)
    elif correction == "piecewise":
        for i, v in enumerate(piecewise_values(23).ravel()):
            table[i] = int(v)
    return _MODES[correction], c, table


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def mul(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """Element-wise product (broadcast first; contiguous copies only where needed)."""
    a, b = torch.broadcast_tensors(a, b)
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    mode, c, table = _correction_args(correction)
    _LIBRARY.function(_MUL)(
        _ptr(a),
        _ptr(b),
        _ptr(out),
        ctypes.c_int64(a.numel()),
        ctypes.c_int(mode),
        ctypes.c_int32(c),
        table,
        ctypes.c_int(max(1, torch.get_num_threads())),
    )
    return out


def _check_status(status: int, what: str) -> None:
    if status != 0:
        raise MemoryError(f"the Mitchell {what} kernel could not allocate its scratch memory")


def matmul(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """``(M, K) ⊗ (K, N)`` with float32 accumulation in increasing ``k`` (any values: infinities and NaN
    follow the element-wise policy)."""
    a, b = a.contiguous(), b.contiguous()
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n, dtype=torch.float32)
    mode, c, table = _correction_args(correction)
    status = _LIBRARY.function(_MATMUL)(
        _ptr(a),
        _ptr(b),
        _ptr(out),
        ctypes.c_int64(m),
        ctypes.c_int64(k),
        ctypes.c_int64(n),
        ctypes.c_int(mode),
        ctypes.c_int32(c),
        table,
        ctypes.c_int(max(1, torch.get_num_threads())),
    )
    _check_status(status, "matmul")
    return out


def bmm(a: torch.Tensor, b: torch.Tensor, correction: str | None = None) -> torch.Tensor:
    """``(B, M, K) ⊗ (B, K, N)``, each product as :func:`matmul`."""
    a, b = a.contiguous(), b.contiguous()
    (batch, m, k), n = a.shape, b.shape[2]
    out = torch.empty(batch, m, n, dtype=torch.float32)
    mode, c, table = _correction_args(correction)
    status = _LIBRARY.function(_BMM)(
        _ptr(a),
        _ptr(b),
        _ptr(out),
        ctypes.c_int64(batch),
        ctypes.c_int64(m),
        ctypes.c_int64(k),
        ctypes.c_int64(n),
        ctypes.c_int(mode),
        ctypes.c_int32(c),
        table,
        ctypes.c_int(max(1, torch.get_num_threads())),
    )
    _check_status(status, "bmm")
    return out
