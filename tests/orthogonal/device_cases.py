"""The orthogonal map's entries in the device and precision contract (see tests/device_contract.py)."""

from __future__ import annotations

import numpy as np
import torch

from device_contract import Entry, Setting, build
from kexue.orthogonal import apply_orthogonal_map, orthogonal_map
from kexue.orthogonal.reference import closed_form

D, N = 48, 16


def _inputs(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((N, D), (D,), (D,)))
    return x.to(device, dtype), a.to(device, dtype), b.to(device, dtype)


def _reference_map(dtype: torch.dtype) -> np.ndarray:
    _, a, b = _inputs(dtype, "cpu")
    return closed_form(a.double().numpy(), b.double().numpy(), kind="reflection")


def _apply(setting: Setting):
    x, a, b = build(setting, _inputs)
    return lambda: apply_orthogonal_map(x, a, b, validate=False)  # the per-batch hot call


def _apply_reference(dtype: torch.dtype) -> torch.Tensor:
    x, _, _ = _inputs(dtype, "cpu")
    return torch.from_numpy(x.double().numpy() @ _reference_map(dtype).T)


def _apply_plain(dtype: torch.dtype) -> torch.Tensor:
    x, a, b = _inputs(dtype, "cpu")
    v = a / a.norm() - b / b.norm()  # Householder formula in the working dtype
    return x - 2 * (x @ v)[:, None] * v / (v @ v)


def _map(setting: Setting):
    _, a, b = build(setting, _inputs)
    return lambda: orthogonal_map(a, b, validate=False)


def _map_plain(dtype: torch.dtype) -> torch.Tensor:
    _, a, b = _inputs(dtype, "cpu")
    v = a / a.norm() - b / b.norm()
    return torch.eye(D, dtype=dtype) - 2 * torch.outer(v, v) / (v @ v)


ENTRIES = [
    Entry(
        name="kexue.orthogonal.apply_orthogonal_map",
        prepare=_apply,
        reference=_apply_reference,
        plain=_apply_plain,
        accepts="float16, bfloat16, float32, float64 (NumPy too); validate=False: no host sync, meta",
        computes="factors in float64 (float32 on MPS; double-word â ± b̂); the O(d) update in x's dtype, autocast off",
        returns="x's dtype, on x's device",
    ),
    Entry(
        name="kexue.orthogonal.orthogonal_map",
        prepare=_map,
        reference=lambda dtype: torch.from_numpy(_reference_map(dtype)),
        plain=_map_plain,
        accepts="float16, bfloat16, float32, float64 (NumPy too); validate=False: no host sync, meta",
        computes="float64 (float32 on MPS), autocast off; rounded once to the promoted dtype",
        returns="promoted dtype of a and b, on a's device",
    ),
]
