"""The contrastive technique's entries in the device and precision contract (see tests/device_contract.py).

The cached step's output is the gradient it leaves in a tiny encoder's parameters (flattened); its
reference is the float64 gradient of the whole batch in one graph, its yardstick the same full-batch
gradient computed in the setting's dtype. The losses' output is the loss value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from device_contract import Entry, Setting, build
from kexue.contrastive import InfoNCE, cached_backward, info_nce, info_nce_tiled
from kexue.contrastive.reference import info_nce_reference

N, M, D = 16, 24, 32  # queries, documents (positives + hard negatives), width
BATCH, WIDTH, MICRO = 12, 8, 5  # the cached step: 3 micro-batches (5, 5, 2)
SCALE = 20.0  # 1/τ with SimCSE's τ = 0.05


def _half(dtype: torch.dtype) -> torch.dtype:
    """The losses compute in float32 for every dtype but float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- the losses ------------------------------------------------------------------------------------


def _pairs(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(N, D, generator=g, dtype=torch.float64)
    d = torch.cat(
        [
            q + 1.5 * torch.randn(N, D, generator=g, dtype=torch.float64),
            torch.randn(M - N, D, generator=g, dtype=torch.float64),
        ]
    )
    return q.to(device, dtype), d.to(device, dtype)


def _loss_reference(dtype: torch.dtype) -> torch.Tensor:
    q, d = _pairs(dtype, "cpu")
    return info_nce_reference(q, d, torch.eye(N, M, dtype=torch.float64), scale=SCALE, similarity="cosine")


def _loss_plain(dtype: torch.dtype) -> torch.Tensor:
    """The textbook formula evaluated in ``dtype`` (normalise, scale, log-softmax, pick the diagonal)."""
    q, d = _pairs(dtype, "cpu")
    s = SCALE * (nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(d, dim=-1).T)
    return -torch.log_softmax(s, dim=1).diagonal().mean()


def _info_nce(setting: Setting) -> Callable[[], torch.Tensor]:
    q, d = build(setting, _pairs)
    return lambda: info_nce(q, d, scale=SCALE, validate=False)


def _info_nce_tiled(setting: Setting) -> Callable[[], torch.Tensor]:
    q, d = build(setting, _pairs)
    return lambda: info_nce_tiled(q, d, scale=SCALE, tile=7, validate=False)


def _module(dtype: torch.dtype, device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return (InfoNCE(temperature=1.0 / SCALE, learnable=True, validate=False).to(device, dtype), *_pairs(dtype, device))


def _info_nce_module(setting: Setting) -> Callable[[], torch.Tensor]:
    loss, q, d = build(setting, _module)
    return lambda: loss(q, d)


def _loss_dtype(setting: Setting) -> torch.dtype:
    return _half(setting.dtype)


# --- the cached step ---------------------------------------------------------------------------------


def _weights() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(16, WIDTH, generator=g, dtype=torch.float64) / WIDTH**0.5,
        0.1 * torch.randn(16, generator=g, dtype=torch.float64),
        torch.randn(WIDTH, 16, generator=g, dtype=torch.float64) / 4,
        0.1 * torch.randn(WIDTH, generator=g, dtype=torch.float64),
    ]


def _encoder(dtype: torch.dtype, device: str) -> nn.Module:
    encoder = nn.Sequential(nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, WIDTH)).to(device, dtype)
    for p, w in zip(encoder.parameters(), _weights(), strict=True):
        p.data = w.to(device, dtype)
    return encoder


def _views(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64)
    return x.to(device, dtype), (x + 0.3 * torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64)).to(
        device, dtype
    )


def _made(dtype: torch.dtype, device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return (_encoder(dtype, device), *_views(dtype, device))


def _flat_grad(encoder: nn.Module) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):  # CPU autocast's cat cannot promote float16 (a torch limit)
        return torch.cat([p.grad.flatten() for p in encoder.parameters()])


def _contrastive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return info_nce(a, b, scale=5.0, validate=False)


def _cached(setting: Setting) -> Callable[[], torch.Tensor]:
    encoder, x, y = build(setting, _made)

    def call() -> torch.Tensor:
        encoder.zero_grad(set_to_none=True)
        cached_backward(encoder, [x, y], _contrastive, micro_batch_size=MICRO, validate=False)
        return _flat_grad(encoder)

    return call


def _full_batch(dtype: torch.dtype, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The whole batch in one graph from the parameters and inputs as rounded to ``dtype``, computed in
    ``dtype`` (float64 for the reference)."""
    encoder, x, y = _made(dtype, "cpu")
    loss(encoder(x), encoder(y)).backward()
    return _flat_grad(encoder)


def _cached_reference(dtype: torch.dtype) -> torch.Tensor:
    encoder, x, y = _made(dtype, "cpu")
    encoder.double()
    q, d = encoder(x.double()), encoder(y.double())
    info_nce_reference(q, d, torch.eye(BATCH, dtype=torch.float64), scale=5.0, similarity="cosine").backward()
    return _flat_grad(encoder).detach()


ENTRIES = [
    Entry(
        name="kexue.contrastive.cached_backward",
        prepare=_cached,
        reference=_cached_reference,
        plain=lambda dtype: _full_batch(dtype, _contrastive),
        accepts=(
            "any encoder dtype; float16/bfloat16 models, or float32 under autocast (its own autocast= or the caller's)"
        ),
        computes="encoder passes in its dtype (or autocast's); embeddings cached and the loss computed in float32",
        returns="gradients in .grad in the parameters' dtype; the loss in float32 (float64 for float64 embeddings)",
        follows_autocast=True,
    ),
    Entry(
        name="kexue.contrastive.info_nce",
        prepare=_info_nce,
        reference=_loss_reference,
        plain=_loss_plain,
        accepts="float16, bfloat16, float32, float64 embeddings",
        computes="float32 with autocast off (float64 for float64)",
        returns="float32 scalar (float64 for float64)",
        out_dtype=_loss_dtype,
    ),
    Entry(
        name="kexue.contrastive.info_nce_tiled",
        prepare=_info_nce_tiled,
        reference=_loss_reference,
        plain=_loss_plain,
        accepts="float16, bfloat16, float32, float64 embeddings",
        computes="float32 tiles with autocast off (float64 for float64)",
        returns="float32 scalar (float64 for float64)",
        out_dtype=_loss_dtype,
        tolerance={torch.float32: 4e-6},
        why="float32: the streamed value is LSE − s, whose absolute error is about 1/τ · eps per row (1/τ = 20 here); "
        "the plain yardstick's log_softmax subtracts first. Measured 6.8e-7 for a loss of 0.52",
    ),
    Entry(
        name="kexue.contrastive.InfoNCE",
        prepare=_info_nce_module,
        reference=_loss_reference,
        plain=_loss_plain,
        accepts="float16, bfloat16, float32, float64 embeddings; the module cast with .to()/.bfloat16()",
        computes="float32 with autocast off; the temperature kept in float32 through casts",
        returns="float32 scalar (float64 for float64)",
        out_dtype=_loss_dtype,
    ),
]
