"""Shared machinery of the growth operators: building the grown model without a second copy of
its weights, zero-sum (function-preserving) noise, and the probing switch used by
:mod:`kexue.growth.optim` to read an operator's gather-and-scale map."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import torch
from torch import nn

_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("kexue_growth_probing", default=False)


def probing() -> bool:
    """True while :mod:`kexue.growth.optim` runs an operator on probe weights: operators then add
    no noise and give inserted (fresh) parameters zeros."""
    return _PROBING.get()


@contextlib.contextmanager
def probe_mode():
    token = _PROBING.set(True)
    try:
        yield
    finally:
        _PROBING.reset(token)


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters created inside live on the meta device (no memory, no random init); buffers
    (position ids, RoPE frequencies) stay real."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build(model: nn.Module, config: Any, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``type(model)(config)`` holding ``state`` (assigned, not copied), in ``model``'s train/eval mode.

    Peak memory is the small model plus the grown weights: the new model is built on the meta
    device and the grown tensors are assigned into it."""
    shared = {t.data_ptr() for t in model.state_dict().values() if t.numel()}
    state = {n: t.clone() if t.numel() and t.data_ptr() in shared else t for n, t in state.items()}  # never alias the input
    with _parameters_on_meta():
        grown = type(model)(config)
    missing, unexpected = grown.load_state_dict(state, strict=False, assign=True)
    if hasattr(grown, "tie_weights"):
        grown.tie_weights()
    _embedding_scales_in_weight_dtype(grown)
    left = [n for n, p in grown.named_parameters() if p.is_meta]
    if left or unexpected:
        raise RuntimeError(f"internal error {what}: parameters not set {left[:5]}, unexpected {list(unexpected)[:5]}")
    grown.train(model.training)
    return grown


def _embedding_scales_in_weight_dtype(model: nn.Module) -> None:
    """Gemma's embeddings multiply by ``√d`` held in a non-persistent buffer made at construction
    (in float32 here, where the grown weights are assigned later). ``from_pretrained(dtype=…)``
    makes it in the weights' dtype, so the grown model gets that value: in float64 ``√(kd)`` is
    then exact, not a float32 rounding ~1e-8 off."""
    for module in model.modules():
        scalar, weight = getattr(module, "scalar_embed_scale", None), getattr(module, "weight", None)
        if scalar is not None and isinstance(getattr(module, "embed_scale", None), torch.Tensor) and weight is not None:
            module.embed_scale = torch.tensor(scalar, dtype=weight.dtype, device=weight.device)


def check_noise(noise: float) -> float:
    """The symmetry-breaking noise argument: a finite number ``>= 0`` (a relative std)."""
    from kexue._shared import check_number

    if check_number("noise", noise) < 0:
        raise ValueError(f"noise={noise!r} must be >= 0 (a relative standard deviation)")
    return float(noise)


def zero_sum_noise(w: torch.Tensor, index: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``w`` plus noise along its last axis that sums to zero over each group of columns sharing
    a source ``index`` (columns that read identical inputs): the product with any input whose
    grouped coordinates are equal is unchanged, while the copies' weights (and therefore the
    gradients of whatever feeds them) differ. Singleton groups get no noise."""
    if scale == 0 or probing():
        return w
    n_src = int(index.max()) + 1
    z = torch.randn(w.shape, generator=generator, dtype=torch.float64)
    count = torch.bincount(index, minlength=n_src).to(torch.float64)
    mean = torch.zeros(*w.shape[:-1], n_src, dtype=torch.float64).index_add_(-1, index, z) / count
    z = z - mean[..., index]
    return w + (scale * float(w.double().std()) * z).to(w.dtype)
