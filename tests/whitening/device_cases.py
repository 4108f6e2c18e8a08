"""Whitening's entries in the device and precision contract (see tests/device_contract.py).

The data are anisotropic "embeddings" (a dominant mean, well-separated variances, so the principal
directions are well determined and the plain yardstick's eigenvectors match the reference's). The
reference is the float64 whitening of the inputs as rounded to the setting's dtype.
"""

from __future__ import annotations

import functools

import torch

from device_contract import Entry, Setting, build
from kexue.whitening import Whitening
from kexue.whitening.layer import WhiteningLayer
from kexue.whitening.st_module import WhiteningModule

N, D, K = 256, 32, 24


@functools.cache
def _data() -> torch.Tensor:
    """(N, D) float64: mean 4, standard deviations 0.2 ... 2 along random orthogonal directions."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    scales = torch.logspace(torch.log10(torch.tensor(2.0)), torch.log10(torch.tensor(0.2)), D, dtype=torch.float64)
    return 4.0 + (torch.randn(N, D, generator=g, dtype=torch.float64) * scales) @ q.T


def _rounded(dtype: torch.dtype) -> torch.Tensor:
    return _data().to(dtype).double()


@functools.cache
def _fitted() -> Whitening:
    """The whitening the modules hold: fitted in float64 on the float64 data."""
    return Whitening(n_components=K).fit(_data())


def _transform_reference(dtype: torch.dtype) -> torch.Tensor:
    return _fitted().transform(_rounded(dtype))


def _transform_plain(dtype: torch.dtype) -> torch.Tensor:
    """What a cast ``nn.Module`` holding the map as ordinary buffers computes: the map rounded to dtype."""
    w = _fitted()
    x = _data().to(dtype)
    bias, kernel = torch.from_numpy(w.bias_).to(dtype), torch.from_numpy(w.kernel_).to(dtype)
    return (x - bias) @ kernel


def _layer(setting: Setting):
    def make(dtype: torch.dtype, device: str) -> tuple[WhiteningLayer, torch.Tensor]:
        return WhiteningLayer(_fitted()).to(device=device, dtype=dtype), _data().to(device, dtype)

    layer, x = build(setting, make)
    return lambda: layer(x)


def _st_module(setting: Setting):
    def make(dtype: torch.dtype, device: str) -> tuple[WhiteningModule, torch.Tensor]:
        return WhiteningModule(_fitted()).to(device=device, dtype=dtype), _data().to(device, dtype)

    module, x = build(setting, make)
    return lambda: module({"sentence_embedding": x})["sentence_embedding"]


def _streaming(setting: Setting):
    x = build(setting, lambda dtype, device: _data().to(device, dtype))

    def fit_and_transform() -> torch.Tensor:
        w = Whitening(n_components=K)
        for batch in x.split(100):
            w.partial_fit(batch)
        return w.transform(x)

    return fit_and_transform


def _streaming_reference(dtype: torch.dtype) -> torch.Tensor:
    x = _rounded(dtype)
    return Whitening(n_components=K).fit(x).transform(x)


def _streaming_plain(dtype: torch.dtype) -> torch.Tensor:
    """The fit a user writes in the data's dtype: mean and covariance in dtype, the eigendecomposition
    in float32 where the dtype has none (float16, bfloat16), signs and order as the library's."""
    x = _data().to(dtype)
    mean = x.mean(0)
    centred = x - mean
    sigma = (centred.T @ centred) / N
    lam, u = torch.linalg.eigh(sigma.to(torch.promote_types(dtype, torch.float32)))
    lam, u = lam.flip(0)[:K], u.flip(1)[:, :K]
    u = u * torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))
    kernel = (u * lam.clamp_min(0) ** -0.5).to(dtype)
    return centred @ kernel


_MAP_CONTRACT = {
    "accepts": "float16, bfloat16, float32, float64 embeddings; module cast with .to()/.half()/.bfloat16()",
    "computes": (
        "map kept in float64 (float32 on MPS) through casts; (x − βμ)W in float32 (float64 for float64), autocast off"
    ),
    "returns": "x's dtype, on the module's device",
}

ENTRIES = [
    Entry(
        name="kexue.whitening.WhiteningLayer",
        prepare=_layer,
        reference=_transform_reference,
        plain=_transform_plain,
        **_MAP_CONTRACT,
    ),
    Entry(
        name="kexue.whitening.st_module.WhiteningModule",
        prepare=_st_module,
        reference=_transform_reference,
        plain=_transform_plain,
        **_MAP_CONTRACT,
    ),
    Entry(
        name="kexue.whitening.Whitening.partial_fit+transform",
        prepare=_streaming,
        reference=_streaming_reference,
        plain=_streaming_plain,
        accepts="float16, bfloat16, float32, float64 tensors (NumPy float32/float64), on any device but meta",
        computes="statistics in float64 on X's device (CPU for MPS), merged on the host; transform in float32 "
        "(float64 for float64), autocast off",
        returns="X's dtype, on X's device",
        devices=("cpu", "cuda"),
        no_host_sync=False,  # fitting merges each batch's statistics on the host; transform validates X
    ),
]
