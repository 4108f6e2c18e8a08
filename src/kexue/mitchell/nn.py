"""Training with Mitchell products: drop-in layers, a swap helper, per-layer error tracking.

:class:`MitchellLinear` and :class:`MitchellConv2d` compute their matrix products with
:func:`~kexue.mitchell.matmul.mitchell_matmul` (bias added exactly). The backward pass is a
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

import torch
from torch import nn

from kexue._shared import check_choice, check_module
from kexue.mitchell.correction import check_correction, lambda_correction
from kexue.mitchell.matmul import mitchell_matmul

__all__ = [
    "BACKWARDS",
    "MitchellConv2d",
    "MitchellLinear",
    "autocast_dtype",
    "mitchell_linear",
    "mitchellize",
    "track_errors",
]

BACKWARDS = ("mitchell", "exact", "derivative")


def _derivative_factor(a: torch.Tensor, b: torch.Tensor, correction: str | None) -> torch.Tensor:
    """``∂(a_ik ⊗ b_kj)/∂a_ik`` as an ``(M, K, N)`` tensor (a: (M, K), b: (K, N))."""
    from kexue.mitchell.ops import DTYPES, _Parts

    f = DTYPES[a.dtype]
    pa, pb = _Parts(a, f), _Parts(b, f)
    fa, fb = pa.frac[:, :, None], pb.frac[None, :, :]
    c = 0 if correction is None else lambda_correction(correction, a[:, :, None], b[None, :, :])
    carry = (fa + fb + c) >= (1 << f.mantissa)
    scale = torch.ldexp(torch.ones((), dtype=a.dtype, device=a.device), pb.n[None].to(a.dtype))
    sign = torch.where(pb.sign, -1.0, 1.0).to(a.dtype)[None]
    factor = sign * scale * (1 + carry.to(a.dtype))
    return torch.where(pb.zero[None], torch.zeros_like(factor), factor)


class _MitchellMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, backward, correction):  # x (M, K), w (K, N)
        ctx.save_for_backward(x, w)
        ctx.mode, ctx.correction = backward, correction
        return mitchell_matmul(x, w, correction=correction)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = gw = None
        if ctx.mode == "exact":
            gx = g @ w.T if ctx.needs_input_grad[0] else None
            gw = x.T @ g if ctx.needs_input_grad[1] else None
        elif ctx.mode == "mitchell":
            gx = mitchell_matmul(g, w.T.contiguous(), correction=ctx.correction) if ctx.needs_input_grad[0] else None
            gw = mitchell_matmul(x.T.contiguous(), g, correction=ctx.correction) if ctx.needs_input_grad[1] else None
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


def _autocast_operands(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast the operands as autocast casts those of ``nn.Linear``: under autocast on the first
    operand's device type, floating tensors other than float64 go to autocast's dtype (differentiably,
    so float32 weights still get float32 gradients); otherwise they are returned unchanged."""
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


def mitchell_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backward: str = "mitchell",
    correction: str | None = None,
) -> torch.Tensor:
    """``x Wᵀ + b`` with Mitchell products (``x``: ``(..., in)``, ``W``: ``(out, in)``).

    Precision: the products are Mitchell products of the operands' dtype, summed in float32
    (float64 for float64) and rounded once to that dtype (:func:`~kexue.mitchell.matmul.mitchell_matmul`).
    Under ``torch.autocast`` on ``x``'s device type the layer follows autocast as ``nn.Linear``
    does: ``x``, ``W`` and ``b`` (float32, float16 or bfloat16) are cast to autocast's dtype first,
    so the Mitchell arithmetic is that dtype's (bfloat16 for CPU autocast) and so is the output.
    Outside autocast ``x`` must have the weight's dtype (a TypeError otherwise: no silent cast).
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
    y = _MitchellMatmul.apply(x.reshape(-1, x.shape[-1]), weight.T, backward, correction)
    y = y.reshape(*lead, weight.shape[0])
    return y if bias is None else y + bias


class _Tracked:
    """Mixin: optional per-forward relative error of the output against the exact layer."""

    _errors: dict[str, list[float]] | None = None
    _name: str = ""

    def _record(self, x_exact_fn, y: torch.Tensor) -> None:
        if self._errors is None:
            return
        with torch.no_grad():
            exact = x_exact_fn()
            self._errors[self._name].append(float((y.detach() - exact).norm() / exact.norm().clamp(min=1e-30)))


class MitchellLinear(nn.Linear, _Tracked):
    """``nn.Linear`` whose products are Mitchell products (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        backward: str = "mitchell",
        correction: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        check_choice("backward", backward, BACKWARDS)
        check_correction(correction)
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = mitchell_linear(x, self.weight, self.bias, backward=self.backward_mode, correction=self.correction)
        self._record(lambda: nn.functional.linear(x, self.weight, self.bias), y)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backward={self.backward_mode}, correction={self.correction}"


class MitchellConv2d(nn.Conv2d, _Tracked):
    """``nn.Conv2d`` (groups = 1, zero padding) computed as unfold + Mitchell matrix product."""

    def __init__(self, *args, backward: str = "mitchell", correction: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_choice("backward", backward, BACKWARDS)
        check_correction(correction)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError(
                f"MitchellConv2d supports groups=1, padding_mode='zeros' and numeric padding; got groups={self.groups}, "
                f"padding_mode={self.padding_mode!r}, padding={self.padding!r}"
            )
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(
                f"x must be a (N, C, H, W) tensor; got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        x, weight, bias = _autocast_operands(x, self.weight, self.bias)
        if x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype}; the layer's weight is {weight.dtype} (cast x or the layer)")
        n, _, h, w = x.shape
        cols = nn.functional.unfold(
            x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride
        )
        kh, kw = self.kernel_size
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        y = mitchell_linear(
            cols.transpose(1, 2), weight.flatten(1), None, backward=self.backward_mode, correction=self.correction
        )  # (n, L, out)
        y = y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)
        if bias is not None:
            y = y + bias[None, :, None, None]
        self._record(lambda: self._conv_forward(x, self.weight, self.bias), y)
        return y


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _swap_parts(
    model: nn.Module, skip: tuple[str, ...], *, norms: bool, gates: bool, backward: str, correction: str | None
) -> None:
    """Replace RMS/layer norms and gated MLPs (not linears) by their Mitchell versions."""
    from kexue.mitchell import transformer as tf

    for name, module in list(model.named_modules()):
        if _skipped(name, skip):
            continue
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _skipped(full, skip):
                continue
            if norms and tf.is_rms_norm(child):
                new = tf.rms_norm_from(child, backward=backward, correction=correction)
            elif norms and type(child) is nn.LayerNorm:
                new = tf.MitchellLayerNorm(child, backward=backward, correction=correction)
            elif gates and tf.is_gated_mlp(child):
                new = tf.MitchellGatedMLP(child, backward=backward, correction=correction)
            else:
                continue
            new.train(child.training)
            setattr(module, child_name, new)


def _switch_attention(model: nn.Module, skip: tuple[str, ...], switches, backward: str, correction: str | None) -> None:
    from kexue.mitchell import transformer as tf

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


def mitchellize(
    model: nn.Module,
    *,
    backward: str = "mitchell",
    correction: str | None = None,
    skip: tuple[str, ...] = (),
    linears: bool = True,
    attention=False,
    norms: bool = False,
    gates: bool = False,
) -> nn.Module:
    """Swap the products of ``model`` (in place) for Mitchell products; returns ``model``.

    By default every ``nn.Linear`` and ``nn.Conv2d`` becomes the Mitchell layer holding the same
    parameters. The switches extend this to the rest of a Transformer
    (:mod:`kexue.mitchell.transformer`).

    Args:
        backward: ``"mitchell"``, ``"exact"`` or ``"derivative"`` (module docstring; attention,
            norms and gates accept the first two).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        skip: names (or name prefixes) of modules to keep exact, e.g. ``("lm_head",)``.
        linears: swap ``nn.Linear`` / ``nn.Conv2d``.
        attention: ``False``, ``True`` (scores, softmax exponentials and values Mitchell) or an
            :class:`~kexue.mitchell.transformer.AttentionSwitches`: transformers attention
            modules (HF-style, dispatching through ``AttentionInterface``) then use
            :func:`~kexue.mitchell.transformer.mitchell_attention_forward`.
        norms: swap RMS norms (HF ``*RMSNorm``, ``nn.RMSNorm``) and ``nn.LayerNorm``.
        gates: make the element-wise product of gated MLPs (``gate_proj``/``up_proj``/``down_proj``
            /``act_fn``, LLaMA-style) a Mitchell product.

    Raises:
        ValueError: a bad option, ``attention`` on a model without transformers attention
            modules, or a ``Conv2d`` the Mitchell layer does not support (grouped, non-zero
            padding mode); skip it by name.
    """
    from kexue._shared import check_bool
    from kexue.mitchell.transformer import PART_BACKWARDS, AttentionSwitches

    check_module("model", model)
    check_choice("backward", backward, BACKWARDS)
    check_correction(correction)
    for flag, value in (("linears", linears), ("norms", norms), ("gates", gates)):
        check_bool(flag, value)
    switches = AttentionSwitches.coerce(attention)
    if (switches is not None or norms or gates) and backward not in PART_BACKWARDS:
        raise ValueError(
            f"backward={backward!r} is for linear and convolution layers only; attention, norms and gates take "
            f"{' or '.join(repr(b) for b in PART_BACKWARDS)}"
        )
    if norms or gates:
        _swap_parts(model, skip, norms=norms, gates=gates, backward=backward, correction=correction)
    if switches is not None:
        _switch_attention(model, skip, switches, backward, correction)
    if linears:
        _swap_linears(model, skip, backward, correction)
    return model


def _swap_linears(model: nn.Module, skip: tuple[str, ...], backward: str, correction: str | None) -> None:
    for name, module in list(model.named_modules()):
        if _skipped(name, skip):
            continue
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _skipped(full, skip) or isinstance(child, (MitchellLinear, MitchellConv2d)):
                continue
            if type(child) is nn.Linear:
                new = MitchellLinear.__new__(MitchellLinear)
                nn.Module.__init__(new)
                new.in_features, new.out_features = child.in_features, child.out_features
                new.weight, new.bias = child.weight, child.bias
            elif type(child) is nn.Conv2d:
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
            else:
                continue
            new.backward_mode, new.correction = backward, correction
            new.train(child.training)
            setattr(module, child_name, new)


@contextlib.contextmanager
def track_errors(model: nn.Module):
    """Within the block, every Mitchell part of ``model`` appends, per forward, the relative
    error of its output against the exact computation on the same input; yields
    ``{name: [errors]}``. Linear, convolution and norm layers record under their module name;
    attention under ``<attention module>.core`` (``softmax(Q Kᵀ s) V`` from the same Q, K, V); a
    gated MLP's product under ``<mlp>.gate``. Costs one exact forward per part."""
    from kexue.mitchell.transformer import MitchellGatedMLP, _TrackedNorm

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
