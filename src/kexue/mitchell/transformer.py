"""Mitchell products inside a Transformer: attention, normalisation, gating, each behind a switch.

A Transformer multiplies in more places than its linear layers. This module gives each of them a
Mitchell version that :func:`kexue.mitchell.nn.mitchellize` can switch on or off:

* attention (:func:`mitchell_attention`), with :class:`AttentionSwitches`:

  - ``scores``: ``S = (Q ⊗ Kᵀ) ⊗ s`` by :func:`~kexue.mitchell.matmul.mitchell_bmm`, ``s`` the
    ``1/√d`` scaling (a power of two for ``d = 4^j``: then exact anyway);
  - ``softmax``: ``exp(z) = 2^(z log₂e)`` with the product ``z ⊗ log₂e`` and Mitchell's
    antilogarithm :func:`~kexue.mitchell.ops.mitchell_exp2`, ``2^(n + x) ≈ 2^n (1 + x)`` (never
    below the exact value, at most 6.15 % above it: ``max (1 + x) / 2^x = 2 / (e ln 2) ≈ 1.0615``
    at ``x = 1/ln 2 − 1``);
  - ``normalise``: the division by the row sum by :func:`~kexue.mitchell.ops.mitchell_div`
    (then rows no longer sum to exactly 1; off by default);
  - ``values``: ``O = P ⊗ V`` by ``mitchell_bmm``;

* RMS / layer normalisation (:class:`MitchellRMSNorm`, :class:`MitchellLayerNorm`): the squares
  of the variance and the two scalings ``x̂ = x ⊗ r``, ``y = x̂ ⊗ w`` (``r`` the exact reciprocal
  square root: a function, not a product);
* the gated MLP's element-wise product ``act(gate(x)) ⊗ up(x)`` (:class:`MitchellGatedMLP`).

Gradients. ``backward="mitchell"`` makes the gradient products Mitchell products too (the
paper's setting); ``"exact"`` is straight-through (exact products of the same operands). The
antilogarithm's derivative is the true one of the approximation, ``d/dy 2^n (1 + y − n) = 2^n``
with ``n = ⌊y⌋`` (a power of two: an exponent, not a product). Sums, the subtraction of the row
maximum and the reciprocal square root are exact, as are the rotary position embedding of
LLaMA-style models (HF applies it before the attention function) and the embedding look-up.

HF models. :func:`mitchell_attention_forward` has the signature of transformers'
``AttentionInterface`` and is registered under :data:`ATTENTION_KEY` (with the additive float
mask of eager attention); a module that :func:`~kexue.mitchell.nn.mitchellize` did not switch
runs transformers' exact SDPA attention, so models with skipped layers stay correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kexue.mitchell.correction import check_correction
from kexue.mitchell.matmul import mitchell_bmm
from kexue.mitchell.ops import mitchell_div, mitchell_exp2, mitchell_mul

__all__ = [
    "ATTENTION_KEY",
    "PART_BACKWARDS",
    "AttentionSwitches",
    "MitchellGatedMLP",
    "MitchellLayerNorm",
    "MitchellRMSNorm",
    "bmm",
    "mitchell_attention",
    "mitchell_attention_forward",
    "mitchell_softmax",
    "mul",
    "register_hf_attention",
]

ATTENTION_KEY = "kexue_mitchell"
PART_BACKWARDS = ("mitchell", "exact")
_LOG2E = math.log2(math.e)


def _check_backward(backward: str) -> None:
    from kexue._shared import check_choice

    check_choice("backward", backward, PART_BACKWARDS)


def _reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    return g.sum_to_size(shape) if g.shape != shape else g


class _Mul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, backward, correction):
        ctx.save_for_backward(a, b)
        ctx.backward_mode, ctx.correction = backward, correction
        return mitchell_mul(a, b, correction=correction)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        prod = (
            (lambda x, y: mitchell_mul(x, y, correction=ctx.correction))
            if ctx.backward_mode == "mitchell"
            else torch.mul
        )
        ga = _reduce_to(prod(g, b.expand_as(g)), a.shape) if ctx.needs_input_grad[0] else None
        gb = _reduce_to(prod(g, a.expand_as(g)), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def mul(
    a: torch.Tensor, b: torch.Tensor | float, *, backward: str = "mitchell", correction: str | None = None
) -> torch.Tensor:
    """Differentiable element-wise Mitchell product (broadcasting; ``b`` may be a Python number)."""
    _check_backward(backward)
    check_correction(correction)
    if not isinstance(b, torch.Tensor):
        b = torch.full((), float(b), dtype=a.dtype, device=a.device)  # filled on the device: no host-to-device copy
    return _Mul.apply(a, b, backward, correction)


class _Bmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, backward, correction):
        ctx.save_for_backward(a, b)
        ctx.backward_mode, ctx.correction = backward, correction
        return mitchell_bmm(a, b, correction=correction)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        if ctx.backward_mode == "mitchell":
            prod = lambda x, y: mitchell_bmm(x.contiguous(), y.contiguous(), correction=ctx.correction)  # noqa: E731
        else:
            prod = torch.matmul
        ga = _reduce_to(prod(g, b.transpose(-1, -2)), a.shape) if ctx.needs_input_grad[0] else None
        gb = _reduce_to(prod(a.transpose(-1, -2), g), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def bmm(a: torch.Tensor, b: torch.Tensor, *, backward: str = "mitchell", correction: str | None = None) -> torch.Tensor:
    """Differentiable :func:`~kexue.mitchell.matmul.mitchell_bmm` (gradients ``g ⊗ bᵀ``, ``aᵀ ⊗ g``)."""
    _check_backward(backward)
    check_correction(correction)
    return _Bmm.apply(a, b, backward, correction)


class _Exp2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        out = mitchell_exp2(y)
        ctx.save_for_backward(y)
        return out

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        slope = torch.exp2(torch.floor(y))  # d/dy 2^n (1 + y - n) = 2^n, n = floor(y); 0 at -inf
        return g * torch.where(torch.isfinite(y), slope, torch.zeros_like(slope))


def mitchell_softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    exponentials: bool = True,
    normalise: bool = False,
    backward: str = "mitchell",
    correction: str | None = None,
) -> torch.Tensor:
    """Softmax with Mitchell arithmetic: ``e_i = 2^((x_i − max) ⊗ log₂e)`` by :func:`mitchell_exp2`
    (``exponentials``), then ``e_i / Σ e_j`` (by :func:`mitchell_div` when ``normalise``).

    With both switches off it is the exact softmax (``torch.softmax``). The subtraction of the
    maximum is exact, so the largest entry's exponential is exactly 1.
    """
    _check_backward(backward)
    z = x - x.amax(dim=dim, keepdim=True).detach()
    if exponentials:
        e = _Exp2.apply(mul(z, _LOG2E, backward=backward, correction=correction))
    else:
        e = torch.exp(z)
    total = e.sum(dim=dim, keepdim=True)
    if normalise:
        return _Div.apply(e, total)
    return e / total


class _Div(torch.autograd.Function):
    """Mitchell quotient, with the exact quotient's gradient (straight-through)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return mitchell_div(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _reduce_to(g / b, a.shape), _reduce_to(-g * a / (b * b), b.shape)


@dataclass(frozen=True)
class AttentionSwitches:
    """Which products of attention are Mitchell products (module docstring); all off = exact."""

    scores: bool = True
    softmax: bool = True
    values: bool = True
    normalise: bool = False

    @classmethod
    def coerce(cls, value: bool | AttentionSwitches) -> AttentionSwitches | None:
        """``True`` → the defaults, ``False`` → None (attention untouched), a switches object → itself."""
        if isinstance(value, AttentionSwitches):
            return value
        if value is True:
            return cls()
        if value is False:
            return None
        raise TypeError(f"attention must be a bool or AttentionSwitches; got {type(value).__name__}")


def mitchell_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scaling: float | None = None,
    switches: AttentionSwitches = AttentionSwitches(),
    backward: str = "mitchell",
    correction: str | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q Kᵀ s + mask) V`` with the parts chosen by ``switches`` as Mitchell products.

    Args:
        query, key, value: ``(..., T_q, d)``, ``(..., T_k, d)``, ``(..., T_k, d_v)`` (the leading
            dimensions broadcast; repeat grouped key/value heads before calling).
        mask: additive mask broadcastable to ``(..., T_q, T_k)`` (0 where allowed, a large
            negative number where not), as transformers' eager attention uses.
        scaling: ``s``; default ``1/√d``.
        switches, backward, correction: see the module docstring.
        dropout, training: dropout on the probabilities (training only).

    Returns:
        ``(output (..., T_q, d_v), probabilities (..., T_q, T_k))``.
    """
    s = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling)
    if switches.scores:
        scores = mul(
            bmm(query, key.transpose(-1, -2), backward=backward, correction=correction),
            s,
            backward=backward,
            correction=correction,
        )
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * s
    if mask is not None:
        scores = scores + mask
    probs = mitchell_softmax(
        scores.float(),
        exponentials=switches.softmax,
        normalise=switches.normalise,
        backward=backward,
        correction=correction,
    ).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    out = bmm(probs, value, backward=backward, correction=correction) if switches.values else torch.matmul(probs, value)
    return out, probs


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, H_kv, T, d)`` → ``(B, H_kv · groups, T, d)``: each key/value head serves ``groups`` query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def mitchell_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers ``AttentionInterface`` entry (``query`` ``(B, H, T, d)``; returns ``(B, T, H, d)``).

    A module carrying ``_kexue_mitchell`` (set by ``mitchellize``) runs :func:`mitchell_attention`
    with its switches; any other runs transformers' exact SDPA attention. Under
    :func:`~kexue.mitchell.nn.track_errors` the module records the relative error of its output
    against exact eager attention on the same ``query``, ``key`` and ``value``.
    """
    options = getattr(module, "_kexue_mitchell", None)
    if options is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    switches, backward, correction = options
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    out, probs = mitchell_attention(
        query,
        key,
        value,
        mask=mask,
        scaling=scaling,
        switches=switches,
        backward=backward,
        correction=correction,
        dropout=dropout,
        training=module.training,
    )
    errors = getattr(module, "_errors", None)
    if errors is not None:
        with torch.no_grad():
            exact, _ = mitchell_attention(
                query, key, value, mask=mask, scaling=scaling, switches=AttentionSwitches(False, False, False, False)
            )
            errors[module._name + ".core"].append(float((out.detach() - exact).norm() / exact.norm().clamp(min=1e-30)))
    return out.transpose(1, 2).contiguous(), probs


def register_hf_attention() -> None:
    """Register :func:`mitchell_attention_forward` (and eager's float mask) with transformers under :data:`ATTENTION_KEY`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_KEY, mitchell_attention_forward)
    AttentionMaskInterface.register(ATTENTION_KEY, eager_mask)


class _TrackedNorm(nn.Module):
    """Shared: the per-forward error record of :func:`~kexue.mitchell.nn.track_errors`."""

    _errors = None
    _name = ""

    def _record(self, exact_fn, y: torch.Tensor) -> None:
        if self._errors is not None:
            with torch.no_grad():
                exact = exact_fn()
                self._errors[self._name].append(float((y.detach() - exact).norm() / exact.norm().clamp(min=1e-30)))


class MitchellRMSNorm(_TrackedNorm):
    """``y = (x ⊗ r) ⊗ w`` with ``r = 1/√(mean(x ⊗ x) + ε)`` (exact reciprocal square root).

    Holds the weight of the module it replaces (HF ``*RMSNorm``: ``weight``, ``variance_epsilon``
    or ``eps``; ``torch.nn.RMSNorm``). Computed in float32 as transformers' LLaMA norm does.
    """

    def __init__(
        self, weight: nn.Parameter | None, eps: float, *, backward: str = "mitchell", correction: str | None = None
    ) -> None:
        super().__init__()
        _check_backward(backward)
        check_correction(correction)
        self.weight, self.eps, self.backward_mode, self.correction = weight, float(eps), backward, correction

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h.to(x.dtype)
        return h if self.weight is None else self.weight * h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = {"backward": self.backward_mode, "correction": self.correction}
        h = x.float()
        r = torch.rsqrt(mul(h, h, **opts).mean(-1, keepdim=True) + self.eps)
        y = mul(h, r, **opts).to(x.dtype)
        if self.weight is not None:
            y = mul(y, self.weight.to(y.dtype), **opts)
        self._record(lambda: self._exact(x), y)
        return y


class MitchellLayerNorm(_TrackedNorm):
    """``y = ((x − μ) ⊗ r) ⊗ w + b``, ``r = 1/√(mean((x − μ) ⊗ (x − μ)) + ε)``; holds an
    ``nn.LayerNorm``'s parameters (normalising over its last ``normalized_shape`` dimensions)."""

    def __init__(self, norm: nn.LayerNorm, *, backward: str = "mitchell", correction: str | None = None) -> None:
        super().__init__()
        _check_backward(backward)
        check_correction(correction)
        self.normalized_shape, self.eps = tuple(norm.normalized_shape), norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = {"backward": self.backward_mode, "correction": self.correction}
        dims = tuple(range(-len(self.normalized_shape), 0))
        c = x - x.mean(dims, keepdim=True)
        r = torch.rsqrt(mul(c, c, **opts).mean(dims, keepdim=True) + self.eps)
        y = mul(c, r, **opts)
        if (
            self.weight is not None
        ):  # parameters join x's dtype, as nn.LayerNorm's mixed-dtype kernel and CPU autocast do
            y = mul(y, self.weight.to(y.dtype), **opts)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        self._record(lambda: nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), y)
        return y


class MitchellGatedMLP(_TrackedNorm):
    """``down(act(gate(x)) ⊗ up(x))``: a LLaMA-style MLP whose gating product is a Mitchell
    product; holds the original's ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn`` (the
    projections themselves are whatever they are: exact, or Mitchell layers after ``mitchellize``)."""

    def __init__(self, mlp: nn.Module, *, backward: str = "mitchell", correction: str | None = None) -> None:
        super().__init__()
        _check_backward(backward)
        check_correction(correction)
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = (
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
            mlp.act_fn,
        )
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, u = self.act_fn(self.gate_proj(x)), self.up_proj(x)
        h = mul(a, u, backward=self.backward_mode, correction=self.correction)
        if self._errors is not None:  # the gate product's own error, on the same operands
            with torch.no_grad():
                exact = a * u
                self._errors[self._name + ".gate"].append(
                    float((h.detach() - exact).norm() / exact.norm().clamp(min=1e-30))
                )
        return self.down_proj(h)


def is_hf_attention(module: nn.Module) -> bool:
    """A transformers attention module that dispatches through ``AttentionInterface``."""
    config = getattr(module, "config", None)
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and hasattr(module, "scaling")
        and type(module).__name__.endswith("Attention")
    )


def is_gated_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")) and not isinstance(
        module, MitchellGatedMLP
    )


def is_rms_norm(module: nn.Module) -> bool:
    if isinstance(module, nn.RMSNorm):
        return True
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "weight")
        and (hasattr(module, "variance_epsilon") or hasattr(module, "eps"))
    )


def rms_norm_from(module: nn.Module, *, backward: str, correction: str | None) -> MitchellRMSNorm:
    """The Mitchell version of an RMS norm module (same weight, same ε)."""
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(torch.float32).eps
    else:
        eps = getattr(module, "variance_epsilon", None) or module.eps
    if getattr(module, "weight", None) is not None and type(module).__name__.startswith("Gemma"):
        raise ValueError(f"{type(module).__name__} scales by (1 + weight); not supported: skip it by name")
    return MitchellRMSNorm(module.weight, eps, backward=backward, correction=correction)
