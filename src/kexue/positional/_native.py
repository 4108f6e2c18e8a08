"""Call the fused CPU rotary kernel (``_rope_kernel.c``), built by :mod:`kexue._native`.

The kernel is plain C with OpenMP, compiled on first use and cached; when it cannot be built or a
dtype's entry point is missing, ``backend="auto"`` warns once and uses the torch path (see
:mod:`kexue._native` for the cache, ``KEXUE_NATIVE=0`` and ``CC``).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Literal, get_args

import torch

from kexue import _triton as triton_kernels
from kexue._native import Backend, NativeLibrary, NativeUnavailable
from kexue._native import use_native as select
from kexue._shared import check_choice

__all__ = [
    "OPS",
    "Backend",
    "NativeUnavailable",
    "Op",
    "available",
    "compile_seconds",
    "fresh_compile_seconds",
    "rotate",
    "supports",
    "symbol",
    "use_native",
]

# "rotate": the sums round once; "rotate_products": each product rounds to a half type first (transformers')
Op = Literal["rotate", "rotate_products"]
OPS: tuple[Op, ...] = get_args(Op)

_MAXDIM = 8
_SYMBOLS = {
    torch.float32: "kx_rope_float32",
    torch.float64: "kx_rope_float64",
    torch.bfloat16: "kx_rope_bfloat16",
    torch.float16: "kx_rope_float16",
}
# the half types' entry points that round each product to the storage type (transformers' recipe)
_PRODUCT_SYMBOLS = {
    torch.bfloat16: "kx_rope_bfloat16_products",
    torch.float16: "kx_rope_float16_products",
}
_LIBRARY = NativeLibrary(
    "rope", Path(__file__).with_name("_rope_kernel.c"), [*_SYMBOLS.values(), *_PRODUCT_SYMBOLS.values()]
)


def symbol(dtype: torch.dtype, round_products: bool = False) -> str:
    """The kernel's entry point for ``dtype`` (``round_products``: the half types' transformers recipe)."""
    if round_products and dtype in _PRODUCT_SYMBOLS:
        return _PRODUCT_SYMBOLS[dtype]
    return _SYMBOLS.get(dtype, _SYMBOLS[torch.float32])


class _Layout(ctypes.Structure):
    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("shape", ctypes.c_int64 * _MAXDIM),
        ("x_stride", ctypes.c_int64 * _MAXDIM),
        ("out_stride", ctypes.c_int64 * _MAXDIM),
        ("cs_stride", ctypes.c_int64 * _MAXDIM),
    ]


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused CPU kernel for ``dtype`` is built (building it now if needed) and loadable."""
    return dtype in _SYMBOLS and _LIBRARY.available(_SYMBOLS[dtype])


def use_native(backend: Backend, *tensors: torch.Tensor, op: Op = "rotate") -> bool:
    """Whether ``op`` on ``tensors`` runs in the kernel (see :func:`kexue._native.use_native`).

    Args:
        backend: ``"auto"``, ``"native"`` or ``"torch"``.
        *tensors: the tensors to rotate (one, or queries and keys); the kernel's dtype is the first's.
        op: ``"rotate"`` (the sums round once) or ``"rotate_products"`` (for bfloat16/float16, each product
            rounds to the storage dtype first: transformers' recipe).

    Returns:
        True when the kernel runs, False for the torch path.

    Raises:
        ValueError: an unknown ``backend`` or ``op``, or ``backend="native"`` with tensors the kernel does
            not take.
        RuntimeError: ``backend="native"`` and the kernel cannot be built or loaded.
    """
    check_choice("op", op, OPS)
    if not tensors:
        raise ValueError("use_native needs at least one tensor")
    return select(_LIBRARY, backend, symbol(tensors[0].dtype, op == "rotate_products"), _unsupported(tensors))


def use_triton(backend: Backend, *tensors: torch.Tensor) -> bool:
    """Whether a rotation of ``tensors`` runs in the Triton kernel (:mod:`kexue.positional._triton`).

    The C kernel is CPU-only; on CUDA tensors ``backend="auto"`` or ``"native"`` takes the Triton kernel
    when triton imports (the ``gpu`` extra; CUDA builds of torch bring it) and it has not failed in this
    process (:func:`kexue._triton.usable`), else the torch path.

    Args:
        backend: ``"auto"``, ``"native"`` or ``"torch"``.
        *tensors: every tensor of the call (inputs and tables).

    Returns:
        True when the Triton kernel runs.
    """
    return triton_kernels.usable("rope", backend, *tensors)


def _unsupported(tensors: tuple[torch.Tensor, ...]) -> str | None:
    """None when the kernel takes every tensor, else why not."""
    for x in tensors:
        if not supports(x):
            return (
                "needs a CPU tensor of float32, float64, bfloat16 or float16 with 1 to 9 dimensions; "
                f"got {x.dtype} on {x.device} with {x.dim()} dimensions"
            )
    return None


def fresh_compile_seconds() -> float:
    """Compile the kernel into a throw-away directory and return the seconds it took (for benchmarks)."""
    return _LIBRARY.fresh_compile_seconds()


def compile_seconds() -> float:
    """Seconds spent compiling in this process (0 when the cached kernel was reused)."""
    return _LIBRARY.compile_seconds


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` (CPU, a float dtype, at most 8 leading dimensions); does not build it."""
    return x.device.type == "cpu" and x.dtype in _SYMBOLS and 1 <= x.dim() <= _MAXDIM + 1


# Below this many elements the kernel runs on one thread: waking an OpenMP team costs about a
# millisecond on a 2-core VM, 30x the whole rotation of a decode step's (B, H, 1, D) query.
PARALLEL_MIN_ELEMENTS = 1 << 16


def _threads(elements: int) -> int:
    return 1 if elements < PARALLEL_MIN_ELEMENTS else max(1, torch.get_num_threads())


class _Job(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("cs", ctypes.c_void_p),
        ("sn", ctypes.c_void_p),
        ("layout", ctypes.POINTER(_Layout)),
        ("D", ctypes.c_int64),
        ("copy_tail", ctypes.c_int64),
        ("stream", ctypes.c_int64),
    ]


# Out-of-place float32 calls writing at least this many bytes in all use non-temporal stores: the
# output cannot stay in this class of machine's cache anyway (32 MB of L3), and streaming it
# spares reading each output line before writing it. Smaller outputs stay in cache for the next op.
STREAM_MIN_BYTES = 1 << 25


def _job(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, keep: list[object], stream: bool
) -> _Job:
    x_stride, cs_stride, out_stride = x.stride(), cos.stride(), out.stride()
    if cs_stride != sin.stride() or cs_stride[-1] != 1 or x_stride[-1] != 1 or out_stride[-1] != 1:
        raise ValueError("rotate needs contiguous last dimensions and cos/sin with equal strides")
    n = x.dim() - 1
    layout = _Layout()
    layout.ndim = n
    layout.shape[:n] = x.shape[:-1]  # slice assignment: one ctypes call per field, not per dimension
    layout.x_stride[:n] = x_stride[:-1]
    layout.out_stride[:n] = out_stride[:-1]
    layout.cs_stride[:n] = cs_stride[:-1]
    keep.append(layout)  # the struct must outlive the call
    copy = out.data_ptr() != x.data_ptr()
    return _Job(
        x.data_ptr(),
        out.data_ptr(),
        cos.data_ptr(),
        sin.data_ptr(),
        ctypes.pointer(layout),
        x.shape[-1],
        int(copy),
        int(copy and stream),
    )


def rotate(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    *,
    interleaved: bool,
    transpose: bool,
    round_products: bool = False,
) -> torch.Tensor:
    """Run the kernel: ``out = R x`` (or ``Rᵀ x``) with one (cos, sin) per pair.

    ``cos``/``sin`` must already be broadcast to ``x.shape[:-1] + (R/2,)`` (stride-0 views are
    fine) with a contiguous last dimension; ``out`` has ``x``'s shape and dtype and a contiguous
    last dimension. ``out`` may be ``x`` itself (in place). Entries past ``R`` are copied
    unless ``out`` is ``x``. ``round_products``: for bfloat16/float16 ``x``, round each product
    to ``x``'s dtype before the sum (transformers' recipe); otherwise the sum rounds once.
    """
    rotate_many([(x, cos, sin, out)], interleaved=interleaved, transpose=transpose, round_products=round_products)
    return out


def rotate_many(
    jobs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    interleaved: bool,
    transpose: bool,
    round_products: bool = False,
) -> None:
    """:func:`rotate` for one or two ``(x, cos, sin, out)`` at once: one kernel call, one thread team.

    All ``x`` share a dtype and a rotated width ``R``; each has its own shape, strides and tables.
    """
    if not 1 <= len(jobs) <= 2:
        raise ValueError(f"the kernel takes 1 or 2 tensors per call; got {len(jobs)}")
    dtype, half = jobs[0][0].dtype, jobs[0][1].shape[-1]
    if any(x.dtype != dtype or out.dtype != dtype or cos.shape[-1] != half for x, cos, _, out in jobs):
        raise ValueError("tensors rotated in one kernel call must share their dtype and rotated width")
    live = [job for job in jobs if job[0].numel()]
    if not live:
        return
    function = _LIBRARY.function(symbol(dtype, round_products))
    keep: list[object] = []
    elements = sum(job[0].numel() for job in live)
    stream = elements * live[0][3].element_size() >= STREAM_MIN_BYTES
    array = (_Job * len(live))(*(_job(*job, keep, stream) for job in live))
    status = function(
        array,
        ctypes.c_int(len(live)),
        ctypes.c_int64(2 * half),
        ctypes.c_int(int(interleaved)),
        ctypes.c_int(int(transpose)),
        ctypes.c_int(_threads(elements)),
    )
    if status != 0:
        raise NativeUnavailable(f"rotary kernel rejected its arguments (status {status})")
