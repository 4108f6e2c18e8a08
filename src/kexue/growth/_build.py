"""Shared machinery of the growth operators: building the grown model without a second copy of
its weights, zero-sum (function-preserving) noise, the probing switch used by
:mod:`kexue.growth.optim` to read an operator's gather-and-scale map, and the provenance
tracker that reads the same map at the granularity of whole parameters without values (the
meta device).

Devices: every operator creates its tensors on the device of the parameters they meet; the
grown model's parameters stay where the small model's were (the meta device included), and
its buffers follow the small model's buffers. Noise is drawn on the CPU from the seeded
generator and moved to the weight's device, so a seed gives the same grown weights on every
device (and the CPU results of earlier versions bit for bit).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary
from transformers import PretrainedConfig

from kexue._shared import check_number

# a growth operator returns a new model of its input's class
ModelT = TypeVar("ModelT", bound=nn.Module)


def hf_config(model: nn.Module) -> PretrainedConfig:
    """A Hugging Face model's ``.config`` (typed: ``nn.Module.__getattr__`` says Tensor or Module).

    The operators call it on models that :func:`~kexue._shared.check_module` accepted with ``hf=True``."""
    return cast(PretrainedConfig, model.config)


_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("kexue_growth_probing", default=False)


def probing() -> bool:
    """True while :mod:`kexue.growth.optim` runs an operator on probe weights: operators then add
    no noise and give inserted (fresh) parameters zeros."""
    return _PROBING.get()


@contextlib.contextmanager
def probe_mode() -> Iterator[None]:
    """Within the block, :func:`probing` is True (the operators run on probe weights)."""
    token = _PROBING.set(True)
    try:
        yield
    finally:
        _PROBING.reset(token)


# torch calls whose output values do not depend on their tensor arguments' values (fresh tensors)
_FRESH = frozenset(
    {
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
        "new_tensor",
    }
)
_OVERWRITE = frozenset({"zero_", "fill_", "normal_", "uniform_"})  # in place: the tensor becomes fresh


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class Provenance(TorchFunctionMode):
    """Which parameters of the small model each tensor's values come from, followed through every
    torch call without reading a value: a call's outputs come from the union (in argument order)
    of its tensor arguments' sources, except calls that make fresh values (``zeros_like``, ...).
    It runs on the meta device, where the value probe of :class:`~kexue.growth.optim.GrowthMap`
    cannot; :func:`build` passes the sources on to the grown model's parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def tag(self, tensor: torch.Tensor, sources: tuple[str, ...]) -> None:
        self.sources[tensor] = sources

    def of(self, tensor: torch.Tensor) -> tuple[str, ...]:
        return self.sources.get(tensor, ())

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in _FRESH:
            return out
        if name in _OVERWRITE and args and isinstance(args[0], torch.Tensor):
            self.sources.pop(args[0], None)
            return out
        inputs = args[1:2] if name == "copy_" else (args, kwargs or {})
        sources = tuple(dict.fromkeys(s for t in _tensors(inputs) for s in self.of(t)))
        if sources:
            for t in _tensors(out):
                self.tag(t, sources)
        return out


_TRACKER: contextvars.ContextVar[Provenance | None] = contextvars.ContextVar("kexue_growth_provenance", default=None)


@contextlib.contextmanager
def tracking(tracker: Provenance) -> Iterator[Provenance]:
    """Follow the sources of every tensor inside the block (:class:`Provenance`)."""
    token = _TRACKER.set(tracker)
    try:
        with tracker:
            yield tracker
    finally:
        _TRACKER.reset(token)


@contextlib.contextmanager
def _parameters_on_meta(placeholders: list[nn.Parameter]) -> Iterator[None]:
    """Parameters created inside live on the meta device (no memory, no random init) and are
    recorded in ``placeholders`` (those still in the model after loading were never set);
    buffers (position ids, RoPE frequencies) stay real."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None:
            placeholder = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            placeholders.append(placeholder)
            self._parameters[name] = placeholder

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _unaliased(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a copy of every tensor that shares memory with ``model`` (meta tensors hold
    no memory: nothing to copy)."""
    shared = {t.data_ptr() for t in model.state_dict().values() if t.numel() and not t.is_meta}
    return {n: t.clone() if t.numel() and not t.is_meta and t.data_ptr() in shared else t for n, t in state.items()}


def _buffers_follow(model: nn.Module, grown: nn.Module) -> None:
    """Move the grown model's buffers made at construction (on the default device) to the device
    of the small model's buffer of the same name, else of its first buffer (else parameter):
    real under accelerate's ``init_empty_weights`` (buffers stay on the CPU), meta under
    ``torch.device("meta")``, the GPU for a model moved there."""
    buffers = dict(model.named_buffers())
    first = next(iter(buffers.values()), None) if buffers else next(model.parameters(), None)
    if first is None:
        return
    for name, buffer in list(grown.named_buffers()):
        device = buffers[name].device if name in buffers else first.device
        if buffer.device != device:
            module_name, _, attribute = name.rpartition(".")
            module = grown.get_submodule(module_name)
            module._buffers[attribute] = buffer.to(device)


def build(model: ModelT, config: PretrainedConfig, state: dict[str, torch.Tensor], what: str) -> ModelT:
    """``type(model)(config)`` holding ``state`` (assigned, not copied), in ``model``'s train/eval mode.

    Peak memory is the small model plus the grown weights: the new model is built on the meta
    device and the grown tensors are assigned into it. The result lives where ``state`` does
    (the meta device too: a grown meta model, for planning)."""
    state = _unaliased(model, state)
    placeholders: list[nn.Parameter] = []
    with _parameters_on_meta(placeholders):
        grown = type(model)(config)
    _, unexpected = grown.load_state_dict(state, strict=False, assign=True)
    tie_weights = getattr(grown, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()
    _buffers_follow(model, grown)
    _embedding_scales_in_weight_dtype(grown)
    unset = {id(p) for p in placeholders}
    left = [n for n, p in grown.named_parameters() if id(p) in unset]
    if left or unexpected:
        raise RuntimeError(f"internal error {what}: parameters not set {left[:5]}, unexpected {list(unexpected)[:5]}")
    tracker = _TRACKER.get()
    if tracker is not None:  # the state's sources pass to the parameters that now hold it
        for name, p in grown.named_parameters():
            if name in state:
                tracker.tag(p, tracker.of(state[name]))
    grown.train(model.training)
    return grown


def _embedding_scales_in_weight_dtype(model: nn.Module) -> None:
    """Gemma's embeddings multiply by ``√d`` held in a non-persistent buffer made at construction
    (in float32 here, where the grown weights are assigned later). ``from_pretrained(dtype=…)``
    makes it in the weights' dtype, so the grown model gets that value: in float64 ``√(kd)`` is
    then exact, not a float32 rounding ~1e-8 off."""
    for module in model.modules():
        scalar, weight = getattr(module, "scalar_embed_scale", None), getattr(module, "weight", None)
        embed_scale = getattr(module, "embed_scale", None)
        if scalar is not None and isinstance(embed_scale, torch.Tensor) and weight is not None:
            module.embed_scale = torch.tensor(scalar, dtype=weight.dtype, device=embed_scale.device)  # buffers' device


def check_noise(noise: float) -> float:
    """The symmetry-breaking noise argument: a finite number ``>= 0`` (a relative std)."""
    if check_number("noise", noise) < 0:
        raise ValueError(f"noise={noise!r} must be >= 0 (a relative standard deviation)")
    return float(noise)


def zero_sum_noise(
    w: torch.Tensor, index: torch.Tensor, scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``w`` plus noise along its last axis that sums to zero over each group of columns sharing
    a source ``index`` (columns that read identical inputs): the product with any input whose
    grouped coordinates are equal is unchanged, while the copies' weights (and therefore the
    gradients of whatever feeds them) differ. Singleton groups get no noise.

    The noise is drawn in float64 on the CPU from ``generator`` (a CPU generator; ``index`` is
    read there too) and moved to ``w``'s device once, so a seed gives the same noise on every
    device. A meta ``w`` has no values to perturb (nor a standard deviation to scale by): it is
    returned as it is, with its shape."""
    if scale == 0 or probing() or w.is_meta:
        return w
    index = index.cpu()
    n_src = int(index.max()) + 1
    z = torch.randn(w.shape, generator=generator, dtype=torch.float64)
    count = torch.bincount(index, minlength=n_src).to(torch.float64)
    mean = torch.zeros(*w.shape[:-1], n_src, dtype=torch.float64).index_add_(-1, index, z) / count
    z = z - mean[..., index]
    std = float(w.double().std())  # one host read per weight (growth is a one-off, not a hot path)
    return w + (scale * std * z).to(w.device, w.dtype)
