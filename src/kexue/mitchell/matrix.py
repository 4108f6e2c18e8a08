"""Mitchell matrix products: every scalar product by :func:`~kexue.mitchell.ops.mul`,
summed exactly in float32 (float64 for float64 inputs) in increasing ``k``.

``C[i, j] = Σ_k a[i, k] ⊗ b[k, j]`` with one rounding per addition, in that order, so the
compiled kernel, the torch path and a scalar loop agree bit for bit. 16-bit inputs produce
their products in their own format (that is the multiplier being emulated), accumulate in
float32 and are rounded once to the input dtype at the end.

:func:`bmm` is the batched product (``torch.matmul``'s broadcasting of the leading
dimensions), with the same summation order in every batch entry.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from numpy.typing import ArrayLike

from kexue import _triton as triton_kernels
from kexue.mitchell import _native
from kexue.mitchell._bits import DTYPES, ArrayOrTensor, Parts, as_tensor, combine, restore, to_float
from kexue.mitchell._native import Backend, Op
from kexue.mitchell.correction import Correction, check_correction, parts_correction

__all__ = ["bmm", "matmul"]


def _accumulate(a: torch.Tensor, b: torch.Tensor, correction: Correction | None) -> torch.Tensor:
    """``Σ_k a[..., :, k] ⊗ b[..., k, :]`` in increasing ``k`` (a: (..., M, K), b: (..., K, N), same batch shape).

    The operands are taken apart once; each ``k`` is then the element-wise product of
    :mod:`kexue.mitchell.ops` (same bits), added in the accumulation dtype."""
    f = DTYPES[a.dtype]
    acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    acc = torch.zeros(*a.shape[:-1], b.shape[-1], dtype=acc_dtype, device=a.device)
    pa, pb = Parts(a, f), Parts(b, f)
    for k in range(a.shape[-1]):
        ak, bk = pa.select((..., slice(None), slice(k, k + 1))), pb.select((..., slice(k, k + 1), slice(None)))
        corr = 0 if correction is None else parts_correction(correction, f.mantissa, ak.frac, bk.frac)
        acc += to_float(combine(ak, bk, f, "mul", corr), f, a.dtype).to(acc_dtype)
    return acc


def _product(
    a: torch.Tensor, b: torch.Tensor, correction: Correction | None, backend: Backend, *, op: Op
) -> torch.Tensor:
    """``a @ b`` (``op="matmul"``, 2-D) or the batched product (``op="bmm"``, 3-D) of Mitchell products: the
    Triton kernel on CUDA, the C kernel for float32 on the CPU, else the torch path; all bit-identical.
    Chosen by dtype and device only, never by values."""
    if _native.use_triton(backend, a, b):
        try:
            return getattr(_native.triton_module(), op)(a, b, correction=correction)
        except Exception as exc:  # a kernel never breaks a call: one warning, then the torch path
            triton_kernels.failed("mitchell", exc)
    elif _native.use_native(backend, a, b, op=op):
        return getattr(_native, op)(a, b, correction=correction)
    return _accumulate(a, b, correction)


def _operands(a: ArrayOrTensor, b: ArrayOrTensor, backend: Backend) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``a`` and ``b`` as tensors of one dtype (``backend`` checked); whether the result goes back to NumPy."""
    ta, numpy_a = as_tensor("a", a)
    tb, numpy_b = as_tensor("b", b)
    _native.check_backend(backend)
    if ta.dtype != tb.dtype:
        raise TypeError(f"a and b must have the same dtype, got {ta.dtype} and {tb.dtype}")
    return ta, tb, numpy_a or numpy_b


@overload
def matmul(
    a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor: ...
@overload
def matmul(
    a: ArrayLike, b: ArrayLike, *, correction: Correction | None = None, backend: Backend = "auto"
) -> np.ndarray: ...
def matmul(
    a: ArrayOrTensor, b: ArrayOrTensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor | np.ndarray:
    """``a ⊗ b`` for ``a`` of shape ``(..., K)`` and ``b`` of shape ``(K, N)``.

    Args:
        a: a tensor (or NumPy array) of float32, float16, bfloat16 or float64, shape ``(..., K)``.
        b: ``(K, N)``, of ``a``'s dtype.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"`` (see :mod:`kexue.mitchell.correction`).
        backend: ``"auto"``: the compiled kernel for float32 CPU inputs, else the torch path
            (any device); ``"torch"``; ``"native"`` (an error if the kernel cannot run). The
            choice depends on dtype and device only: no value is read on the host.

    Returns:
        ``(..., N)`` in the inputs' dtype (NumPy in, NumPy out).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.matmul(torch.tensor([[1.5, 2.0]]), torch.tensor([[1.5], [3.0]]))
        tensor([[8.]])
    """
    ta, tb, numpy_out = _operands(a, b, backend)
    if tb.dim() != 2 or ta.dim() < 1 or ta.shape[-1] != tb.shape[0]:
        raise ValueError(
            f"shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not multiply: need a (..., K) and b (K, N)"
        )
    check_correction(correction)
    lead = ta.shape[:-1]
    a2 = ta.reshape(lead.numel(), ta.shape[-1])  # not reshape(-1, K): ambiguous when K = 0
    if a2.numel() == 0 or tb.numel() == 0:  # an empty sum is 0, as in torch.matmul
        out = torch.zeros(a2.shape[0], tb.shape[1], dtype=ta.dtype, device=ta.device)
        return restore(out.reshape(*lead, tb.shape[1]), numpy_out)
    out = _product(a2, tb, correction, backend, op="matmul")
    return restore(out.to(ta.dtype).reshape(*lead, tb.shape[1]), numpy_out)


def _check_batched(ta: torch.Tensor, tb: torch.Tensor) -> None:
    """A ValueError unless ``ta`` is ``(..., M, K)`` and ``tb`` is ``(..., K, N)``."""
    if ta.dim() < 2 or tb.dim() < 2 or ta.shape[-1] != tb.shape[-2]:
        raise ValueError(
            f"shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not multiply: need a (..., M, K) and b (..., K, N)"
        )


def _batch_shape(ta: torch.Tensor, tb: torch.Tensor) -> torch.Size:
    """The broadcast batch shape of ``(..., M, K)`` and ``(..., K, N)``; a ValueError naming both if none."""
    try:
        return torch.broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of a {tuple(ta.shape)} and b {tuple(tb.shape)} do not broadcast"
        ) from None


@overload
def bmm(
    a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor: ...
@overload
def bmm(
    a: ArrayLike, b: ArrayLike, *, correction: Correction | None = None, backend: Backend = "auto"
) -> np.ndarray: ...
def bmm(
    a: ArrayOrTensor, b: ArrayOrTensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor | np.ndarray:
    """Batched Mitchell product ``a ⊗ b`` for ``a`` of shape ``(..., M, K)`` and ``b`` of shape
    ``(..., K, N)``; the leading dimensions broadcast as in ``torch.matmul``.

    Every batch entry is :func:`matmul` of its two matrices, bit for bit (same products,
    float32 sums in increasing ``k``), so attention's ``Q Kᵀ`` and ``P V`` are the matrix product
    of the article applied head by head.

    Args:
        a: a tensor (or NumPy array), at least 2-D.
        b: at least 2-D, of ``a``'s dtype.
        correction: as :func:`matmul`.
        backend: ``"auto"``: the compiled kernel for float32 CPU inputs, else the torch path;
            ``"torch"``; ``"native"``.

    Returns:
        ``(broadcast(...), M, N)`` in the inputs' dtype (NumPy in, NumPy out).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.bmm(torch.ones(3, 2, 4), torch.full((4, 5), 1.5)).shape
        torch.Size([3, 2, 5])
    """
    ta, tb, numpy_out = _operands(a, b, backend)
    _check_batched(ta, tb)
    check_correction(correction)
    lead = _batch_shape(ta, tb)
    (m, k), n = ta.shape[-2:], tb.shape[-1]
    a3 = ta.expand(*lead, m, k).reshape(lead.numel(), m, k)
    b3 = tb.expand(*lead, k, n).reshape(lead.numel(), k, n)
    if a3.numel() == 0 or b3.numel() == 0:
        out = torch.zeros(lead.numel(), m, n, dtype=ta.dtype, device=ta.device)
    else:
        out = _product(a3, b3, correction, backend, op="bmm")
    return restore(out.to(ta.dtype).reshape(*lead, m, n), numpy_out)
