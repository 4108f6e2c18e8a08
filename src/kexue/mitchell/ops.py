"""Element-wise Mitchell arithmetic on tensors (torch, or NumPy arrays in and out).

The vectorised path works in integers on the bit patterns, with the policy of
:mod:`kexue.mitchell.reference` (signs, zeros, infinities, NaN, exact subnormal inputs,
saturation to ±∞, gradual underflow): every entry equals the scalar reference bit for bit
(tested, NaN payloads aside). It runs on any device. Float32 on the CPU goes through the
compiled kernel (:mod:`kexue.mitchell._native`) when it is available, which is tested against
this path. The bit-level pieces live in :mod:`kexue.mitchell._bits`.

Formats: float32, float16, bfloat16 (the article's), float64 (for gradient checks), and the two
float8 formats ``float8_e4m3fn`` and ``float8_e5m2`` (policy for e4m3fn's missing infinities in
:mod:`kexue.mitchell.reference`: overflow saturates to ±448, ``x / 0`` and ``log2(0)`` are NaN).
Everything is computed on the integer bit patterns and only viewed as the float dtype at the end,
so the float8 dtypes (which have almost no torch arithmetic) work like the others.

No host sync: special values, subnormal inputs and underflowing results are handled with
``torch.where`` over the whole tensor (never a branch on the data), and the kernel is chosen by
dtype and device only, so a GPU stream never waits for the host.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from numpy.typing import ArrayLike

from kexue import _triton as triton_kernels
from kexue.mitchell import _native
from kexue.mitchell._bits import (
    DTYPES,
    INT,
    ArrayOrTensor,
    Parts,
    as_tensor,
    compose,
    normalise,
    pair,
    restore,
    sign_bit,
    to_float,
    torch_binary,
)
from kexue.mitchell._native import Backend
from kexue.mitchell.correction import Correction, check_correction, lambda_correction

__all__ = ["DTYPES", "div", "exp2", "log2", "mul"]


@overload
def mul(
    a: torch.Tensor, b: torch.Tensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor: ...
@overload
def mul(
    a: ArrayLike, b: ArrayLike, *, correction: Correction | None = None, backend: Backend = "auto"
) -> np.ndarray: ...
def mul(
    a: ArrayOrTensor, b: ArrayOrTensor, *, correction: Correction | None = None, backend: Backend = "auto"
) -> torch.Tensor | np.ndarray:
    """Mitchell product ``a ⊗ b``, element-wise with broadcasting.

    ``|a ⊗ b| = 2^(n_a + n_b) (1 + x_a + x_b)`` (or ``2^(n_a + n_b + 1) (x_a + x_b)`` when the
    mantissas carry): one integer addition of the bit patterns. Never above ``|a b|``, at most
    ``1/9`` below it (at ``x_a = x_b = 1/2``).

    Args:
        a: a tensor (or NumPy array) of float32, float16, bfloat16, float64, float8_e4m3fn or
            float8_e5m2.
        b: the other factor, of ``a``'s dtype, on ``a``'s device, broadcastable with it.
        correction: ``None`` (plain Mitchell), ``"constant"``, ``"piecewise"`` or ``"lmul"``: an
            error correction added to the integer sum (:mod:`kexue.mitchell.correction`).
        backend: ``"auto"`` (the compiled kernel for float32 on CPU when available, else
            torch), ``"torch"`` or ``"native"``.

    Returns:
        The products, in the inputs' dtype (NumPy in, NumPy out).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.mul(torch.tensor([1.5, 3.0]), torch.tensor([1.5, -2.0]))
        tensor([ 2., -6.])
        >>> mitchell.mul(torch.tensor([1.5]), torch.tensor([1.5]), correction="piecewise")  # exact: 2.25
        tensor([2.1921])
    """
    ta, tb, numpy_out = pair(a, b)
    _native.check_backend(backend)
    check_correction(correction)
    if _native.use_triton(backend, ta, tb):
        try:
            return restore(_native.triton_module().mul(ta, tb, correction=correction), numpy_out)
        except Exception as exc:  # a kernel never breaks a call: one warning, then the torch path
            triton_kernels.failed("mitchell", exc)
    elif _native.use_native(backend, ta, tb):
        return restore(_native.mul(ta, tb, correction=correction), numpy_out)
    corr = 0 if correction is None else lambda_correction(correction, ta, tb)
    return restore(torch_binary(ta, tb, "mul", corr), numpy_out)


@overload
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...
@overload
def div(a: ArrayLike, b: ArrayLike) -> np.ndarray: ...
def div(a: ArrayOrTensor, b: ArrayOrTensor) -> torch.Tensor | np.ndarray:
    """Mitchell quotient ``a ⊘ b``: ``λ_a − λ_b``.

    Never below ``|a/b|``, at most 12.5 % above it (exhaustive in float16 and bfloat16). Dtypes and
    policy as :func:`mul`.

    Args:
        a: the dividend (a tensor or NumPy array).
        b: the divisor, of ``a``'s dtype, broadcastable with it.

    Returns:
        The quotients, in the inputs' dtype (NumPy in, NumPy out).

    Example:
        >>> import numpy as np
        >>> from kexue import mitchell
        >>> mitchell.div(np.array([3.0, 1.0]), np.array([2.0, 3.0]))
        array([1.5 , 0.375])
    """
    ta, tb, numpy_out = pair(a, b)
    return restore(torch_binary(ta, tb, "div"), numpy_out)


@overload
def log2(a: torch.Tensor) -> torch.Tensor: ...
@overload
def log2(a: ArrayLike) -> np.ndarray: ...
def log2(a: ArrayOrTensor) -> torch.Tensor | np.ndarray:
    """Mitchell logarithm ``n + x`` of ``a = 2^n (1 + x)``, rounded to the input dtype.

    Exact in float64 and wherever it fits; ``−∞`` at ±0 (NaN in float8_e4m3fn, which has no
    ``−∞``), NaN for negative numbers and NaN, ``+∞`` at ``+∞``.

    Args:
        a: a tensor (or NumPy array) of a dtype :func:`mul` takes.

    Returns:
        The logarithms, in ``a``'s dtype (NumPy in, NumPy out).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.log2(torch.tensor([1.0, 3.0, 0.0]))
        tensor([0.0000, 1.5000,   -inf])
    """
    t, numpy_out = as_tensor("a", a)
    f = DTYPES[t.dtype]
    p = Parts(t, f)
    value = p.n.to(torch.float64) + p.frac.to(torch.float64) / float(1 << f.mantissa)  # one rounding
    bits = value.to(t.dtype).view(INT[f.bits]).to(torch.int64) & ((1 << f.bits) - 1 if f.bits < 64 else -1)
    bits = torch.where(p.zero, sign_bit(f) | f.inf if f.has_inf else f.nan, bits)  # −∞; NaN without infinities
    bits = torch.where(p.inf & ~p.sign, f.inf, bits)
    bits = torch.where(p.nan | (p.sign & ~p.zero), f.nan, bits)
    return restore(to_float(bits, f, t.dtype), numpy_out)


@overload
def exp2(y: torch.Tensor) -> torch.Tensor: ...
@overload
def exp2(y: ArrayLike) -> np.ndarray: ...
def exp2(y: ArrayOrTensor) -> torch.Tensor | np.ndarray:
    """Mitchell antilogarithm ``2^n (1 + x)`` of ``y = n + x``.

    ``λ = round(y · 2^m)`` (ties to even), saturating to ``+∞`` and rounding into the subnormals
    like :func:`mul`; ``exp2(−∞) = 0``, ``exp2(+∞) = +∞``.

    Args:
        y: a tensor (or NumPy array) of a dtype :func:`mul` takes.

    Returns:
        The antilogarithms, in ``y``'s dtype (NumPy in, NumPy out).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.exp2(torch.tensor([0.0, 1.5, -1.0]))
        tensor([1.0000, 3.0000, 0.5000])
    """
    t, numpy_out = as_tensor("y", y)
    f = DTYPES[t.dtype]
    # beyond [-(bias + m + 2), bias + 2] the result is 0 or ∞ whatever y is: clamp before scaling
    y64 = torch.nan_to_num(t.to(torch.float64), nan=0.0).clamp(-(f.bias + f.mantissa + 2), f.bias + 2)
    lam = torch.round(y64 * float(1 << f.mantissa)).to(torch.int64)  # round: ties to even
    n, frac = normalise(torch.zeros_like(lam), lam, f.mantissa)
    bits = compose(torch.zeros_like(lam, dtype=torch.bool), n, frac, f)
    bits = torch.where(torch.isnan(t), f.nan, bits)
    return restore(to_float(bits, f, t.dtype), numpy_out)
