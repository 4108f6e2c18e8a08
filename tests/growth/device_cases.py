"""The growth operators' entries in the device and precision contract (see tests/device_contract.py).

Each entry grows the tiny zoo LLaMA (GQA, untied head, SwiGLU, RoPE) and returns the grown model's
logits on fixed input ids: function preservation means they are the original model's logits, so the
float64 reference is the ORIGINAL model evaluated in float64 (its weights rounded to the setting's
dtype first, RMSNorms in float64 through ``float64_norms``), and the two-times rule's yardstick
``plain(dtype)`` is the original model's logits in that dtype. The growth itself runs inside the
hot call (no host sync: ``noise=0`` reads no value). On the meta device the grown model is a meta
model and its logits have the right shape, device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from device_contract import Entry, Setting, build
from kexue.growth import deepen, widen, widen_ffn
from kexue.growth.parity import float64_norms
from kexue.growth.zoo import randomized, tiny_model

NAME = "llama-gqa-untied"
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))  # (B, T)


def _make(dtype: torch.dtype, device: str) -> nn.Module:
    """The zoo LLaMA with N(0, 0.3²) weights drawn in float32, rounded to ``dtype``, on ``device``."""
    model = randomized(tiny_model(NAME), dtype=torch.float32)
    return model.to(device, dtype)


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS.to(next(model.parameters()).device)).logits  # (B, T, V)


@cache
def _reference(dtype: torch.dtype) -> torch.Tensor:
    """The original model's logits in float64 (weights as rounded to ``dtype``)."""
    with float64_norms():
        return _logits(_make(dtype, "cpu").double())


@cache
def _plain(dtype: torch.dtype) -> torch.Tensor:
    """The original model's logits computed in ``dtype`` (HF's own mixed precision: RMSNorm in float32)."""
    return _logits(_make(dtype, "cpu"))


def _grown(grow: Callable[[nn.Module], nn.Module]) -> Callable[[Setting], Callable[[], torch.Tensor]]:
    def prepare(setting: Setting) -> Callable[[], torch.Tensor]:
        model = build(setting, _make)
        return lambda: _logits(grow(model))

    return prepare


def _out_dtype(setting: Setting) -> torch.dtype:
    # the head is a Linear: autocast's dtype; CPU autocast (the matrix's context for meta) skips meta tensors
    return torch.bfloat16 if setting.autocast and setting.device != "meta" else setting.dtype


_COMMON = dict(
    reference=_reference,
    plain=_plain,
    out_dtype=_out_dtype,
    follows_autocast=True,
    accepts="any floating dtype; cpu, cuda, meta (shapes and config only)",
)

ENTRIES = [
    Entry(
        name="kexue.growth.widen",
        prepare=_grown(lambda m: widen(m, 2)),
        computes="the weights' dtype on their device (each map rounds once; noise drawn in float64 on the CPU)",
        returns="a model in the input's dtype and device",
        **_COMMON,
    ),
    Entry(
        name="kexue.growth.widen_ffn",
        prepare=_grown(lambda m: widen_ffn(m, 37)),
        computes="the weights' dtype on their device (copies exact; the output columns divided by the copy count)",
        returns="a model in the input's dtype and device",
        **_COMMON,
    ),
    Entry(
        name="kexue.growth.deepen",
        prepare=_grown(lambda m: deepen(m, [0, 1])),
        computes="exact copies and zeros in the weights' dtype on their device",
        returns="a model in the input's dtype and device",
        **_COMMON,
    ),
]
