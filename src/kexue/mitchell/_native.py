"""The compiled float32 kernels (``_mitchell_kernel.c``): element-wise product and matrix product.

Built, cached and chosen by :mod:`kexue._native` (``KEXUE_NATIVE=0`` disables it). Every entry
point has a torch equivalent, which is what runs when the kernel is unavailable (one warning under
``backend="auto"``), for other dtypes and on other devices; the tests compare the two bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from types import ModuleType
from typing import Literal, get_args

import torch

from kexue import _triton as triton_kernels
from kexue._native import FLAGS, NativeLibrary
from kexue._native import use_native as select
from kexue._shared import check_choice
from kexue.mitchell.correction import Correction, constant_correction, lmul_correction, piecewise_values

__all__ = [
    "BACKENDS",
    "OPS",
    "TRITON_DTYPES",
    "Backend",
    "Op",
    "available",
    "bmm",
    "check_backend",
    "matmul",
    "mul",
    "triton_module",
    "use_native",
    "use_triton",
]

Backend = Literal["auto", "native", "torch"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
Op = Literal["mul", "matmul", "bmm"]
OPS: tuple[Op, ...] = get_args(Op)

_MUL, _MATMUL, _BMM = "kx_mitchell_mul_f32", "kx_mitchell_matmul_f32", "kx_mitchell_bmm_f32"
_LIBRARY = NativeLibrary(
    "mitchell",
    Path(__file__).with_name("_mitchell_kernel.c"),
    [_MUL, _MATMUL, _BMM],
    flags=[*FLAGS, "-ffp-contract=off"],
)
_SYMBOLS: dict[Op, str] = {"mul": _MUL, "matmul": _MATMUL, "bmm": _BMM}
_MODES = {None: 0, "constant": 1, "piecewise": 2, "lmul": 1}  # lmul is a constant too


def available() -> bool:
    """Whether the three entry points are built (building them now if needed) and loadable."""
    return all(_LIBRARY.available(s) for s in (_MUL, _MATMUL, _BMM))


def check_backend(backend: Backend) -> None:
    """A ValueError naming ``backend`` unless it is one of :data:`BACKENDS`.

    Args:
        backend: the value to check.
    """
    check_choice("backend", backend, BACKENDS)


def _unsupported(tensors: tuple[torch.Tensor, ...]) -> str | None:
    bad = [t for t in tensors if t.dtype != torch.float32 or t.device.type != "cpu"]
    return f"takes float32 CPU tensors only; got {bad[0].dtype} on {bad[0].device}" if bad else None


def use_native(backend: Backend, *tensors: torch.Tensor, op: Op = "mul") -> bool:
    """Whether ``op`` on ``tensors`` runs in the kernel (see :func:`kexue._native.use_native`).

    The choice depends on the backend, the tensors' dtype and device only: no value is read on the host.

    Args:
        backend: ``"auto"``, ``"native"`` or ``"torch"``.
        *tensors: the operands (the kernel takes float32 CPU tensors only).
        op: ``"mul"`` (element-wise), ``"matmul"`` or ``"bmm"``.

    Returns:
        True when the kernel runs, False for the torch path.

    Raises:
        ValueError: an unknown ``backend`` or ``op``, or ``backend="native"`` with tensors the kernel does
            not take.
        RuntimeError: ``backend="native"`` and the kernel cannot be built or loaded.
    """
    check_choice("op", op, OPS)
    return select(_LIBRARY, backend, _SYMBOLS[op], _unsupported(tensors))


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # those the Triton kernels take


def use_triton(backend: Backend, *tensors: torch.Tensor) -> bool:
    """Whether a Mitchell product of ``tensors`` runs in the Triton kernels (:mod:`kexue.mitchell._triton`).

    On CUDA tensors of float32, float16 or bfloat16, ``backend="auto"`` or ``"native"`` takes the Triton
    kernel (bit-identical to the torch path) when triton imports and the kernel has not failed in this
    process (:func:`kexue._triton.usable`); float64 and float8 stay on the torch path.

    Args:
        backend: ``"auto"``, ``"native"`` or ``"torch"``.
        *tensors: the operands.

    Returns:
        True when the Triton kernel runs.
    """
    return all(t.dtype in TRITON_DTYPES for t in tensors) and triton_kernels.usable("mitchell", backend, *tensors)


def triton_module() -> ModuleType:
    """:mod:`kexue.mitchell._triton`, imported on first use on CUDA (it imports triton)."""
    # optional extra: gpu (triton); importing it at module level would import triton with kexue.mitchell
    from kexue.mitchell import _triton

    return _triton


@functools.cache
def _correction_args(correction: Correction | None) -> tuple[int, int, ctypes.Array[ctypes.c_int32]]:
    """(mode, constant, table) for the kernel; cached: layers call the kernel three times a step."""
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


def mul(a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None) -> torch.Tensor:
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


def matmul(a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None) -> torch.Tensor:
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


def bmm(a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None) -> torch.Tensor:
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
