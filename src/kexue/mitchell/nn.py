"""Training with Mitchell products: drop-in layers, a swap helper, per-layer error tracking.

:class:`MitchellLinear` and :class:`MitchellConv2d` compute their matrix products with
:func:`~kexue.mitchell.matrix.matmul` (bias added exactly). The backward pass is a
choice, ``backward=``:

* ``"mitchell"`` (default): the two gradient products ``g Wᵀ``-style are Mitchell products too,
  as in "Deep Neural Network Training without Multiplications" (Mogami, 2020), where every
  multiplication of training is replaced;
* ``"exact"``: exact gradient products with the same operands (a straight-through estimator:
  the forward is approximate, the backward treats it as exact);
* ``"derivative"``: the true derivative of the Mitchell forward. The product is piecewise
  linear in each operand, ``∂(a ⊗ b)/∂a = sign(b) 2^(n_b) (1 + carry)`` with ``carry`` whether
  the mantissas (plus correction) reach 1, so the layer's gradient is exact for the
  approximate function; ``torch.autograd.gradcheck`` verifies it. It materialises an
  ``(M, K, N)`` tensor: for checks and small layers only.

Precision and devices. A layer computes Mitchell products of its operands' dtype (float32,
float16, bfloat16, float64), sums them in float32 (float64 for float64) and rounds once. Under
``torch.autocast`` (on the input's device type) it follows autocast as ``nn.Linear`` and
``nn.Conv2d`` do: input, weight and bias are cast to autocast's dtype and the Mitchell arithmetic
is that dtype's, so a partly mitchellized model runs under autocast like an exact one. Nothing in
a forward reads a value on the host; it runs on any device (the compiled kernel on CPU float32).

:func:`mitchellize` swaps every ``nn.Linear`` / ``nn.Conv2d`` of a model for the Mitchell
version (same parameters) and, when asked, the rest of a Transformer's products
(:mod:`kexue.mitchell.transformer`: attention, RMS/layer norms, the gated MLP product);
:func:`track_errors` records, per layer and forward, the relative error
``‖y_mitchell − y_exact‖ / ‖y_exact‖`` of the layer's output against the exact layer on the same
input (a local error: what that layer adds, not what reaches it).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch
from torch import nn

from kexue._shared import check_bool, check_choice, check_module
from kexue.mitchell import transformer as tf
from kexue.mitchell._bits import DTYPES, Parts
from kexue.mitchell.correction import Correction, check_correction, lambda_correction
from kexue.mitchell.matrix import matmul
from kexue.mitchell.transformer import (
    PART_BACKWARDS,
    AttentionSwitches,
    MitchellGatedMLP,
    PartBackward,
    _TrackedNorm,
)

__all__ = [
    "BACKWARDS",
    "Backward",
    "MitchellConv2d",
    "MitchellLinear",
    "autocast_dtype",
    "linear",
    "mitchellize",
    "track_errors",
]

Backward = Literal["mitchell", "exact", "derivative"]
BACKWARDS: tuple[Backward, ...] = get_args(Backward)


def _derivative_factor(a: torch.Tensor, b: torch.Tensor, correction: Correction | None) -> torch.Tensor:
    """``∂(a_ik ⊗ b_kj)/∂a_ik`` as an ``(M, K, N)`` tensor (a: (M, K), b: (K, N))."""
    f = DTYPES[a.dtype]
    pa, pb = Parts(a, f), Parts(b, f)
    fa, fb = pa.frac[:, :, None], pb.frac[None, :, :]
    c = 0 if correction is None else lambda_correction(correction, a[:, :, None], b[None, :, :])
    carry = (fa + fb + c) >= (1 << f.mantissa)
    scale = torch.ldexp(torch.ones((), dtype=a.dtype, device=a.device), pb.n[None].to(a.dtype))
    sign = torch.where(pb.sign, -1.0, 1.0).to(a.dtype)[None]
    factor = sign * scale * (1 + carry.to(a.dtype))
    return torch.where(pb.zero[None], torch.zeros_like(factor), factor)


class _MitchellMatmul(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w: torch.Tensor, backward: Backward, correction: Correction | None
    ) -> torch.Tensor:  # x (M, K), w (K, N)
        ctx.save_for_backward(x, w)
        ctx.mode, ctx.correction = backward, correction
        return matmul(x, w, correction=correction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, w = ctx.saved_tensors
        gx = gw = None
        if ctx.mode == "exact":
            gx = g @ w.T if ctx.needs_input_grad[0] else None
            gw = x.T @ g if ctx.needs_input_grad[1] else None
        elif ctx.mode == "mitchell":
            gx = matmul(g, w.T.contiguous(), correction=ctx.correction) if ctx.needs_input_grad[0] else None
            gw = matmul(x.T.contiguous(), g, correction=ctx.correction) if ctx.needs_input_grad[1] else None
        else:  # the true derivative of the approximate product, both operands
            if ctx.needs_input_grad[0]:
                gx = (_derivative_factor(x, w, ctx.correction) * g[:, None, :]).sum(-1)
            if ctx.needs_input_grad[1]:
                # ∂(a ⊗ b)/∂b = ∂(b ⊗ a)/∂b: the product is symmetric
                gw = (
                    (_derivative_factor(w.T.contiguous(), x.T.contiguous(), ctx.correction) * g.T[:, None, :]).sum(-1).T
                )
        return gx, gw, None, None


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast computes matrix products in on ``x``'s device type, or None where it is off
    (or where that device type has no autocast, as the meta device)."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _autocast_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def _autocast_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cast the operands as autocast casts those of ``nn.Linear``: under autocast on ``x``'s device
    type, floating tensors other than float64 go to autocast's dtype (differentiably, so float32
    weights still get float32 gradients); otherwise they are returned unchanged."""
    dtype = autocast_dtype(x)
    if dtype is None:
        return x, weight, bias
    return (
        _autocast_cast(x, dtype),
        _autocast_cast(weight, dtype),
        None if bias is None else _autocast_cast(bias, dtype),
    )


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backward: Backward = "mitchell",
    correction: Correction | None = None,
) -> torch.Tensor:
    """``x Wᵀ + b`` with Mitchell products (``x``: ``(..., in)``, ``W``: ``(out, in)``).

    Precision: the products are Mitchell products of the operands' dtype, summed in float32
    (float64 for float64) and rounded once to that dtype (:func:`~kexue.mitchell.matrix.matmul`).
    Under ``torch.autocast`` on ``x``'s device type the layer follows autocast as ``nn.Linear``
    does: ``x``, ``W`` and ``b`` (float32, float16 or bfloat16) are cast to autocast's dtype first,
    so the Mitchell arithmetic is that dtype's (bfloat16 for CPU autocast) and so is the output.
    Outside autocast ``x`` must have the weight's dtype (a TypeError otherwise: no silent cast).

    Args:
        x: ``(..., in)`` input.
        weight: ``(out, in)``.
        bias: ``(out,)``, added exactly; or None.
        backward: ``"mitchell"``, ``"exact"`` or ``"derivative"`` (module docstring).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.

    Returns:
        ``(..., out)``.

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.linear(torch.tensor([[1.5, 2.0]]), torch.tensor([[1.5, 3.0]]), torch.tensor([0.5]))
        tensor([[8.5000]])
    """
    check_choice("backward", backward, BACKWARDS)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    x, weight, bias = _autocast_operands(x, weight, bias)
    if x.dtype != weight.dtype:
        raise TypeError(f"x has dtype {x.dtype}; the layer's weight is {weight.dtype} (cast x or the layer)")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., {weight.shape[1]}) (in_features)")
    lead = x.shape[:-1]
    y: torch.Tensor = _MitchellMatmul.apply(x.reshape(-1, x.shape[-1]), weight.T, backward, correction)
    y = y.reshape(*lead, weight.shape[0])
    return y if bias is None else y + bias


class _Tracked:
    """Mixin: optional per-forward relative error of the output against the exact layer."""

    _errors: dict[str, list[float]] | None = None
    _name: str = ""

    def _record(self, x_exact_fn: Callable[[], torch.Tensor], y: torch.Tensor) -> None:
        if self._errors is None:
            return
        with torch.no_grad():
            exact = x_exact_fn()
            self._errors[self._name].append(float((y.detach() - exact).norm() / exact.norm().clamp(min=1e-30)))


class MitchellLinear(nn.Linear, _Tracked):
    """``nn.Linear`` whose products are Mitchell products (see the module docstring).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether the layer has an additive bias (positional, as in ``nn.Linear``).
        backward: ``"mitchell"``, ``"exact"`` or ``"derivative"`` (module docstring).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        device: where the parameters are created.
        dtype: the parameters' dtype (the Mitchell arithmetic is that dtype's).

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> _ = torch.manual_seed(0)
        >>> layer = mitchell.MitchellLinear(4, 2, correction="piecewise")
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    backward_mode: Backward
    correction: Correction | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        backward: Backward = "mitchell",
        correction: Correction | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        check_choice("backward", backward, BACKWARDS)
        check_correction(correction)
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ + b`` by :func:`linear` (recorded under :func:`track_errors`).

        Args:
            x: ``(..., in_features)``, of the weight's dtype (any floating dtype under autocast).

        Returns:
            ``(..., out_features)``.
        """
        y = linear(x, self.weight, self.bias, backward=self.backward_mode, correction=self.correction)
        self._record(lambda: nn.functional.linear(x, self.weight, self.bias), y)
        return y

    def extra_repr(self) -> str:
        """``nn.Linear``'s description plus the backward mode and the correction.

        Returns:
            The text inside the module's ``repr``.
        """
        return super().extra_repr() + f", backward={self.backward_mode}, correction={self.correction}"


class MitchellConv2d(nn.Conv2d, _Tracked):
    """``nn.Conv2d`` (groups = 1, zero padding) computed as unfold + Mitchell matrix product.

    Args:
        *args: ``nn.Conv2d``'s positional arguments (``in_channels``, ``out_channels``, ``kernel_size``, ...).
        backward: ``"mitchell"``, ``"exact"`` or ``"derivative"`` (module docstring).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        **kwargs: ``nn.Conv2d``'s keyword arguments (``stride``, ``padding``, ``dilation``, ``bias``, ...).

    Raises:
        ValueError: grouped convolutions, a padding mode other than zeros, or string padding.
    """

    backward_mode: Backward
    correction: Correction | None

    def __init__(
        self, *args: Any, backward: Backward = "mitchell", correction: Correction | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        check_choice("backward", backward, BACKWARDS)
        check_correction(correction)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError(
                "MitchellConv2d supports groups=1, padding_mode='zeros' and numeric padding; "
                f"got groups={self.groups}, padding_mode={self.padding_mode!r}, padding={self.padding!r}"
            )
        self.backward_mode, self.correction = backward, correction

    def _numeric_padding(self) -> tuple[int, ...]:
        """``padding`` as numbers (the constructor refuses ``"same"``/``"valid"``; so does this, if set since)."""
        if isinstance(self.padding, str):
            raise ValueError(f"MitchellConv2d supports numeric padding only; got padding={self.padding!r}")
        return self.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with Mitchell products (recorded under :func:`track_errors`).

        Args:
            x: ``(N, C, H, W)``, of the weight's dtype (any floating dtype under autocast).

        Returns:
            ``(N, out_channels, H_out, W_out)``.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a (N, C, H, W) tensor; got {got}")
        x, weight, bias = _autocast_operands(x, self.weight, self.bias)
        if x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype}; the layer's weight is {weight.dtype} (cast x or the layer)")
        padding = self._numeric_padding()
        n, _, h, w = x.shape
        cols = nn.functional.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)
        kh, kw = self.kernel_size
        oh = (h + 2 * padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        y = linear(
            cols.transpose(1, 2), weight.flatten(1), None, backward=self.backward_mode, correction=self.correction
        )  # (n, L, out)
        y = y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)
        if bias is not None:
            y = y + bias[None, :, None, None]
        self._record(lambda: self._conv_forward(x, self.weight, self.bias), y)
        return y


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _children(model: nn.Module, skip: tuple[str, ...]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """``(parent, child name, child)`` of every module of ``model`` not in ``skip`` (a snapshot: safe to swap)."""
    for name, module in list(model.named_modules()):
        if _skipped(name, skip):
            continue
        for child_name, child in list(module.named_children()):
            if not _skipped(f"{name}.{child_name}" if name else child_name, skip):
                yield module, child_name, child


def _mitchell_part(
    child: nn.Module, *, norms: bool, gates: bool, backward: PartBackward, correction: Correction | None
) -> nn.Module | None:
    """The Mitchell version of an RMS/layer norm or a gated MLP (when switched on), else None."""
    if norms and tf.is_rms_norm(child):
        return tf.rms_norm_from(child, backward=backward, correction=correction)
    if norms and type(child) is nn.LayerNorm:
        return tf.MitchellLayerNorm(child, backward=backward, correction=correction)
    if gates and tf.is_gated_mlp(child):
        return tf.MitchellGatedMLP(child, backward=backward, correction=correction)
    return None


def _swap_parts(
    model: nn.Module,
    skip: tuple[str, ...],
    *,
    norms: bool,
    gates: bool,
    backward: PartBackward,
    correction: Correction | None,
) -> None:
    """Replace RMS/layer norms and gated MLPs (not linears) by their Mitchell versions."""
    for module, child_name, child in _children(model, skip):
        new = _mitchell_part(child, norms=norms, gates=gates, backward=backward, correction=correction)
        if new is not None:
            new.train(child.training)
            setattr(module, child_name, new)


def _switch_attention(
    model: nn.Module,
    skip: tuple[str, ...],
    switches: AttentionSwitches,
    backward: PartBackward,
    correction: Correction | None,
) -> None:
    found = [(n, m) for n, m in model.named_modules() if tf.is_hf_attention(m)]
    if not found:
        raise ValueError(
            "attention=... needs transformers attention modules (a class named *Attention with a config "
            f"and a scaling, dispatching through AttentionInterface); {type(model).__name__} has none"
        )
    tf.register_hf_attention()
    for name, module in found:
        if not _skipped(name, skip):
            module._kexue_mitchell = (switches, backward, correction)
        module.config._attn_implementation = tf.ATTENTION_KEY  # unswitched modules run exact SDPA there


def _part_backward(backward: Backward, parts: bool) -> PartBackward:
    """``backward`` for attention, norms and gates (``parts``: some are switched on), which take the
    backwards of :data:`~kexue.mitchell.transformer.PART_BACKWARDS` only; a ValueError otherwise."""
    if backward == "derivative":
        if parts:
            raise ValueError(
                f"backward={backward!r} is for linear and convolution layers only; attention, norms and gates take "
                f"{' or '.join(repr(b) for b in PART_BACKWARDS)}"
            )
        return "mitchell"  # unused: no part is switched on
    return backward


def mitchellize(
    model: nn.Module,
    *,
    backward: Backward = "mitchell",
    correction: Correction | None = None,
    skip: tuple[str, ...] = (),
    linears: bool = True,
    attention: bool | AttentionSwitches = False,
    norms: bool = False,
    gates: bool = False,
) -> nn.Module:
    """Swap the products of ``model`` (in place) for Mitchell products; returns ``model``.

    By default every ``nn.Linear`` and ``nn.Conv2d`` becomes the Mitchell layer holding the same
    parameters. The switches extend this to the rest of a Transformer
    (:mod:`kexue.mitchell.transformer`).

    Args:
        model: the model to change in place.
        backward: ``"mitchell"``, ``"exact"`` or ``"derivative"`` (module docstring; attention,
            norms and gates accept the first two).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        skip: names (or name prefixes) of modules to keep exact, e.g. ``("lm_head",)``.
        linears: swap ``nn.Linear`` / ``nn.Conv2d``.
        attention: ``False``, ``True`` (scores, softmax exponentials and values Mitchell) or an
            :class:`~kexue.mitchell.transformer.AttentionSwitches`: transformers attention
            modules (HF-style, dispatching through ``AttentionInterface``) then use
            :func:`~kexue.mitchell.transformer.attention_forward`.
        norms: swap RMS norms (HF ``*RMSNorm``, ``nn.RMSNorm``) and ``nn.LayerNorm``.
        gates: make the element-wise product of gated MLPs (``gate_proj``/``up_proj``/``down_proj``
            /``act_fn``, LLaMA-style) a Mitchell product.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: a bad option, ``attention`` on a model without transformers attention
            modules, or a ``Conv2d`` the Mitchell layer does not support (grouped, non-zero
            padding mode); skip it by name.

    Example:
        >>> from torch import nn
        >>> from kexue import mitchell
        >>> model = mitchell.mitchellize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), skip=("2",))
        >>> [type(m).__name__ for m in model]
        ['MitchellLinear', 'ReLU', 'Linear']
    """
    check_module("model", model)
    check_choice("backward", backward, BACKWARDS)
    check_correction(correction)
    for flag, value in (("linears", linears), ("norms", norms), ("gates", gates)):
        check_bool(flag, value)
    switches = AttentionSwitches.coerce(attention)
    part_backward = _part_backward(backward, switches is not None or norms or gates)
    if norms or gates:
        _swap_parts(model, skip, norms=norms, gates=gates, backward=part_backward, correction=correction)
    if switches is not None:
        _switch_attention(model, skip, switches, part_backward, correction)
    if linears:
        _swap_linears(model, skip, backward, correction)
    return model


def _mitchell_linear_from(child: nn.Linear) -> MitchellLinear:
    """A :class:`MitchellLinear` holding ``child``'s parameters (not copies)."""
    new = MitchellLinear.__new__(MitchellLinear)
    nn.Module.__init__(new)
    new.in_features, new.out_features = child.in_features, child.out_features
    new.weight, new.bias = child.weight, child.bias
    return new


def _mitchell_conv_from(child: nn.Conv2d) -> MitchellConv2d:
    """A :class:`MitchellConv2d` holding ``child``'s parameters (built on the meta device, then given them)."""
    new = MitchellConv2d(
        child.in_channels,
        child.out_channels,
        child.kernel_size,
        stride=child.stride,
        padding=child.padding,
        dilation=child.dilation,
        groups=child.groups,
        bias=child.bias is not None,
        padding_mode=child.padding_mode,
        device="meta",
    )
    new.weight, new.bias = child.weight, child.bias
    return new


def _swap_linears(model: nn.Module, skip: tuple[str, ...], backward: Backward, correction: Correction | None) -> None:
    for module, child_name, child in _children(model, skip):
        new: MitchellLinear | MitchellConv2d
        if isinstance(child, (MitchellLinear, MitchellConv2d)):
            continue
        if type(child) is nn.Linear:
            new = _mitchell_linear_from(child)
        elif type(child) is nn.Conv2d:
            new = _mitchell_conv_from(child)
        else:
            continue
        new.backward_mode, new.correction = backward, correction
        new.train(child.training)
        setattr(module, child_name, new)


@contextlib.contextmanager
def track_errors(model: nn.Module) -> Iterator[dict[str, list[float]]]:
    """Within the block, every Mitchell part of ``model`` records, per forward, the relative error of its
    output against the exact computation on the same input.

    Linear, convolution and norm layers record under their module name; attention under
    ``<attention module>.core`` (``softmax(Q Kᵀ s) V`` from the same Q, K, V); a gated MLP's product
    under ``<mlp>.gate``. Costs one exact forward per part.

    Args:
        model: a model changed by :func:`mitchellize` (or holding Mitchell layers).

    Returns:
        A context manager yielding ``{name: [errors]}``, appended to by every forward in the block.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kexue import mitchell
        >>> _ = torch.manual_seed(0)
        >>> model = mitchell.mitchellize(nn.Sequential(nn.Linear(4, 4)))
        >>> with mitchell.track_errors(model) as errors:
        ...     _ = model(torch.randn(2, 4))
        >>> list(errors), 0 < errors["0"][0] < 1 / 9
        (['0'], True)
    """
    check_module("model", model)
    errors: dict[str, list[float]] = defaultdict(list)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (MitchellLinear, MitchellConv2d, _TrackedNorm, MitchellGatedMLP))
        or hasattr(m, "_kexue_mitchell")
    ]
    for name, layer in layers:
        layer._errors, layer._name = errors, name
    try:
        yield errors
    finally:
        for _, layer in layers:
            layer._errors = None
