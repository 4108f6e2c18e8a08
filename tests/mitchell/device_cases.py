"""Mitchell arithmetic's entries in the device and precision contract (see tests/device_contract.py).

Mitchell products are approximate by design, so the float64 reference is the float64 reference of the
*same* Mitchell arithmetic: every product by the scalar definition (:mod:`kexue.mitchell.reference`,
Python integers on the dtype's bit patterns), summed exactly in float64. The inputs are numbers with
8 significant bits, exact in float32, bfloat16 and float16, so casting them (``.to()``, autocast) loses
nothing and the error measures the computation alone.
"""

from __future__ import annotations

import functools

import torch

from device_contract import Entry, Setting, build
from kexue import mitchell
from kexue.mitchell import MitchellLinear
from kexue.mitchell import reference as ref

FORMAT = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
M, K, N, BATCH = 4, 16, 8, 2


def _exact_values(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float64 ``±(1 + j/128) 2^e``, ``e`` in [-4, 4]: exact in every dtype of the matrix."""
    g = torch.Generator().manual_seed(seed)
    significand = 1 + torch.randint(0, 128, shape, generator=g).double() / 128
    exponent = torch.randint(-4, 5, shape, generator=g).double()
    sign = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    return sign * significand * torch.exp2(exponent)


def _pair(a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
    def make(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _exact_values(a_shape, 0).to(device, dtype), _exact_values(b_shape, 1).to(device, dtype)

    return make


@functools.cache
def _products(a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``(..., M, K, N)`` float64 Mitchell products ``a[.., i, k] ⊗ b[.., k, j]`` by the scalar definition."""
    a, b = (t.double() for t in _pair(a_shape, b_shape)(dtype, "cpu"))
    pa, pb = torch.broadcast_tensors(a[..., :, :, None], b[..., None, :, :])
    values = [ref.mul(x, y, FORMAT[dtype]) for x, y in zip(pa.flatten().tolist(), pb.flatten().tolist(), strict=True)]
    return torch.tensor(values, dtype=torch.float64).reshape(pa.shape)


def _naive_sum(products: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The plain recipe: the (exact-in-dtype) products added one by one in ``dtype``."""
    acc = torch.zeros(products.shape[:-2] + products.shape[-1:], dtype=dtype)
    for k in range(products.shape[-2]):
        acc = acc + products[..., k, :].to(dtype)
    return acc


# --- element-wise product ----------------------------------------------------------------------------


def _mul(setting: Setting):
    a, b = build(setting, _pair((M, K), (M, K)))
    return lambda: mitchell.mul(a, b)


def _mul_reference(dtype: torch.dtype) -> torch.Tensor:
    a, b = (t.double() for t in _pair((M, K), (M, K))(dtype, "cpu"))
    values = [ref.mul(x, y, FORMAT[dtype]) for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True)]
    return torch.tensor(values, dtype=torch.float64).reshape(M, K)


# --- matrix products ---------------------------------------------------------------------------------


def _matmul(setting: Setting):
    a, b = build(setting, _pair((M, K), (K, N)))
    return lambda: mitchell.matmul(a, b)


def _bmm(setting: Setting):
    a, b = build(setting, _pair((BATCH, M, K), (BATCH, K, N)))
    return lambda: mitchell.bmm(a, b)


# --- the linear layer (cast with .to(), follows autocast) ---------------------------------------------


def _linear_make(dtype: torch.dtype, device: str) -> tuple[MitchellLinear, torch.Tensor]:
    layer = MitchellLinear(K, N, device=device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(_exact_values((N, K), 2).to(device, dtype))
        layer.bias.copy_(_exact_values((N,), 3).to(device, dtype))
    return layer, _exact_values((M, K), 4).to(device, dtype)


def _linear(setting: Setting):
    layer, x = build(setting, _linear_make)
    return lambda: layer(x).detach()


@functools.cache
def _linear_products(dtype: torch.dtype) -> torch.Tensor:
    layer, x = _linear_make(dtype, "cpu")
    w = layer.weight.detach().T.double()
    values = [
        [[ref.mul(float(x[i, k]), float(w[k, j]), FORMAT[dtype]) for j in range(N)] for k in range(K)] for i in range(M)
    ]
    return torch.tensor(values, dtype=torch.float64)


def _linear_reference(dtype: torch.dtype) -> torch.Tensor:
    return _linear_products(dtype).sum(-2) + _exact_values((N,), 3)


def _linear_plain(dtype: torch.dtype) -> torch.Tensor:
    return _naive_sum(_linear_products(dtype), dtype) + _exact_values((N,), 3).to(dtype)


def _follows_autocast(setting: Setting) -> torch.dtype:
    # as nn.Linear: CPU/CUDA autocast casts to bfloat16; the meta device has no autocast
    return torch.bfloat16 if setting.autocast and setting.device != "meta" else setting.dtype


_EXACT = dict.fromkeys(FORMAT, 0.0)
_EXACT_WHY = "bit-exact against the scalar definition (integer arithmetic on the bit patterns)"

ENTRIES = [
    Entry(
        name="kexue.mitchell.mul",
        prepare=_mul,
        reference=_mul_reference,
        tolerance=_EXACT,
        why=_EXACT_WHY,
        accepts="float32, float16, bfloat16, float64, float8 (same dtype, broadcasting)",
        computes="integers on the bit patterns (the dtype's Mitchell product; autocast does not apply)",
        returns="the inputs' dtype",
    ),
    Entry(
        name="kexue.mitchell.matmul",
        prepare=_matmul,
        reference=lambda dtype: _products((M, K), (K, N), dtype).sum(-2),
        plain=lambda dtype: _naive_sum(_products((M, K), (K, N), dtype), dtype),
        accepts="float32, float16, bfloat16, float64 (same dtype)",
        computes="the dtype's Mitchell products, summed in float32 (float64 for float64) in increasing k",
        returns="the inputs' dtype (one rounding of the sum)",
    ),
    Entry(
        name="kexue.mitchell.bmm",
        prepare=_bmm,
        reference=lambda dtype: _products((BATCH, M, K), (BATCH, K, N), dtype).sum(-2),
        plain=lambda dtype: _naive_sum(_products((BATCH, M, K), (BATCH, K, N), dtype), dtype),
        accepts="float32, float16, bfloat16, float64 (same dtype, broadcast batch)",
        computes="the dtype's Mitchell products, summed in float32 (float64 for float64) in increasing k",
        returns="the inputs' dtype (one rounding of the sum)",
    ),
    Entry(
        name="kexue.mitchell.MitchellLinear",
        prepare=_linear,
        reference=_linear_reference,
        plain=_linear_plain,
        out_dtype=_follows_autocast,
        follows_autocast=True,
        accepts="float32, float16, bfloat16, float64 input of the weight's dtype; any under autocast",
        computes="as matmul in the weight's dtype; under autocast in autocast's dtype, as nn.Linear",
        returns="the weight's dtype; autocast's dtype under autocast",
    ),
]
