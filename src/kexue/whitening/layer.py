"""Whitening as a torch module whose statistics keep their own precision wherever the module goes.

:class:`WhiteningLayer` computes ``x ↦ (x − βμ) W`` from a fitted :class:`~kexue.whitening.Whitening`
on the device of the module. Its map (the kernel ``W`` and the shift ``βμ``) is kept in float64
(float32 on MPS, which has no float64) through ``.to(dtype)``, ``.half()``, ``.bfloat16()``,
``.float()`` and ``.double()``: a cast moves the map to the module's new device but never rounds it,
as transformers keeps RoPE's ``inv_freq`` out of the cast path (their bug #29285). The product is
computed in float32 for float16, bfloat16 and float32 inputs (float64 for float64 inputs) with
autocast off, and returned in the input's dtype, so ``model.bfloat16()`` whitens bfloat16 embeddings
to bfloat16 rounding rather than with a bfloat16-rounded map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kexue._device import autocast_disabled
from kexue.whitening.whitening import Whitening

__all__ = ["WhiteningLayer", "statistics_dtype", "whiten"]

_MAP = ("kernel", "bias")  # the buffers that define the map (never cast, only moved)


def statistics_dtype(device: torch.device) -> torch.dtype:
    """The dtype a whitening map is kept in on ``device``: float64, or float32 on MPS (no float64 there).

    Args:
        device: where the map is kept.

    Returns:
        ``torch.float64``, or ``torch.float32`` on MPS.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def whiten(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``(x − bias) @ kernel`` in float32 (float64 for float64 ``x``), autocast off, in ``x``'s dtype.

    Centring before the product keeps the accuracy when the mean dominates the spread (anisotropic
    embeddings): ``x W − μW`` would cancel. Reads no value back to the host.

    Args:
        x: the rows to whiten, ``(..., d)``, a floating-point tensor.
        kernel: the map's matrix ``W``, ``(d, k)``.
        bias: the shift ``βμ``, ``(d,)``.

    Returns:
        ``(x − bias) @ kernel``, ``(..., k)``, in ``x``'s dtype on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x``'s last dimension is not the map's input width.
    """
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        raise TypeError(
            f"x must be a floating-point torch.Tensor; got {type(x).__name__} {getattr(x, 'dtype', '')}".rstrip()
        )
    if x.dim() == 0 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"x must have last dimension {kernel.shape[0]} (the whitening's n_features_in_); got shape {tuple(x.shape)}"
        )
    work = torch.promote_types(x.dtype, torch.float32)
    with autocast_disabled(x):
        out = (x.to(work) - bias.to(work)) @ kernel.to(work)
    return out.to(x.dtype)


class _HoldsMap(nn.Module):
    """A module with the buffers ``kernel`` (d, k) and ``bias`` (d,) of a whitening map, kept in
    :func:`statistics_dtype` through every cast; they follow the module's device."""

    kernel: torch.Tensor  # (d, k) buffer
    bias: torch.Tensor  # (d,) buffer

    def _register_map(self, whitening: Whitening) -> None:
        for name, value in (("kernel", whitening.kernel_), ("bias", whitening.bias_)):
            self.register_buffer(name, torch.from_numpy(value.copy()).to(torch.float64))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        held: dict[str, torch.Tensor | None] = {name: self._buffers.pop(name) for name in _MAP}
        try:
            super()._apply(fn, recurse)
            device = fn(
                self._held_kernel(held).new_empty(0, dtype=torch.float32)
            ).device  # where the cast sends tensors
            dtype = statistics_dtype(device)
            held = {name: None if v is None else v.to(device=device, dtype=dtype) for name, v in held.items()}
        finally:
            self._buffers.update(held)
        return self

    @staticmethod
    def _held_kernel(held: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The held kernel (registered by ``_register_map`` before any cast)."""
        kernel = held["kernel"]
        if kernel is None:  # pragma: no cover -- the buffers are registered in __init__
            raise RuntimeError("the whitening map's buffers are missing")
        return kernel


class WhiteningLayer(_HoldsMap):
    """``x ↦ (x − βμ) W`` of a fitted :class:`~kexue.whitening.Whitening`, as a torch module.

    The map stays in float64 (float32 on MPS) through ``.to(dtype)``, ``.half()``, ``.bfloat16()`` and
    ``.double()`` and follows the module to its device (the meta device included, for shapes).
    ``forward`` computes in float32 (float64 for float64 inputs) with autocast off and returns the
    input's dtype; it reads nothing back to the host, so it is the per-batch path on a GPU (the
    estimator's ``transform`` validates its input, which synchronises).

    Args:
        whitening: a fitted :class:`~kexue.whitening.Whitening`.

    Example:
        >>> import torch
        >>> from kexue.whitening import Whitening, WhiteningLayer
        >>> x = torch.randn(500, 8, dtype=torch.float64) * torch.arange(1.0, 9.0) + 3.0
        >>> layer = WhiteningLayer(Whitening(n_components=4).fit(x)).bfloat16()  # or .to("cuda")
        >>> z = layer(x[:10].bfloat16())  # computed in float32, returned in bfloat16
        >>> tuple(z.shape), z.dtype, layer.kernel.dtype
        ((10, 4), torch.bfloat16, torch.float64)
    """

    def __init__(self, whitening: Whitening) -> None:
        super().__init__()
        if not isinstance(whitening, Whitening):
            raise TypeError(f"whitening must be a fitted kexue.whitening.Whitening; got {type(whitening).__name__}")
        self._register_map(whitening)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten the rows of ``x`` (..., d) -> (..., k), in ``x``'s dtype and device.

        Args:
            x: floating-point rows on the module's device, ``(..., d)``.

        Returns:
            The whitened rows, ``(..., k)``.
        """
        return whiten(x, self.kernel, self.bias)

    def extra_repr(self) -> str:
        """The widths and the map's dtype, for ``repr(layer)``.

        Returns:
            ``"in_features=d, out_features=k, map dtype=..."``.
        """
        d, k = self.kernel.shape
        return f"in_features={d}, out_features={k}, map dtype={self.kernel.dtype}"
