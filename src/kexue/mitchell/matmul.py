"""Mitchell matrix products: every scalar product by :func:`~kexue.mitchell.ops.mitchell_mul`,
summed exactly in float32 (float64 for float64 inputs) in increasing ``k``.

``C[i, j] = Σ_k a[i, k] ⊗ b[k, j]`` with one rounding per addition, in that order, so the
compiled kernel, the torch path and a scalar loop agree bit for bit. 16-bit inputs produce
their products in their own format (that is the multiplier being emulated), accumulate in
float32 and are rounded once to the input dtype at the end.

:func:`mitchell_bmm` is the batched product (``torch.matmul``'s broadcasting of the leading
dimensions), with the same summation order in every batch entry.
"""

from __future__ import annotations

from typing import Any

import torch

from kexue.mitchell import _native
from kexue.mitchell.correction import check_correction, parts_correction
from kexue.mitchell.ops import DTYPES, _as_tensor, _back, _combine, _Parts, _to_float

__all__ = ["mitchell_bmm", "mitchell_matmul"]


def _accumulate(a: torch.Tensor, b: torch.Tensor, correction: str | None) -> torch.Tensor:
    """``Σ_k a[..., :, k] ⊗ b[..., k, :]`` in increasing ``k`` (a: (..., M, K), b: (..., K, N), same batch shape).

    The operands are taken apart once; each ``k`` is then the element-wise product of
    :mod:`kexue.mitchell.ops` (same bits), added in the accumulation dtype."""
    f = DTYPES[a.dtype]
    acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    acc = torch.zeros(*a.shape[:-1], b.shape[-1], dtype=acc_dtype, device=a.device)
    pa, pb = _Parts(a, f), _Parts(b, f)
    for k in range(a.shape[-1]):
        ak, bk = pa.select((..., slice(None), slice(k, k + 1))), pb.select((..., slice(k, k + 1), slice(None)))
        corr = 0 if correction is None else parts_correction(correction, f.mantissa, ak.frac, bk.frac)
        acc += _to_float(_combine(ak, bk, f, "mul", corr), f, a.dtype).to(acc_dtype)
    return acc


def mitchell_matmul(a: Any, b: Any, *, correction: str | None = None, backend: str = "auto") -> Any:
    """``a ⊗ b`` for ``a`` of shape ``(..., K)`` and ``b`` of shape ``(K, N)``.

    Args:
        a, b: tensors (or NumPy arrays) of one dtype (float32, float16, bfloat16, float64).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"`` (see :mod:`kexue.mitchell.correction`).
        backend: ``"auto"``: the compiled kernel for float32 CPU inputs, else the torch path
            (any device); ``"torch"``; ``"native"`` (an error if the kernel cannot run). The
            choice depends on dtype and device only: no value is read on the host.

    Returns:
        ``(..., N)`` in the inputs' dtype.
    """
    ta, numpy_a = _as_tensor(a, "a")
    tb, numpy_b = _as_tensor(b, "b")
    _native.check_backend(backend)
    if ta.dtype != tb.dtype:
        raise TypeError(f"a and b must have the same dtype, got {ta.dtype} and {tb.dtype}")
    if tb.dim() != 2 or ta.dim() < 1 or ta.shape[-1] != tb.shape[0]:
        raise ValueError(
            f"shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not multiply: need a (..., K) and b (K, N)"
        )
    check_correction(correction)
    lead = ta.shape[:-1]
    a2 = ta.reshape(lead.numel(), ta.shape[-1])  # not reshape(-1, K): ambiguous when K = 0
    if a2.numel() == 0 or tb.numel() == 0:  # an empty sum is 0, as in torch.matmul
        out = torch.zeros(a2.shape[0], tb.shape[1], dtype=ta.dtype, device=ta.device)
        return _back(out.reshape(*lead, tb.shape[1]), numpy_a or numpy_b)
    if _native.use_native(backend, a2, tb, op="matmul"):  # chosen by dtype and device only, never by values
        out = _native.matmul(a2, tb, correction)
    else:
        out = _accumulate(a2, tb, correction)
    return _back(out.to(ta.dtype).reshape(*lead, tb.shape[1]), numpy_a or numpy_b)


def mitchell_bmm(a: Any, b: Any, *, correction: str | None = None, backend: str = "auto") -> Any:
    """Batched Mitchell product ``a ⊗ b`` for ``a`` of shape ``(..., M, K)`` and ``b`` of shape
    ``(..., K, N)``; the leading dimensions broadcast as in ``torch.matmul``.

    Every batch entry is :func:`mitchell_matmul` of its two matrices, bit for bit (same products,
    float32 sums in increasing ``k``), so attention's ``Q Kᵀ`` and ``P V`` are the matrix product
    of the article applied head by head.

    Args:
        a, b: tensors (or NumPy arrays) of one dtype, at least 2-D.
        correction: as :func:`mitchell_matmul`.
        backend: ``"auto"``: the compiled kernel for float32 CPU inputs, else the torch path;
            ``"torch"``; ``"native"``.

    Returns:
        ``(broadcast(...), M, N)`` in the inputs' dtype.
    """
    ta, numpy_a = _as_tensor(a, "a")
    tb, numpy_b = _as_tensor(b, "b")
    _native.check_backend(backend)
    if ta.dtype != tb.dtype:
        raise TypeError(f"a and b must have the same dtype, got {ta.dtype} and {tb.dtype}")
    if ta.dim() < 2 or tb.dim() < 2 or ta.shape[-1] != tb.shape[-2]:
        raise ValueError(
            f"shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not multiply: need a (..., M, K) and b (..., K, N)"
        )
    check_correction(correction)
    try:
        lead = torch.broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of a {tuple(ta.shape)} and b {tuple(tb.shape)} do not broadcast"
        ) from None
    (m, k), n = ta.shape[-2:], tb.shape[-1]
    a3 = ta.expand(*lead, m, k).reshape(lead.numel(), m, k)
    b3 = tb.expand(*lead, k, n).reshape(lead.numel(), k, n)
    if a3.numel() == 0 or b3.numel() == 0:
        out = torch.zeros(lead.numel(), m, n, dtype=ta.dtype, device=ta.device)
    elif _native.use_native(backend, a3, b3, op="bmm"):
        out = _native.bmm(a3, b3, correction)
    else:
        out = _accumulate(a3, b3, correction)
    return _back(out.to(ta.dtype).reshape(*lead, m, n), numpy_a or numpy_b)
