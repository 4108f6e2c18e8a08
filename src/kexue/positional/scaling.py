"""RoPE frequency scalings of long-context models, as Hugging Face configs name them.

Every scaling maps the plain ladder ``θ_j = base^(−2j/R)`` (``j = 0 … R/2 − 1``, ``R`` the
rotary dimension) to new inverse frequencies, and some define an *attention factor* ``m``
that multiplies cos and sin (so every query–key logit is scaled by ``m²``). Each is one entry
of :data:`ROPE_TYPES` (the names of ``config.rope_parameters["rope_type"]``), computed here in
float64 (Hugging Face computes in float32):

* ``default``: the ladder.
* ``linear`` (position interpolation, Chen et al. 2023, arXiv 2306.15595): ``θ_j / s``.
* ``dynamic`` (dynamic NTK, bloc97/emozilla 2023): for a current length ``L > L₀`` the base
  becomes ``base · (s L / L₀ − (s − 1))^(R/(R−2))``; at ``L ≤ L₀`` the ladder is unchanged.
  A key cached while the base was ``b₁`` was rotated with ``b₁``'s frequencies: see
  :class:`kexue.positional.rope.RotaryEmbedding` for what kexue does about it.
* ``yarn`` (Peng et al. 2023, arXiv 2309.00071): pairs that turn fewer than ``β_slow`` times
  over the original length ``L₀`` are interpolated (``θ_j / s``), pairs that turn more than
  ``β_fast`` times are kept, and a linear ramp in the pair index blends the two in between
  (the paper's reference code; the paper writes the ramp in ``r = L₀ θ_j / 2π`` itself, which
  gives the same two regions and a different blend inside). The boundaries are the pair
  indices ``j(n) = R ln(L₀ / (2π n)) / (2 ln base)``, rounded outwards unless ``truncate`` is
  false. Attention factor ``0.1 ln s + 1`` (``s > 1``), or with ``mscale``/``mscale_all_dim``
  the ratio ``(0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1)`` (DeepSeek-V2/V3), or
  ``attention_factor`` itself when given.
* ``longrope`` (Ding et al. 2024, arXiv 2402.13753; Phi-3): ``θ_j / λ_j`` with per-pair
  rescale factors, the ``short_factor`` list up to the original length ``L₀`` and the
  ``long_factor`` list beyond; attention factor ``sqrt(1 + ln s / ln L₀)`` for ``s > 1``.
* ``llama3`` (Llama 3.1): with wavelength ``λ_j = 2π / θ_j``, ``θ_j`` is kept where
  ``λ_j < L₀ / high_freq_factor``, divided by ``s`` where ``λ_j > L₀ / low_freq_factor``, and
  blended in between with weight ``w = (L₀ / λ_j − low) / (high − low)``:
  ``(1 − w) θ_j / s + w θ_j``.
* ``proportional`` (Gemma-style partial rotary over the whole head): the first
  ``⌊p D / 2⌋`` pairs of a ``D``-wide head get ``base^(−2j/D)`` (exponents over the *head*
  width, not the rotated width), the rest frequency 0 (they do not rotate); all ``/ s``.

``partial_rotary_factor`` ``p`` (GPT-NeoX, Phi, GLM) makes ``R = ⌊p D⌋`` for every type but
``proportional``.

Example:
    >>> p = rope_parameters("llama3", head_dim=128, base=500000.0, factor=8.0, low_freq_factor=1.0,
    ...                     high_freq_factor=4.0, original_max_position_embeddings=8192)
    >>> p.inv_freq.shape, p.attention_factor
    (torch.Size([64]), 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from kexue._shared import check_choice, check_number

__all__ = [
    "ROPE_TYPES",
    "ROPE_TYPE_NAMES",
    "RopeParameters",
    "RopeType",
    "attention_decay",
    "pair_analysis",
    "rope_parameters",
    "rope_parameters_from_config",
]

_MROPE_FIELDS = ("mrope_section", "mrope_interleaved")  # read by kexue.positional.mrope, not by the scalings

# the rope_type names kexue computes (the keys of ROPE_TYPES, which a user may extend)
RopeType = Literal["default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"]
ROPE_TYPE_NAMES: tuple[RopeType, ...] = get_args(RopeType)


@dataclass(frozen=True)
class RopeParameters:
    """What a scaling produces: float64 inverse frequencies ``(R/2,)`` and the attention factor.

    Args:
        rope_type: the scaling's name (a key of :data:`ROPE_TYPES`).
        inv_freq: float64 inverse frequencies ``(R/2,)``.
        attention_factor: multiplies cos and sin (1 for most scalings).
        head_dim: ``D``, the width of a query/key head.
        base: ``rope_theta``.

    Example:
        >>> p = rope_parameters("linear", head_dim=64, factor=4.0)
        >>> p.rotary_dim, p.attention_factor
        (64, 1.0)
    """

    rope_type: str
    inv_freq: torch.Tensor
    attention_factor: float
    head_dim: int
    base: float

    @property
    def rotary_dim(self) -> int:
        """The rotated width ``R``: twice the number of inverse frequencies."""
        return 2 * int(self.inv_freq.shape[0])


@dataclass(frozen=True)
class _Spec:
    """The checked inputs every scaling reads."""

    head_dim: int
    dim: int  # rotated width R
    base: float
    max_position_embeddings: int | None
    seq_len: int | None
    params: Mapping[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.params.get(name)
        return default if value is None else value

    def require(self, name: str, rope_type: str) -> Any:
        value = self.params.get(name)
        if value is None:
            raise ValueError(f"rope_type={rope_type!r} needs {name!r} in its parameters")
        return value

    def ladder(self, width: int | None = None) -> torch.Tensor:
        """``base^(−2j/width)`` for the ``dim/2`` pairs (``width`` default ``dim``)."""
        j = torch.arange(0, self.dim, 2, dtype=torch.float64)
        return self.base ** (-j / (width or self.dim))

    def factor(self, rope_type: str) -> float:
        """``factor``, else ``max_position_embeddings / original_max_position_embeddings``."""
        factor = self.params.get("factor")
        if factor is None:
            original = self.require("original_max_position_embeddings", rope_type)
            if self.max_position_embeddings is None:
                raise ValueError(f"rope_type={rope_type!r} needs 'factor' or max_position_embeddings")
            factor = self.max_position_embeddings / original
        return check_number(f"{rope_type} factor", factor, above=0)


def _default(spec: _Spec) -> tuple[torch.Tensor, float]:
    return spec.ladder(), 1.0


def _linear(spec: _Spec) -> tuple[torch.Tensor, float]:
    return spec.ladder() / check_number("linear factor", spec.require("factor", "linear"), above=0), 1.0


def _dynamic(spec: _Spec) -> tuple[torch.Tensor, float]:
    factor = check_number("dynamic factor", spec.require("factor", "dynamic"), above=0)
    if spec.max_position_embeddings is None:
        raise ValueError("rope_type='dynamic' needs max_position_embeddings (the trained length L₀)")
    length = max(spec.seq_len or spec.max_position_embeddings, spec.max_position_embeddings)
    if spec.dim <= 2:  # one pair: its frequency base^0 = 1 does not depend on the base
        return spec.ladder(), 1.0
    base = spec.base * (factor * length / spec.max_position_embeddings - (factor - 1)) ** (spec.dim / (spec.dim - 2))
    return _Spec(spec.head_dim, spec.dim, base, spec.max_position_embeddings, None, {}).ladder(), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(spec: _Spec, factor: float) -> float:
    given = spec.params.get("attention_factor")
    if given is not None:
        return check_number("yarn attention_factor", given, above=0)
    mscale, mscale_all_dim = spec.params.get("mscale"), spec.params.get("mscale_all_dim")
    if mscale and mscale_all_dim:  # both set and non-zero, as transformers reads them
        return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return _yarn_mscale(factor)


def _yarn_boundaries(
    spec: _Spec, original: float, beta_fast: float, beta_slow: float, truncate: bool
) -> tuple[float, float]:
    def index(rotations: float) -> float:  # the pair index that turns `rotations` times over `original`
        return spec.dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(spec.base))

    low, high = index(beta_fast), index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, spec.dim - 1)


def _yarn(spec: _Spec) -> tuple[torch.Tensor, float]:
    factor = spec.factor("yarn")
    original = check_number(
        "yarn original_max_position_embeddings", spec.require("original_max_position_embeddings", "yarn"), above=0
    )
    beta_fast = check_number("yarn beta_fast", spec.get("beta_fast", 32.0), above=0)
    beta_slow = check_number("yarn beta_slow", spec.get("beta_slow", 1.0), above=0)
    truncate = spec.params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ValueError(f"yarn truncate must be true or false; got {truncate!r}")
    low, high = _yarn_boundaries(spec, original, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # a one-index ramp: a step, as the reference code makes it
    ramp = ((torch.arange(spec.dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequency, kept), 0: interpolate (θ/s)
    theta = spec.ladder()
    return theta / factor * (1 - keep) + theta * keep, _yarn_attention_factor(spec, factor)


def _longrope(spec: _Spec) -> tuple[torch.Tensor, float]:
    original = spec.require("original_max_position_embeddings", "longrope")
    long = spec.seq_len is not None and spec.seq_len > original
    name = "long_factor" if long else "short_factor"
    rescale = torch.as_tensor(spec.require(name, "longrope"), dtype=torch.float64)
    if rescale.shape != (spec.dim // 2,) or not bool((rescale > 0).all()) or not bool(torch.isfinite(rescale).all()):
        raise ValueError(
            f"longrope {name} must hold {spec.dim // 2} finite numbers > 0 (one per rotated pair); "
            f"got shape {tuple(rescale.shape)}"
        )
    factor = spec.factor("longrope")
    given = spec.params.get("attention_factor")
    if given is not None:
        attention = check_number("longrope attention_factor", given, above=0)
    else:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return spec.ladder() / rescale, attention


def _llama3(spec: _Spec) -> tuple[torch.Tensor, float]:
    factor = check_number("llama3 factor", spec.require("factor", "llama3"), above=0)
    low = check_number("llama3 low_freq_factor", spec.require("low_freq_factor", "llama3"), above=0)
    high = check_number("llama3 high_freq_factor", spec.require("high_freq_factor", "llama3"), above=0)
    if high <= low:
        raise ValueError(f"llama3 high_freq_factor ({high}) must exceed low_freq_factor ({low})")
    original = check_number(
        "llama3 original_max_position_embeddings", spec.require("original_max_position_embeddings", "llama3"), above=0
    )
    theta = spec.ladder()
    wavelength = 2 * math.pi / theta
    weight = (original / wavelength - low) / (high - low)
    blended = (1 - weight) * theta / factor + weight * theta
    out = torch.where(wavelength > original / low, theta / factor, theta)
    middle = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(middle, blended, out), 1.0


def _proportional(spec: _Spec) -> tuple[torch.Tensor, float]:
    factor = check_number("proportional factor", spec.get("factor", 1.0), above=0)
    rotated = int(spec.get("partial_rotary_factor", 1.0) * spec.head_dim // 2)
    j = torch.arange(0, spec.head_dim // 2, dtype=torch.float64)
    theta = torch.where(j < rotated, spec.base ** (-2 * j / spec.head_dim), torch.zeros((), dtype=torch.float64))
    return theta / factor, 1.0


# rope_type -> the scaling (its built-in keys are RopeType's names); extend it with a function of the same signature
ROPE_TYPES: dict[str, Callable[[_Spec], tuple[torch.Tensor, float]]] = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "longrope": _longrope,
    "llama3": _llama3,
    "proportional": _proportional,
}


def rope_parameters(
    rope_type: RopeType = "default",
    *,
    head_dim: int,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
    **params: Any,
) -> RopeParameters:
    """The inverse frequencies and attention factor of one scaling (see the module docstring).

    Args:
        rope_type: a key of :data:`ROPE_TYPES`: :data:`RopeType`'s names, and at run time any a user
            registered there.
        head_dim: ``D``, the width of a query/key head.
        base: ``rope_theta``.
        partial_rotary_factor: the rotated share ``p`` of the head (``R = ⌊p D⌋``, even).
        max_position_embeddings: the model's length (``dynamic``: the trained length ``L₀``;
            ``yarn``/``longrope``: with ``original_max_position_embeddings`` it gives the
            default ``factor``).
        seq_len: the current length (``dynamic`` and ``longrope`` depend on it).
        **params: the type's own fields, named as in ``config.rope_parameters`` (``factor``,
            ``original_max_position_embeddings``, ``beta_fast``, ``beta_slow``, ``mscale``,
            ``mscale_all_dim``, ``attention_factor``, ``truncate``, ``short_factor``,
            ``long_factor``, ``low_freq_factor``, ``high_freq_factor``).

    Returns:
        The :class:`RopeParameters`.

    Raises:
        ValueError: an unknown type, a missing or invalid field (named), or a rotary width
            that is not an even number >= 2.

    Example:
        >>> rope_parameters("yarn", head_dim=128, factor=4.0, original_max_position_embeddings=4096).attention_factor
        1.138629436111989
    """
    fn = ROPE_TYPES[check_choice("rope_type", rope_type, ROPE_TYPES)]
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim={head_dim!r} must be an even integer >= 2")
    base = check_number("base (rope_theta)", base, above=1)
    share = check_number("partial_rotary_factor", partial_rotary_factor, above=0)
    dim = head_dim if rope_type == "proportional" else int(head_dim * share)
    if dim < 2 or dim % 2 or share > 1:
        raise ValueError(
            f"partial_rotary_factor={partial_rotary_factor!r} gives a rotary width of {dim} of head_dim={head_dim}; "
            "it must be an even number >= 2 and at most head_dim"
        )
    for name, value in (("max_position_embeddings", max_position_embeddings), ("seq_len", seq_len)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer or None")
    if rope_type == "proportional":
        params = {**params, "partial_rotary_factor": share}
    inv_freq, attention = fn(_Spec(head_dim, dim, base, max_position_embeddings, seq_len, params))
    return RopeParameters(rope_type, inv_freq, float(attention), head_dim, base)


_CONFIG_FIELDS = ("rope_type", "rope_theta", "partial_rotary_factor")


def rope_parameters_from_config(
    config: Any, *, seq_len: int | None = None, layer_type: str | None = None
) -> RopeParameters:
    """:func:`rope_parameters` for a transformers config (``rope_parameters`` as transformers 5 standardises it).

    The head width is ``config.head_dim`` where set, else ``hidden_size // num_attention_heads``.

    Args:
        config: a transformers config (or any object with its fields).
        seq_len: the current length (``dynamic`` and ``longrope`` depend on it).
        layer_type: picks one entry where a model keeps one per layer type, e.g. Gemma 3's
            ``"sliding_attention"`` and ``"full_attention"``.

    Returns:
        The :class:`RopeParameters`.

    Raises:
        ValueError: a config without a ``rope_parameters`` mapping, an unknown ``layer_type``, or what
            :func:`rope_parameters` rejects.
    """
    standardize = getattr(config, "standardize_rope_params", None)
    if callable(standardize):
        standardize()
    parameters = getattr(config, "rope_parameters", None)
    if not isinstance(parameters, Mapping):
        raise ValueError(f"{type(config).__name__} has no rope_parameters mapping (is it a RoPE model's config?)")
    if layer_type is not None or "rope_type" not in parameters:
        if layer_type not in parameters:
            raise ValueError(
                f"layer_type={layer_type!r}: this config keeps RoPE parameters for {sorted(parameters)}; "
                "pass one of them"
            )
        parameters = parameters[layer_type]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    extra = {k: v for k, v in parameters.items() if k not in _CONFIG_FIELDS and k not in _MROPE_FIELDS}
    share = parameters.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    return rope_parameters(
        parameters.get("rope_type", "default"),
        head_dim=int(head_dim),
        base=float(parameters["rope_theta"]),
        partial_rotary_factor=1.0 if share is None else float(share),
        max_position_embeddings=getattr(config, "max_position_embeddings", None),
        seq_len=seq_len,
        **extra,
    )


def pair_analysis(params: RopeParameters, context: int) -> dict[str, torch.Tensor]:
    """Per rotary pair ``j`` of a scaling, against the unscaled ladder of the same base and width:

    * ``wavelength``: ``2π / θ'_j`` (positions per turn; ``inf`` for a pair that does not rotate);
    * ``turns``: ``context · θ'_j / 2π``, how many turns the pair makes within ``context``
      positions (below 1: the pair never completes a turn, so a model trained on ``context``
      tokens has not seen its whole circle);
    * ``ratio``: ``θ'_j / θ_j`` (1: kept, ``1/s``: interpolated; YaRN's ramp and Llama 3's band
      lie between).

    Args:
        params: a scaling's parameters (:func:`rope_parameters`).
        context: the length the turns are counted over.

    Returns:
        The three float64 ``(R/2,)`` tensors by name.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context={context!r} must be a positive integer")
    theta = params.inv_freq
    plain = params.base ** (
        -torch.arange(0, params.rotary_dim, 2, dtype=torch.float64)
        / (params.head_dim if params.rope_type == "proportional" else params.rotary_dim)
    )
    wavelength = torch.where(theta > 0, 2 * math.pi / theta.clamp_min(1e-300), torch.full_like(theta, math.inf))
    return {"wavelength": wavelength, "turns": context * theta / (2 * math.pi), "ratio": theta / plain}


def attention_decay(inv_freq: torch.Tensor, distances: Any) -> torch.Tensor:
    """The RoPE article's long-range bound, for any frequencies: ``(2/R) Σ_j |S_j(Δ)|`` with
    ``S_j(Δ) = Σ_{k<j} e^{iΔθ_k}``.

    By Abel summation, ``|Σ_j h_j e^{iΔθ_j}| ≤ max_j |h_{j+1} − h_j| · Σ_j |S_j(Δ)|`` for any
    query-key products ``h_j``: this is the factor that decays with the relative distance ``Δ``
    (Su et al., RoFormer, §3.4.3; kexue.fm/archives/8265).

    Args:
        inv_freq: the frequencies ``θ_j`` (any shape, flattened).
        distances: relative distances ``Δ`` (a tensor, array or number).

    Returns:
        float64, the shape of ``distances``.
    """
    theta = torch.as_tensor(inv_freq, dtype=torch.float64).reshape(-1)
    delta = torch.as_tensor(distances, dtype=torch.float64)
    phase = delta.reshape(-1, 1) * theta  # (N, R/2)
    partial = torch.cumsum(torch.polar(torch.ones_like(phase), phase), dim=1)  # S_1 … S_{R/2}
    return (partial.abs().sum(dim=1) / theta.numel()).reshape(delta.shape)
