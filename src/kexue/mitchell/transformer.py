"""Mitchell products inside a Transformer: attention, normalisation, gating, each behind a switch.

A Transformer multiplies in more places than its linear layers. This module gives each of them a
Mitchell version that :func:`kexue.mitchell.nn.mitchellize` can switch on or off:

* attention (:func:`attention`), with :class:`AttentionSwitches`:

  - ``scores``: ``S = (Q ⊗ Kᵀ) ⊗ s`` by :func:`~kexue.mitchell.matrix.bmm`, ``s`` the
    ``1/√d`` scaling (a power of two for ``d = 4^j``: then exact anyway);
  - ``softmax``: ``exp(z) = 2^(z log₂e)`` with the product ``z ⊗ log₂e`` and Mitchell's
    antilogarithm :func:`~kexue.mitchell.ops.exp2`, ``2^(n + x) ≈ 2^n (1 + x)`` (never
    below the exact value, at most 6.15 % above it: ``max (1 + x) / 2^x = 2 / (e ln 2) ≈ 1.0615``
    at ``x = 1/ln 2 − 1``);
  - ``normalise``: the division by the row sum by :func:`~kexue.mitchell.ops.div`
    (then rows no longer sum to exactly 1; off by default);
  - ``values``: ``O = P ⊗ V`` by :func:`~kexue.mitchell.matrix.bmm`;

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

HF models. :func:`attention_forward` has the signature of transformers'
``AttentionInterface`` and is registered under :data:`ATTENTION_KEY` (with the additive float
mask of eager attention); a module that :func:`~kexue.mitchell.nn.mitchellize` did not switch
runs transformers' exact SDPA attention, so models with skipped layers stay correct.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from kexue._shared import check_choice
from kexue.mitchell import matrix, ops
from kexue.mitchell.correction import Correction, check_correction

__all__ = [
    "ATTENTION_KEY",
    "PART_BACKWARDS",
    "AttentionSwitches",
    "MitchellGatedMLP",
    "MitchellLayerNorm",
    "MitchellRMSNorm",
    "PartBackward",
    "attention",
    "attention_forward",
    "bmm",
    "mul",
    "register_hf_attention",
    "softmax",
]

ATTENTION_KEY = "kexue_mitchell"
PartBackward = Literal["mitchell", "exact"]
PART_BACKWARDS: tuple[PartBackward, ...] = get_args(PartBackward)
_LOG2E = math.log2(math.e)
# torch types autograd.Function.forward/backward as (ctx, *args: Any): the typed overrides below are narrower


def _check_backward(backward: PartBackward) -> None:
    check_choice("backward", backward, PART_BACKWARDS)


def _relative_error(y: torch.Tensor, exact: torch.Tensor) -> float:
    """``‖y − exact‖ / ‖exact‖`` (0/0 counts as 0), as a Python float."""
    return float((y.detach() - exact).norm() / exact.norm().clamp(min=1e-30))


def _reduce_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    return g.sum_to_size(shape) if g.shape != shape else g


class _Mul(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, backward: PartBackward, correction: Correction | None
    ) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.backward_mode, ctx.correction = backward, correction
        return ops.mul(a, b, correction=correction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        a, b = ctx.saved_tensors
        prod: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            (lambda x, y: ops.mul(x, y, correction=ctx.correction)) if ctx.backward_mode == "mitchell" else torch.mul
        )
        ga = _reduce_to(prod(g, b.expand_as(g)), a.shape) if ctx.needs_input_grad[0] else None
        gb = _reduce_to(prod(g, a.expand_as(g)), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def mul(
    a: torch.Tensor,
    b: torch.Tensor | float,
    *,
    backward: PartBackward = "mitchell",
    correction: Correction | None = None,
) -> torch.Tensor:
    """Differentiable element-wise Mitchell product (broadcasting; ``b`` may be a Python number).

    Args:
        a: a tensor.
        b: a tensor of ``a``'s dtype, or a number (filled on ``a``'s device).
        backward: ``"mitchell"`` (the gradient products are Mitchell products too) or ``"exact"``.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.

    Returns:
        ``a ⊗ b``, differentiable in both.
    """
    _check_backward(backward)
    check_correction(correction)
    if not isinstance(b, torch.Tensor):
        b = torch.full((), float(b), dtype=a.dtype, device=a.device)  # filled on the device: no host-to-device copy
    out: torch.Tensor = _Mul.apply(a, b, backward, correction)
    return out


class _Bmm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, backward: PartBackward, correction: Correction | None
    ) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.backward_mode, ctx.correction = backward, correction
        return matrix.bmm(a, b, correction=correction)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        a, b = ctx.saved_tensors
        prod: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if ctx.backward_mode == "mitchell":
            prod = lambda x, y: matrix.bmm(x.contiguous(), y.contiguous(), correction=ctx.correction)  # noqa: E731
        else:
            prod = torch.matmul
        ga = _reduce_to(prod(g, b.transpose(-1, -2)), a.shape) if ctx.needs_input_grad[0] else None
        gb = _reduce_to(prod(a.transpose(-1, -2), g), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


def bmm(
    a: torch.Tensor, b: torch.Tensor, *, backward: PartBackward = "mitchell", correction: Correction | None = None
) -> torch.Tensor:
    """Differentiable :func:`~kexue.mitchell.matrix.bmm` (gradients ``g ⊗ bᵀ``, ``aᵀ ⊗ g``).

    Args:
        a: ``(..., M, K)``.
        b: ``(..., K, N)``, of ``a``'s dtype.
        backward: ``"mitchell"`` or ``"exact"``.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.

    Returns:
        ``(..., M, N)``.
    """
    _check_backward(backward)
    check_correction(correction)
    out: torch.Tensor = _Bmm.apply(a, b, backward, correction)
    return out


class _Exp2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        out = ops.exp2(y)
        ctx.save_for_backward(y)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        slope = torch.exp2(torch.floor(y))  # d/dy 2^n (1 + y - n) = 2^n, n = floor(y); 0 at -inf
        return g * torch.where(torch.isfinite(y), slope, torch.zeros_like(slope))


def softmax(
    x: torch.Tensor,
    *,
    dim: int = -1,
    exponentials: bool = True,
    normalise: bool = False,
    backward: PartBackward = "mitchell",
    correction: Correction | None = None,
) -> torch.Tensor:
    """Softmax with Mitchell arithmetic: ``e_i = 2^((x_i − max) ⊗ log₂e)`` by :func:`~kexue.mitchell.ops.exp2`
    (``exponentials``), then ``e_i / Σ e_j`` (by :func:`~kexue.mitchell.ops.div` when ``normalise``).

    With both switches off it is the exact softmax (``torch.softmax``). The subtraction of the
    maximum is exact, so the largest entry's exponential is exactly 1.

    Args:
        x: the logits.
        dim: the dimension that sums to 1.
        exponentials: compute the exponentials with Mitchell's antilogarithm.
        normalise: divide by the sum with Mitchell's quotient (then rows no longer sum to exactly 1).
        backward: ``"mitchell"`` or ``"exact"`` (the gradient products).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.

    Returns:
        The probabilities, of ``x``'s shape and dtype.

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> mitchell.softmax(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    _check_backward(backward)
    z = x - x.amax(dim=dim, keepdim=True).detach()
    if exponentials:
        e: torch.Tensor = _Exp2.apply(mul(z, _LOG2E, backward=backward, correction=correction))
    else:
        e = torch.exp(z)
    total = e.sum(dim=dim, keepdim=True)
    if normalise:
        out: torch.Tensor = _Div.apply(e, total)
        return out
    return e / total


class _Div(torch.autograd.Function):
    """Mitchell quotient, with the exact quotient's gradient (straight-through)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return ops.div(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        return _reduce_to(g / b, a.shape), _reduce_to(-g * a / (b * b), b.shape)


@dataclass(frozen=True, kw_only=True)
class AttentionSwitches:
    """Which products of attention are Mitchell products (module docstring); all off = exact.

    Args:
        scores: ``(Q ⊗ Kᵀ) ⊗ s``.
        softmax: the softmax's exponentials by Mitchell's antilogarithm.
        values: ``P ⊗ V``.
        normalise: the division by the row sum by Mitchell's quotient.

    Example:
        >>> from kexue import mitchell
        >>> mitchell.AttentionSwitches(softmax=False)
        AttentionSwitches(scores=True, softmax=False, values=True, normalise=False)
    """

    scores: bool = True
    softmax: bool = True
    values: bool = True
    normalise: bool = False

    @classmethod
    def coerce(cls, value: bool | AttentionSwitches) -> AttentionSwitches | None:
        """``True`` → the defaults, ``False`` → None (attention untouched), a switches object → itself.

        Args:
            value: what ``mitchellize(attention=...)`` was given.

        Returns:
            The switches, or None for attention left exact.
        """
        if isinstance(value, AttentionSwitches):
            return value
        if value is True:
            return cls()
        if value is False:
            return None
        raise TypeError(f"attention must be a bool or AttentionSwitches; got {type(value).__name__}")


_EXACT = AttentionSwitches(scores=False, softmax=False, values=False, normalise=False)


def _scores(
    query: torch.Tensor,
    key: torch.Tensor,
    s: float,
    switches: AttentionSwitches,
    backward: PartBackward,
    correction: Correction | None,
) -> torch.Tensor:
    """``(Q Kᵀ) s``: Mitchell products when ``switches.scores``."""
    if not switches.scores:
        return torch.matmul(query, key.transpose(-1, -2)) * s
    qk = bmm(query, key.transpose(-1, -2), backward=backward, correction=correction)
    return mul(qk, s, backward=backward, correction=correction)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scaling: float | None = None,
    switches: AttentionSwitches = AttentionSwitches(),
    backward: PartBackward = "mitchell",
    correction: Correction | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q Kᵀ s + mask) V`` with the parts chosen by ``switches`` as Mitchell products.

    Args:
        query: ``(..., T_q, d)``.
        key: ``(..., T_k, d)``.
        value: ``(..., T_k, d_v)`` (the leading dimensions of the three broadcast; repeat grouped
            key/value heads before calling).
        mask: additive mask broadcastable to ``(..., T_q, T_k)`` (0 where allowed, a large
            negative number where not), as transformers' eager attention uses.
        scaling: ``s``; default ``1/√d``.
        switches: which parts are Mitchell products (:class:`AttentionSwitches`).
        backward: ``"mitchell"`` or ``"exact"`` (the gradient products).
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
        dropout: dropout probability on the probabilities (applied when ``training``).
        training: whether dropout applies.

    Returns:
        ``(output (..., T_q, d_v), probabilities (..., T_q, T_k))``.

    Example:
        >>> import torch
        >>> from kexue import mitchell
        >>> q = k = v = torch.ones(1, 2, 3, 4)  # (B, H, T, d)
        >>> out, probs = mitchell.attention(q, k, v)
        >>> out.shape, probs[0, 0, 0]
        (torch.Size([1, 2, 3, 4]), tensor([0.3333, 0.3333, 0.3333]))
    """
    s = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling)
    scores = _scores(query, key, s, switches, backward, correction)
    if mask is not None:
        scores = scores + mask
    probs = softmax(
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


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers ``AttentionInterface`` entry (``query`` ``(B, H, T, d)``; returns ``(B, T, H, d)``).

    A module carrying ``_kexue_mitchell`` (set by ``mitchellize``) runs :func:`attention`
    with its switches; any other runs transformers' exact SDPA attention. Under
    :func:`~kexue.mitchell.nn.track_errors` the module records the relative error of its output
    against exact eager attention on the same ``query``, ``key`` and ``value``. The signature is
    transformers' (positional ``attention_mask``, ``scaling`` and ``dropout``), so it stays as it is.

    Args:
        module: the attention module calling.
        query: ``(B, H, T_q, d)``.
        key: ``(B, H_kv, T_k, d)``.
        value: ``(B, H_kv, T_k, d_v)``.
        attention_mask: the additive float mask of eager attention, or None.
        scaling: ``s``; default ``1/√d``.
        dropout: dropout probability on the probabilities (in training).
        **kwargs: transformers' other arguments (passed to SDPA attention for unswitched modules).

    Returns:
        ``(output (B, T_q, H, d_v), probabilities or None)``.
    """
    options = getattr(module, "_kexue_mitchell", None)
    if options is None:
        # optional extra: nlp (only HF models reach this function)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out_sdpa: tuple[torch.Tensor, torch.Tensor | None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return out_sdpa
    switches, backward, correction = options
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    out, probs = attention(
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
            exact, _ = attention(query, key, value, mask=mask, scaling=scaling, switches=_EXACT)
            errors[getattr(module, "_name", "") + ".core"].append(_relative_error(out, exact))
    return out.transpose(1, 2).contiguous(), probs


def register_hf_attention() -> None:
    """Register :func:`attention_forward` (and eager's float mask) with transformers under :data:`ATTENTION_KEY`."""
    from transformers import AttentionInterface  # optional extra: nlp (attention=... is for HF models)
    from transformers.masking_utils import AttentionMaskInterface, eager_mask  # optional extra: nlp

    AttentionInterface.register(ATTENTION_KEY, attention_forward)
    AttentionMaskInterface.register(ATTENTION_KEY, eager_mask)


class _TrackedNorm(nn.Module):
    """Shared: the per-forward error record of :func:`~kexue.mitchell.nn.track_errors`."""

    _errors: dict[str, list[float]] | None = None
    _name: str = ""

    def _record(self, exact_fn: Callable[[], torch.Tensor], y: torch.Tensor) -> None:
        if self._errors is not None:
            with torch.no_grad():
                self._errors[self._name].append(_relative_error(y, exact_fn()))


class MitchellRMSNorm(_TrackedNorm):
    """``y = (x ⊗ r) ⊗ w`` with ``r = 1/√(mean(x ⊗ x) + ε)`` (exact reciprocal square root).

    Holds the weight of the module it replaces (HF ``*RMSNorm``: ``weight``, ``variance_epsilon``
    or ``eps``; ``torch.nn.RMSNorm``). Computed in float32 as transformers' LLaMA norm does.

    Args:
        weight: the scale ``w`` (shared with the module replaced), or None.
        eps: ``ε``.
        backward: ``"mitchell"`` or ``"exact"``.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
    """

    weight: nn.Parameter | None
    eps: float
    backward_mode: PartBackward
    correction: Correction | None

    def __init__(
        self,
        weight: nn.Parameter | None,
        eps: float,
        *,
        backward: PartBackward = "mitchell",
        correction: Correction | None = None,
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
        """The normalised ``x`` (``(..., d)``), in ``x``'s dtype."""
        backward, correction = self.backward_mode, self.correction
        h = x.float()
        r = torch.rsqrt(mul(h, h, backward=backward, correction=correction).mean(-1, keepdim=True) + self.eps)
        y = mul(h, r, backward=backward, correction=correction).to(x.dtype)
        if self.weight is not None:
            y = mul(y, self.weight.to(y.dtype), backward=backward, correction=correction)
        self._record(lambda: self._exact(x), y)
        return y


class MitchellLayerNorm(_TrackedNorm):
    """``y = ((x − μ) ⊗ r) ⊗ w + b``, ``r = 1/√(mean((x − μ) ⊗ (x − μ)) + ε)``; holds an
    ``nn.LayerNorm``'s parameters (normalising over its last ``normalized_shape`` dimensions).

    Args:
        norm: the ``nn.LayerNorm`` replaced (its parameters are shared, not copied).
        backward: ``"mitchell"`` or ``"exact"``.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
    """

    normalized_shape: tuple[int, ...]
    eps: float
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    backward_mode: PartBackward
    correction: Correction | None

    def __init__(
        self, norm: nn.LayerNorm, *, backward: PartBackward = "mitchell", correction: Correction | None = None
    ) -> None:
        super().__init__()
        _check_backward(backward)
        check_correction(correction)
        self.normalized_shape, self.eps = tuple(norm.normalized_shape), norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised ``x``, in ``x``'s dtype."""
        backward, correction = self.backward_mode, self.correction
        dims = tuple(range(-len(self.normalized_shape), 0))
        c = x - x.mean(dims, keepdim=True)
        r = torch.rsqrt(mul(c, c, backward=backward, correction=correction).mean(dims, keepdim=True) + self.eps)
        y = mul(c, r, backward=backward, correction=correction)
        if self.weight is not None:  # parameters join x's dtype, as nn.LayerNorm's mixed-dtype kernel and CPU autocast
            y = mul(y, self.weight.to(y.dtype), backward=backward, correction=correction)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        self._record(lambda: nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), y)
        return y


def _part(module: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module.<name>``: a submodule (or the activation function) of a gated MLP."""
    part: Callable[[torch.Tensor], torch.Tensor] = getattr(module, name)
    return part


class MitchellGatedMLP(_TrackedNorm):
    """``down(act(gate(x)) ⊗ up(x))``: a LLaMA-style MLP whose gating product is a Mitchell
    product; holds the original's ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn`` (the
    projections themselves are whatever they are: exact, or Mitchell layers after ``mitchellize``).

    Args:
        mlp: the MLP replaced (its submodules are shared).
        backward: ``"mitchell"`` or ``"exact"``.
        correction: ``None``, ``"constant"``, ``"piecewise"`` or ``"lmul"``.
    """

    gate_proj: Callable[[torch.Tensor], torch.Tensor]
    up_proj: Callable[[torch.Tensor], torch.Tensor]
    down_proj: Callable[[torch.Tensor], torch.Tensor]
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    backward_mode: PartBackward
    correction: Correction | None

    def __init__(
        self, mlp: nn.Module, *, backward: PartBackward = "mitchell", correction: Correction | None = None
    ) -> None:
        super().__init__()
        _check_backward(backward)
        check_correction(correction)
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = (
            _part(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")
        )
        self.backward_mode, self.correction = backward, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's output for ``x`` (``(..., d)``)."""
        a, u = self.act_fn(self.gate_proj(x)), self.up_proj(x)
        h = mul(a, u, backward=self.backward_mode, correction=self.correction)
        if self._errors is not None:  # the gate product's own error, on the same operands
            with torch.no_grad():
                self._errors[self._name + ".gate"].append(_relative_error(h, a * u))
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
    """A LLaMA-style gated MLP (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``) not yet swapped."""
    return all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")) and not isinstance(
        module, MitchellGatedMLP
    )


def is_rms_norm(module: nn.Module) -> bool:
    """``nn.RMSNorm`` or an HF ``*RMSNorm`` (a ``weight`` and a ``variance_epsilon`` or ``eps``)."""
    if isinstance(module, nn.RMSNorm):
        return True
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "weight")
        and (hasattr(module, "variance_epsilon") or hasattr(module, "eps"))
    )


def rms_norm_from(module: nn.Module, *, backward: PartBackward, correction: Correction | None) -> MitchellRMSNorm:
    """The Mitchell version of an RMS norm module (same weight, same ε)."""
    eps: float
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(torch.float32).eps
    else:  # HF: variance_epsilon (LLaMA and most) or eps
        raw = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None)
        if raw is None:
            raise ValueError(f"{type(module).__name__} has neither a variance_epsilon nor an eps")
        eps = raw
    weight: nn.Parameter | None = getattr(module, "weight", None)
    if weight is not None and type(module).__name__.startswith("Gemma"):
        raise ValueError(f"{type(module).__name__} scales by (1 + weight); not supported: skip it by name")
    return MitchellRMSNorm(weight, eps, backward=backward, correction=correction)
