"""Function-preserving widening of HuggingFace Transformers (kexue.fm/archives/8444).

The residual stream ``h`` (hidden size ``d``) of the grown model carries ``rep(h)/√k``: every
coordinate repeated ``k`` times *locally* (``h1 h1 h2 h2 ...``), divided by ``√k``, an isometry.
Each weight is mapped so that every module sees and produces that form:

=====================  ===========================================  ==========================
module                 weight (torch ``(out, in)`` layout)          bias
=====================  ===========================================  ==========================
embeddings             rep columns / √k                              —
LayerNorm / RMSNorm    γ: rep / √k, and ``eps / k``                  β: rep / √k
q, k (``head_dim``)    rep both / k · k^(1/4)                        rep / √k · k^(1/4)
v (``head_dim``)       rep both / k                                  rep / √k
q, k, v (``heads``)    copies of every head (tiled rows), rep in / √k  tiled
o (``head_dim``)       rep both / k                                  rep / √k
o (``heads``)          rep rows, tiled columns / (k √k)              rep / √k
FFN in (up, gate)      rep both / √k (the activation sees the old    rep (no division)
                       pre-activations, repeated: exact for GeLU,
                       SiLU, SwiGLU)
FFN out (down)         rep both / (k √k)                             rep / √k  (article: b / k)
untied LM head         rep columns / √k                              unchanged
MoE router             rep columns / √k (logits kept)                —
=====================  ===========================================  ==========================

Families whose modules fix something the table assumes free get their own derivation, in
their map's docstring: Gemma 1-3 (:func:`_gemma`: ``√d`` inside the embedding, ``1 + w``
norms, a tied head that the embedding's map would otherwise get wrong), OPT (:func:`_opt`:
LayerNorm ``eps`` fixed in the modules, so the stream is ``rep(h)`` undivided, and the tied
head's ``1/k`` goes to whatever produces its input), Mixtral (:func:`_mixtral`).

Two ways to widen attention: ``mode="head_dim"`` is the article's (same heads, each ``k`` times
wider; the ``k^(1/4)`` on q and k restores the ``1/√head_dim`` scale; NOT exact under RoPE,
whose frequencies depend on the head dimension), ``mode="heads"`` keeps the head dimension and
adds ``k - 1`` copies of every head (and of every key/value head under grouped-query
attention), which is exact with RoPE too.

The second feed-forward bias: the article's table prints ``b2 / 2`` for ``k = 2``; working the
block through gives ``rep(b2) / √k`` (the output must be ``rep(y)/√k`` and the bias is added
once per output coordinate). The float64 tests and ``kexue reproduce growth`` decide: ``/√k``
is exact, ``/k`` is not.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from transformers import PretrainedConfig

from kexue._shared import check_choice, check_int, check_module, num_layers
from kexue.growth._build import ModelT, build, check_noise, hf_config, probing, zero_sum_noise

__all__ = ["MODES", "SUPPORTED", "FfnOutBiasDivisor", "Mode", "widen", "widen_ffn"]

# the widening's way with attention: copy heads (exact with RoPE) or widen each head (the article's)
Mode = Literal["heads", "head_dim"]
# what the feed-forward output bias is divided by: √k (derived, exact) or k (the article's printed table)
FfnOutBiasDivisor = Literal["sqrt_k", "k"]
StateDict = dict[str, torch.Tensor]

SUPPORTED = (
    "bert",
    "gpt2",
    "llama",
    "qwen2",
    "mistral",
    "qwen3",
    "olmo2",
    "phi3",
    "gpt_neox",
    "gemma",
    "gemma2",
    "gemma3_text",
    "opt",
    "mixtral",
    "qwen3_moe",
)
MODES: tuple[Mode, ...] = get_args(Mode)
FFN_OUT_BIAS_DIVISORS: tuple[FfnOutBiasDivisor, ...] = get_args(FfnOutBiasDivisor)
_UNDIVIDED = ("opt",)  # families grown in the undivided stream form rep(h) (LayerNorm eps fixed in the modules)


def _rep(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return t.repeat_interleave(k, dim=dim)


def _tile(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return torch.cat([t] * k, dim=dim)


def _spread(w: torch.Tensor, k: int, rows: str | None = None, cols: str | None = None) -> torch.Tensor:
    """A 2-D weight with its rows and/or columns repeated locally (``"rep"``: ``a a b b``) or
    tiled (``"tile"``: ``a b a b``) ``k`` times, in ONE new allocation (a broadcast view copied
    once), so that the caller scales it in place: growing a large checkpoint then holds no
    temporaries the size of its largest matrices (``kexue bench growth``'s memory bound)."""
    shape: list[int] = []
    expanded: list[int] = []
    for n, how in zip(w.shape, (rows, cols), strict=True):
        shape += {"rep": [n, 1], "tile": [1, n], None: [n]}[how]
        expanded += {"rep": [n, k], "tile": [k, n], None: [n]}[how]
    out = (w.shape[0] * (k if rows else 1), w.shape[1] * (k if cols else 1))
    return w.reshape(shape).expand(expanded).reshape(out)


class _Maps:
    """The per-role maps for factor ``k`` (weights in ``(out, in)`` layout).

    With ``noise > 0`` every weight that reads the (duplicated) residual stream or duplicated
    units gets zero-sum noise across each group of duplicated input columns: the function is
    unchanged, the copies' gradients are not (symmetry breaking).

    Every rule is written for a stream ``rep(h)/σ``: ``σ = √k`` (the article's, the default) or
    ``σ = 1`` (``divided=False``). A weight with repeated columns reading ``rep(x)/σ`` sums
    ``k`` equal terms, so it yields ``(k/σ) W x``: a rule's scale is whatever turns that into
    the form its output needs (e.g. ``σ/k`` for an output that must be the old one, ``1/k``
    for one that must be ``rep(·)/σ`` again). For ``σ = √k`` these are the table's entries.
    """

    def __init__(
        self,
        k: int,
        mode: Mode,
        *,
        keep_preactivations: bool = True,
        ffn_out_bias_divisor: FfnOutBiasDivisor = "sqrt_k",
        noise: float = 0.0,
        generator: torch.Generator | None = None,
        divided: bool = True,
    ) -> None:
        self.k, self.mode = k, mode
        self.keep_preactivations, self.ffn_out_bias_divisor = keep_preactivations, ffn_out_bias_divisor
        self.sqrt_k = math.sqrt(k)
        self.fourth_root_k = k**0.25  # restores the 1/√head_dim scale of head_dim-widened q and k
        self.divided = divided
        self.noise = noise
        self.generator = generator

    @property
    def sigma(self) -> float:
        """σ, the stream's divisor: ``√k`` (``rep(h)/√k``, the article's isometry), or 1 (``rep(h)``
        undivided: OPT, whose LayerNorm eps is fixed in the modules; rep keeps the variance)."""
        return self.sqrt_k if self.divided else 1.0

    def _noisy(self, w: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        if not self.noise:
            return w
        n = w.shape[1]
        index = torch.arange(n) % (n // self.k) if tiled else torch.arange(n) // self.k
        return zero_sum_noise(w, index, self.noise, self.generator)

    # residual-stream vectors and norms
    def stream(self, t: torch.Tensor) -> torch.Tensor:  # (…, d) -> (…, k d)
        return _rep(t, -1, self.k) / self.sigma

    def embedding(self, w: torch.Tensor) -> torch.Tensor:  # (V, d)
        return _spread(w, self.k, cols="rep").div_(self.sigma)

    def lm_head(self, w: torch.Tensor) -> torch.Tensor:  # (V, d), untied; any reader whose output keeps its size
        return self._noisy(_spread(w, self.k, cols="rep").mul_(self.sigma / self.k))

    # attention
    def qk(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return self._noisy(_spread(w, k, "tile", "rep").mul_(self.sigma / k)), None if b is None else _tile(b, 0, k)
        # output rep(q) k^(-1/4): the scores gain k (the repeated sum) over √k (the wider 1/√head_dim)
        return (
            self._noisy(_spread(w, k, "rep", "rep").mul_(self.sigma / k).div_(self.fourth_root_k)),
            None if b is None else _rep(b, 0, k) / self.fourth_root_k,
        )

    def v(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return self._noisy(_spread(w, k, "tile", "rep").mul_(self.sigma / k)), None if b is None else _tile(b, 0, k)
        return self._noisy(_spread(w, k, "rep", "rep").div_(k)), None if b is None else _rep(b, 0, k) / self.sigma

    def o(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        bias = None if b is None else _rep(b, 0, k) / self.sigma
        if self.mode == "heads":  # input: k copies of all heads, side by side (tiled)
            return self._noisy(_spread(w, k, "rep", "tile").div_(k * self.sigma), tiled=True), bias
        return self._noisy(_spread(w, k, "rep", "rep").div_(k)), bias

    # feed-forward
    def ffn_in(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if not self.keep_preactivations:  # the plain linear-layer rule: exact only for homogeneous activations
            return self._noisy(_spread(w, k, "rep", "rep").div_(k)), None if b is None else _rep(b, 0, k) / self.sigma
        return self._noisy(_spread(w, k, "rep", "rep").mul_(self.sigma / k)), None if b is None else _rep(b, 0, k)

    def ffn_out(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        scale = k if not self.keep_preactivations else k * self.sigma
        bias = None if b is None else _rep(b, 0, k) / (self.sigma if self.ffn_out_bias_divisor == "sqrt_k" else k)
        return self._noisy(_spread(w, k, "rep", "rep").div_(scale)), bias


def _linear(maps_fn: _Role, sd: StateDict, prefix: str, new: StateDict, conv1d: bool = False) -> None:
    """Map ``prefix.weight`` / ``prefix.bias`` (HF Conv1D stores ``(in, out)``: transposed)."""
    w = sd[prefix + ".weight"]
    b = sd.get(prefix + ".bias")
    w2, b2 = maps_fn(w.T if conv1d else w, b)
    new[prefix + ".weight"] = (w2.T if conv1d else w2).contiguous()
    if b2 is not None:  # a role maps a bias exactly when there is one
        new[prefix + ".bias"] = b2


def _norm(m: _Maps, sd: StateDict, prefix: str, new: StateDict) -> None:
    new[prefix + ".weight"] = m.stream(sd[prefix + ".weight"])
    if prefix + ".bias" in sd:
        new[prefix + ".bias"] = m.stream(sd[prefix + ".bias"])


# one role's map of a linear layer: (weight, bias) -> (grown weight, grown bias)
_Role = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]
# prefix, attention (q, k, v, o) or None, feed-forward inputs, feed-forward output or None, width field
_Layout = tuple[str, tuple[str, str, str, str] | None, tuple[str, ...], str | None, str]

# The linear layers of block i, per family: prefix ("{base}" is "bert." for BERT with a head),
# attention (q, k, v, o; None: GPT-2's fused c_attn, handled in _gpt2), feed-forward inputs
# (rows = units: up, and gate for SwiGLU), feed-forward output, and the config field of the
# feed-forward width.
_LAYOUT: dict[str, _Layout] = {
    "llama": (
        "model.layers.{i}.",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj",
        "intermediate_size",
    ),
    "gpt2": ("transformer.h.{i}.", None, ("mlp.c_fc",), "mlp.c_proj", "n_inner"),
    "bert": (
        "{base}encoder.layer.{i}.",
        ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
        ("intermediate.dense",),
        "output.dense",
        "intermediate_size",
    ),
}
_LAYOUT["qwen2"] = _LAYOUT["mistral"] = _LAYOUT["qwen3"] = _LAYOUT["olmo2"] = _LAYOUT["llama"]
# Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj (handled in _phi3 and widen_ffn)
_LAYOUT["phi3"] = ("model.layers.{i}.", None, (), "mlp.down_proj", "intermediate_size")
_FUSED_FFN_IN = {"phi3": "mlp.gate_up_proj"}  # rows: [gate units; up units]
# GPT-NeoX/Pythia: fused per-head query_key_value (handled in _gpt_neox), GeLU feed-forward
_LAYOUT["gpt_neox"] = ("gpt_neox.layers.{i}.", None, ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size")
_LAYOUT["gemma"] = _LAYOUT["gemma2"] = _LAYOUT["gemma3_text"] = _LAYOUT["llama"]
_LAYOUT["opt"] = (
    "model.decoder.layers.{i}.",
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    ("fc1",),
    "fc2",
    "ffn_dim",
)
# Mixtral: experts are 3-D parameters (E, 2I, d) and (E, d, I), handled in _mixtral and widen_ffn
_LAYOUT["mixtral"] = ("model.layers.{i}.", _LAYOUT["llama"][1], (), None, "intermediate_size")
_EXPERTS = {
    "mixtral": ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),  # [gate; up] rows per expert, down
    "qwen3_moe": ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
}
# Qwen3-MoE: sparse layers as Mixtral's, dense ones (mlp_only_layers, decoder_sparse_step) as LLaMA's
_LAYOUT["qwen3_moe"] = (*_LAYOUT["mixtral"][:4], "moe_intermediate_size")  # widen_ffn grows the experts
_EXPERT_SIZE = {"mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size"}


def _bert_base(sd: StateDict) -> str:
    return "bert." if any(n.startswith("bert.") for n in sd) else ""


def _blocks(m: _Maps, sd: StateDict, config: PretrainedConfig, new: StateDict, base: str = "") -> None:
    """Map the linear layers of every block listed in ``_LAYOUT`` (GPT-2's c_attn excepted)."""
    prefix, attention, ffn_in, ffn_out, _ = _LAYOUT[config.model_type]
    conv1d = config.model_type == "gpt2"
    for i in range(num_layers(config)):
        p = prefix.format(i=i, base=base)
        if attention is not None:
            for role, name in zip((m.qk, m.qk, m.v, m.o), attention, strict=True):
                _linear(role, sd, p + name, new)
        for name in ffn_in:
            _linear(m.ffn_in, sd, p + name, new, conv1d=conv1d)
        if ffn_out is not None:
            _linear(m.ffn_out, sd, p + ffn_out, new, conv1d=conv1d)


def _stream_ends(m: _Maps, sd: StateDict, embedding: str, norms: str) -> dict[str, torch.Tensor]:
    """The maps of what reads or writes the residual stream outside the blocks' linear layers:
    the token embedding (name ending ``embedding``), an untied ``lm_head`` and every norm
    matching the regular expression ``norms``."""
    new: dict[str, torch.Tensor] = {}
    for name in sd:
        if name.endswith(embedding):
            new[name] = m.embedding(sd[name])
        elif name == "lm_head.weight":
            new[name] = m.lm_head(sd[name])
        elif re.search(norms, name):
            _norm(m, sd, name.removesuffix(".weight"), new)
    return new


def _llama(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    new = _stream_ends(m, sd, "embed_tokens.weight", r"(layernorm|norm)\.weight$")
    _blocks(m, sd, config, new)
    return new


def _with_qk_norms(
    m: _Maps, sd: StateDict, config: PretrainedConfig, norm_weight: Callable[[torch.Tensor], torch.Tensor]
) -> StateDict:
    """LLaMA's maps for a model with RMSNorms on q and k (``q_norm``, ``k_norm``) sharing the
    config's ``rms_norm_eps`` with the stream norms: q and k are produced ``1/√k`` smaller, so
    that ``RMS(x/√k; eps/k) = RMS(x; eps)``, and ``norm_weight`` maps those norms' weights."""
    new = _llama(m, {n: t for n, t in sd.items() if not n.endswith(("q_norm.weight", "k_norm.weight"))}, config)
    for name, t in sd.items():
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            new[name] = norm_weight(t)
        elif re.search(r"self_attn\.(q|k)_proj\.(weight|bias)$", name):
            new[name] = new[name] / m.sqrt_k
    return new


def _qwen3(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """Qwen3: LLaMA's maps, plus an RMSNorm over each head of q and of k (``q_norm``, ``k_norm``).

    In ``heads`` mode every head of the grown model is an exact copy of an old head, so these
    norms see the old per-head vectors, but the config holds one ``rms_norm_eps`` for them and
    for the residual-stream norms, whose exactness needs ``eps/k`` (see the module table).
    RMSNorm is invariant to a joint scaling, ``RMS(x/√k; eps/k) = RMS(x; eps)``: so q and k
    are produced ``1/√k`` smaller (their projections divided by √k), and ``q_norm``/``k_norm``
    keep their weights; their outputs, and so the attention, are exactly the old ones.
    ``head_dim`` mode would change each norm's width and is refused.
    """
    if m.mode != "heads":
        raise ValueError(
            f"{config.model_type} widens in mode='heads' only: mode='head_dim' would widen the per-head q/k "
            "norms (and is inexact under RoPE anyway)"
        )
    return _with_qk_norms(m, sd, config, lambda w: w.clone())  # per head: the copies read the old weights


def _olmo2(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """OLMo 2: RMSNorms over the whole q and k projections, and norms on the branch outputs.

    In ``heads`` mode the grown q is ``k`` copies of all the old heads side by side, ``tile(q)``:
    its mean square is the old one's, but the config's single ``rms_norm_eps`` becomes
    ``eps/k`` (for the stream norms). As for Qwen3, q and k are produced ``1/√k`` smaller, so
    ``RMS(tile(q)/√k; eps/k) = tile(RMS(q; eps))``, and ``q_norm``/``k_norm`` weights are
    tiled (not repeated and divided: these norms act on head coordinates, not the stream). The
    post-attention and post-feed-forward norms read the branch outputs, which are in the
    stream's ``rep(·)/√k`` form: the stream-norm rule. ``head_dim`` mode is refused.
    """
    if m.mode != "heads":
        raise ValueError(
            "OLMo 2 widens in mode='heads' only (mode='head_dim' would reorder its q/k norms' coordinates "
            "and is inexact under RoPE)"
        )
    return _with_qk_norms(m, sd, config, lambda w: _tile(w, 0, m.k))  # across all heads: tiled over the copies


def _phi3(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """Phi-3: LLaMA's maps on its fused projections.

    ``qkv_proj`` stacks the rows of q (``H · hd``), k and v (``H_kv · hd`` each): each block is
    mapped by its own role and the blocks are stacked again, so the grown rows are again
    ``[q; k; v]`` of the grown head counts (mapping the fused rows as one block would tile them
    as ``[q k v q k v]``: a different function, tested). ``gate_up_proj`` stacks the gate and
    up units: each half takes the feed-forward-input map, so unit ``j``'s gate and up rows stay
    ``I'`` apart (for widening by ``k`` this equals repeating the fused rows, but not for
    :func:`widen_ffn`'s copies to any size). Partial rotary is unaffected (``heads`` mode keeps
    the head dimension).
    """
    new = _stream_ends(m, sd, "embed_tokens.weight", r"(layernorm|norm)\.weight$")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    kv_rows = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    units = config.intermediate_size
    for i in range(num_layers(config)):
        p = f"model.layers.{i}."
        w = sd[p + "self_attn.qkv_proj.weight"]
        q, k, v = w[:q_rows], w[q_rows : q_rows + kv_rows], w[q_rows + kv_rows :]
        new[p + "self_attn.qkv_proj.weight"] = torch.cat([m.qk(q, None)[0], m.qk(k, None)[0], m.v(v, None)[0]])
        _linear(m.o, sd, p + "self_attn.o_proj", new)
        gate_up = sd[p + "mlp.gate_up_proj.weight"]
        new[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [m.ffn_in(gate_up[:units], None)[0], m.ffn_in(gate_up[units:], None)[0]]
        )
    _blocks(m, sd, config, new)
    return new


def _gpt_neox(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """GPT-NeoX / Pythia: a fused ``query_key_value`` laid out per head, ``(H, [q_h; k_h; v_h], d)``.

    In ``heads`` mode the grown model's head ``c·H + h`` is copy ``c`` of head ``h``: the fused
    rows are regrouped by head, every head block (its q, k and v rows together) is mapped as
    q/k/v are (columns repeated, ``/√k``) and the blocks are tiled over the copies, so each new
    head again holds ``[q; k; v]``; the bias is tiled the same way. The attention output
    ``dense`` then reads ``k`` copies of all heads side by side (the ``o`` rule). The parallel
    residual (``x + Attn(LN₁ x) + MLP(LN₂ x)``) needs nothing more: every branch reads and
    writes the ``rep(h)/√k`` stream. Partial rotary is unaffected (head size kept).
    ``head_dim`` mode is refused (inexact under RoPE).
    """
    if m.mode != "heads":
        raise ValueError("GPT-NeoX widens in mode='heads' only (mode='head_dim' is inexact under its rotary embedding)")
    new = _stream_ends(m, sd, "embed_in.weight", r"(layernorm|layer_norm)\.weight$")
    heads = config.num_attention_heads
    for i in range(num_layers(config)):
        p = f"gpt_neox.layers.{i}."
        w = sd[p + "attention.query_key_value.weight"]  # (H · 3 hd, d)
        grouped = (_rep(w, 1, m.k) / m.sqrt_k).view(heads, -1, w.shape[1] * m.k)
        new[p + "attention.query_key_value.weight"] = m._noisy(_tile(grouped, 0, m.k).reshape(-1, w.shape[1] * m.k))
        if p + "attention.query_key_value.bias" in sd:
            b = sd[p + "attention.query_key_value.bias"].view(heads, -1)
            new[p + "attention.query_key_value.bias"] = _tile(b, 0, m.k).reshape(-1)
        _linear(m.o, sd, p + "attention.dense", new)
    _blocks(m, sd, config, new)
    for name in sd:  # buffers pass through
        if not name.endswith((".weight", ".bias")):
            new.setdefault(name, sd[name])
    return new


def _gemma_norm(m: _Maps, w: torch.Tensor, scale: float) -> torch.Tensor:
    """Gemma's ``(1 + w)`` RMSNorm weight for an output ``scale · rep(old output)``:
    ``1 + w' = scale · rep(1 + w)``, so ``w' = scale · rep(w) + (scale - 1)``.

    The map is affine, not linear. Under :func:`~kexue.growth._build.probing` it returns its
    linear part ``scale · rep(w)``: the derivative ``∂w'/∂w`` is what the gradient map and the
    Adam-state transfer need, and the probe reads it from a gather-and-scale map."""
    grown = _rep(w, 0, m.k) * scale
    return grown if probing() else grown + (scale - 1.0)


def _gemma(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """Gemma, Gemma 2, Gemma 3 (text): LLaMA's maps, with four peculiarities.

    * The embedding is multiplied by ``√d`` inside the model, and by ``√(kd)`` after widening,
      so the stored ``E'`` must satisfy ``√(kd) E' = rep(√d E)/√k``: ``E' = rep(E)/k``.
    * RMSNorm multiplies by ``1 + w``. The stream rule (output ``rep(y)/√k``, ``eps/k``) needs
      ``1 + w' = rep(1 + w)/√k``: ``w' = rep(1 + w)/√k - 1`` (:func:`_gemma_norm`). Gemma 2/3's
      sandwich norms (``post_attention``, ``pre_feedforward``, ``post_feedforward``) read a
      branch input or output in the stream form and take the same rule.
    * The head is tied: ``E'`` (``rep(E)/k``) is also the output matrix. With a final norm in
      the stream form the logits would be ``rep(h)/√k · rep(E)/k = h·E/√k``: wrong. The final
      norm therefore outputs ``rep(h)`` (``1 + w' = rep(1 + w)``, i.e. ``w' = rep(w)``), and
      ``rep(h) · rep(E)/k = h·E``. An untied ``lm_head`` takes the same ``rep/k`` rule, so one
      final-norm rule serves both.
    * Gemma 3's q/k norms act per head: as for Qwen3, every head of the grown model is a copy
      of an old head, q and k are produced ``1/√k`` smaller (``RMS(x/√k; eps/k) = RMS(x; eps)``)
      and the ``1 + w`` weights are kept.

    Nothing else needs a rule in ``heads`` mode: the head dimension is kept, so the attention
    scale ``query_pre_attn_scalar^(-1/2)``, the soft-capping of attention and final logits
    (which see the old scores and logits) and the RoPE bases of each layer type are unchanged.
    ``head_dim`` mode is refused (inexact under RoPE; its ``k^(1/4)`` assumes a
    ``1/√head_dim`` scale, which ``query_pre_attn_scalar`` replaces).
    """
    if m.mode != "heads":
        raise ValueError(
            f"{config.model_type} widens in mode='heads' only (mode='head_dim' is inexact under RoPE, and "
            "its attention scale is query_pre_attn_scalar, not head_dim)"
        )
    if not m.divided:
        raise ValueError(
            f"{config.model_type} grows in the divided stream form rep(h)/√k only (its embedding and "
            "final-norm rules are derived for it)"
        )
    new: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name == "model.embed_tokens.weight":
            new[name] = _rep(t, 1, m.k) / m.k
        elif name == "lm_head.weight":
            new[name] = m._noisy(_rep(t, 1, m.k) / m.k)
        elif name == "model.norm.weight":
            new[name] = _gemma_norm(m, t, 1.0)
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            new[name] = t.clone()
        elif name.endswith("norm.weight"):
            new[name] = _gemma_norm(m, t, 1.0 / m.sqrt_k)
    _blocks(m, sd, config, new)
    if any(n.endswith("q_norm.weight") for n in sd):
        for name in new:
            if re.search(r"self_attn\.(q|k)_proj\.(weight|bias)$", name):
                new[name] = new[name] / m.sqrt_k
    return new


def _opt_head_producer(config: PretrainedConfig) -> str | None:
    """The affine LayerNorm whose output feeds OPT's tied head (it takes the head's ``1/k``), or
    ``None`` where there is none: a projection, an untied head, no affine LayerNorms, or a
    pre-LN decoder without its final LayerNorm (``_remove_final_layer_norm``). One predicate
    for the weights (:func:`_opt`) and the config (:func:`_new_config` unties the head then)."""
    if config.word_embed_proj_dim != config.hidden_size or not config.tie_word_embeddings:
        return None
    if not config.layer_norm_elementwise_affine:
        return None
    if config.do_layer_norm_before:
        return None if getattr(config, "_remove_final_layer_norm", False) else "model.decoder.final_layer_norm"
    return f"model.decoder.layers.{num_layers(config) - 1}.final_layer_norm"


def _opt(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """OPT: the undivided stream ``rep(h)`` (``divided=False``, ``σ = 1``), learned positions.

    OPT's LayerNorms are built with torch's default ``eps = 1e-5`` in the modules, not read
    from the config, so ``eps/k`` is impossible. In the undivided form every LayerNorm input is
    ``rep(x)``, whose mean and variance are the old ones: the same ``eps`` is exact, and
    ``γ' = rep(γ)``, ``β' = rep(β)`` (nothing at all with ``layer_norm_elementwise_affine=False``).
    The other rules follow from ``σ = 1`` (see :class:`_Maps`); in this form the feed-forward
    activation sees the old pre-activations under either feed-forward rule, and ``head_dim``
    mode is exact too (no RoPE; q and k carry ``k^(-1/4)``). Token and position embeddings
    (the offset of 2 is only an index shift: its two extra rows are repeated like the rest)
    are ``rep(E)``.

    The tied head wants the opposite: the input embedding must be ``rep(E)``, and
    ``rep(h) · rep(E) = k h·E``. The ``1/k`` goes to whatever produces the head's input:

    * ``word_embed_proj_dim ≠ hidden_size`` (OPT-350m): ``project_out`` maps the stream back to
      the unwidened embedding width (columns repeated, ``/k``) and ``project_in`` into the
      stream (rows repeated); the embeddings and the head are not widened at all;
    * otherwise the last LayerNorm before the head, ``γ' = rep(γ)/k``, ``β' = rep(β)/k``: the
      decoder's ``final_layer_norm`` in pre-LN models, the last layer's ``final_layer_norm``
      in post-LN ones (``do_layer_norm_before=False``);
    * without an affine LayerNorm there (``layer_norm_elementwise_affine=False``, or a pre-LN
      decoder built with ``_remove_final_layer_norm``) no weight can take it: the grown
      model's head is untied (``tie_word_embeddings=False``) and holds
      ``rep(E)/k`` (:func:`_new_config` unties it).
    """
    proj = config.word_embed_proj_dim != config.hidden_size
    producer = _opt_head_producer(config)
    new: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name == "model.decoder.embed_tokens.weight":
            new[name] = t.clone() if proj else m.embedding(t)
        elif name == "model.decoder.embed_positions.weight":
            new[name] = m.embedding(t)
        elif name == "model.decoder.project_in.weight":  # (hidden, proj): into the stream, rep(x)
            new[name] = _rep(t, 0, m.k)
        elif name == "model.decoder.project_out.weight":  # (proj, hidden): out of it, to the old size
            new[name] = m.lm_head(t)
        elif name == "lm_head.weight" and (proj or producer is None):  # else tied: build() ties it to the embedding
            new[name] = t.clone() if proj else m.lm_head(t)
        elif re.search(r"layer_norm\.(weight|bias)$", name):
            new[name] = m.stream(t) / (m.k if name.rsplit(".", 1)[0] == producer else 1)
    _blocks(m, sd, config, new)
    return new


def _mixtral(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """Mixtral: LLaMA's maps for attention and norms; the router and every expert grown.

    The router ``W_r`` (``(E, d)``) reads the stream: columns repeated, ``/√k`` (the untied-head
    rule), so the router logits, and with them the top-k choice and the weights, are exactly
    the old ones. Each expert is a SwiGLU feed-forward: its gate and up rows (the halves of
    ``gate_up_proj[e]``) take the feed-forward-input rule separately, so the grown expert's
    unit ``j`` keeps gate and up ``kI`` rows apart, and ``down_proj[e]`` the feed-forward-output
    rule; the mixture ``Σ_e w_e f_e(x)`` is then ``rep(·)/√k`` of the old one. ``head_dim``
    mode is refused (inexact under RoPE).
    """
    if m.mode != "heads":
        raise ValueError("mixtral widens in mode='heads' only (mode='head_dim' is inexact under its rotary embedding)")
    new = _stream_ends(m, sd, "embed_tokens.weight", r"(layernorm|norm)\.weight$")
    _blocks(m, sd, config, new)
    _moe_layers(m, sd, config, new)
    return new


def _moe_layers(m: _Maps, sd: StateDict, config: PretrainedConfig, new: StateDict) -> None:
    """The feed-forward of every layer: router and experts (:func:`_mixtral`), or a dense
    SwiGLU (LLaMA's rules) in the layers a Qwen3-MoE config keeps dense."""
    gate_up, down = _EXPERTS[config.model_type]
    units = getattr(config, _EXPERT_SIZE[config.model_type])
    for i in range(num_layers(config)):
        p = f"model.layers.{i}."
        if p + gate_up not in sd:  # a dense layer
            for name in ("mlp.gate_proj", "mlp.up_proj"):
                _linear(m.ffn_in, sd, p + name, new)
            _linear(m.ffn_out, sd, p + "mlp.down_proj", new)
            continue
        new[p + "mlp.gate.weight"] = m.lm_head(sd[p + "mlp.gate.weight"])
        new[p + gate_up] = torch.stack(
            [torch.cat([m.ffn_in(w[:units], None)[0], m.ffn_in(w[units:], None)[0]]) for w in sd[p + gate_up]]
        )
        new[p + down] = torch.stack([m.ffn_out(w, None)[0] for w in sd[p + down]])


def _qwen3_moe(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    """Qwen3-MoE: Qwen3's per-head q/k norms (:func:`_qwen3`: q, k produced ``1/√k`` smaller,
    norm weights kept; ``heads`` mode only) and Mixtral's router and experts (:func:`_mixtral`),
    with dense SwiGLU layers where the config keeps them. The router's ``norm_topk_prob``
    needs nothing: the router logits, so every weight, are the old ones either way."""
    new = _qwen3(m, sd, config)
    _moe_layers(m, sd, config, new)
    return new


def _gpt2(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    new: dict[str, torch.Tensor] = {}
    d = config.n_embd
    for name in sd:
        if name.endswith(("wte.weight", "wpe.weight")):
            new[name] = m.embedding(sd[name])
        elif name == "lm_head.weight":
            new[name] = m.lm_head(sd[name])
        elif re.search(r"ln_(1|2|f)\.weight$", name):
            _norm(m, sd, name.removesuffix(".weight"), new)
    for i in range(num_layers(config)):
        p = f"transformer.h.{i}."
        w, b = sd[p + "attn.c_attn.weight"].T, sd[p + "attn.c_attn.bias"]  # (3d, d): q, k, v stacked
        parts = [m.qk(w[:d], b[:d]), m.qk(w[d : 2 * d], b[d : 2 * d]), m.v(w[2 * d :], b[2 * d :])]
        new[p + "attn.c_attn.weight"] = torch.cat([x[0] for x in parts]).T.contiguous()
        new[p + "attn.c_attn.bias"] = torch.cat([x[1] for x in parts if x[1] is not None])  # all three have one
        _linear(m.o, sd, p + "attn.c_proj", new, conv1d=True)
    _blocks(m, sd, config, new)
    for name in sd:  # buffers (attention masks of older versions) pass through
        if not name.endswith((".weight", ".bias")):
            new.setdefault(name, sd[name])
    return new


def _bert(m: _Maps, sd: StateDict, config: PretrainedConfig) -> StateDict:
    new: dict[str, torch.Tensor] = {}
    for name in sd:
        if re.search(r"embeddings\.(word|position|token_type)_embeddings\.weight$", name):
            new[name] = m.embedding(sd[name])
        elif name.endswith("LayerNorm.weight") and "cls.predictions" not in name:
            _norm(m, sd, name.removesuffix(".weight"), new)
        elif not name.endswith((".weight", ".bias")):
            new[name] = sd[name]  # buffers: position_ids, token_type_ids
    base = _bert_base(sd)
    _blocks(m, sd, config, new, base)
    if base + "pooler.dense.weight" in sd:  # tanh: keep its pre-activations; output rep(pooled) (not / √k)
        _linear(_Maps(m.k, m.mode).ffn_in, sd, base + "pooler.dense", new)
    if "cls.predictions.transform.dense.weight" in sd:
        # MLM head: dense + GeLU (the FFN-in rule), LayerNorm whose γ, β absorb the 1/√k, tied decoder
        _linear(_Maps(m.k, m.mode).ffn_in, sd, "cls.predictions.transform.dense", new)
        _norm(m, sd, "cls.predictions.transform.LayerNorm", new)
        new["cls.predictions.decoder.weight"] = m.lm_head(sd["cls.predictions.decoder.weight"])
        for name in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
            if name in sd:
                new[name] = sd[name]
    return new


_ARCH: dict[str, Callable[[_Maps, StateDict, PretrainedConfig], StateDict]] = {
    "llama": _llama,
    "qwen2": _llama,
    "mistral": _llama,
    "qwen3": _qwen3,
    "olmo2": _olmo2,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "gpt2": _gpt2,
    "bert": _bert,
    "gemma": _gemma,
    "gemma2": _gemma,
    "gemma3_text": _gemma,
    "opt": _opt,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
}


def _new_config(config: PretrainedConfig, k: int, mode: Mode, *, divide_norm_eps: bool) -> PretrainedConfig:
    """The grown model's config: widths (and head counts in ``heads`` mode) × ``k``, norm eps ÷ ``k``."""
    c = copy.deepcopy(config)
    t = config.model_type
    eps_div = k if divide_norm_eps else 1
    if t == "gpt2":
        c.n_embd = config.n_embd * k
        c.n_inner = None if config.n_inner is None else config.n_inner * k
        c.n_head = config.n_head * (k if mode == "heads" else 1)
        c.layer_norm_epsilon = config.layer_norm_epsilon / eps_div
    elif t == "gpt_neox":  # head size = hidden / heads: kept by multiplying both
        c.hidden_size, c.intermediate_size = config.hidden_size * k, config.intermediate_size * k
        c.num_attention_heads = config.num_attention_heads * k
        c.layer_norm_eps = config.layer_norm_eps / eps_div
    elif t == "opt":  # undivided stream: LayerNorm eps (fixed in the modules) unchanged
        c.hidden_size, c.ffn_dim = config.hidden_size * k, config.ffn_dim * k
        c.num_attention_heads = config.num_attention_heads * (k if mode == "heads" else 1)
        if config.word_embed_proj_dim == config.hidden_size:
            c.word_embed_proj_dim = config.word_embed_proj_dim * k
            if config.tie_word_embeddings and _opt_head_producer(config) is None:
                c.tie_word_embeddings = False  # no LayerNorm weight can take the head's 1/k: see _opt
    elif t == "bert":
        c.hidden_size = config.hidden_size * k
        c.intermediate_size = config.intermediate_size * k
        c.num_attention_heads = config.num_attention_heads * (k if mode == "heads" else 1)
        c.layer_norm_eps = config.layer_norm_eps / eps_div
    else:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        c.hidden_size = config.hidden_size * k
        c.intermediate_size = config.intermediate_size * k
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if mode == "heads":
            c.num_attention_heads, c.num_key_value_heads, c.head_dim = config.num_attention_heads * k, kv * k, head_dim
        else:
            c.head_dim = head_dim * k
        c.rms_norm_eps = config.rms_norm_eps / eps_div
        if t == "qwen3_moe":
            c.moe_intermediate_size = config.moe_intermediate_size * k
    return c


# the options renamed in 0.x, served for one more release with a DeprecationWarning: old -> new keyword
_RENAMED_OPTIONS = {
    "gelu_fix": "keep_preactivations",
    "scale_eps": "divide_norm_eps",
    "bias2": "ffn_out_bias_divisor",
}
_OLD_BIAS2_VALUES = {"sqrt": "sqrt_k", "k": "k"}  # bias2's values -> ffn_out_bias_divisor's


def _renamed_options(deprecated: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (the new keywords' values) updated from the old keywords in ``deprecated``, each with
    a DeprecationWarning naming its new name; a TypeError for an unknown keyword, as Python's own."""
    options = dict(given)
    for old, value in deprecated.items():
        if old not in _RENAMED_OPTIONS:
            raise TypeError(f"widen() got an unexpected keyword argument {old!r}")
        new = _RENAMED_OPTIONS[old]
        warnings.warn(
            f"widen({old}=...) is deprecated and will be removed in the next release; use widen({new}=...)",
            DeprecationWarning,
            stacklevel=3,
        )
        if old == "bias2":
            check_choice("bias2", value, tuple(_OLD_BIAS2_VALUES))
            value = _OLD_BIAS2_VALUES[value]
        options[new] = value
    return options


def widen(
    model: ModelT,
    factor: int,
    *,
    mode: Mode = "heads",
    noise: float = 0.0,
    seed: int = 0,
    keep_preactivations: bool = True,
    divide_norm_eps: bool = True,
    ffn_out_bias_divisor: FfnOutBiasDivisor = "sqrt_k",
    **deprecated: Any,
) -> ModelT:
    """A new model of the same class, ``factor`` times wider, computing the same function.

    Args:
        model: a HuggingFace model of a supported family (``SUPPORTED``): BERT (any head in
            ``BertModel``/``BertForMaskedLM``), GPT-2, LLaMA, Qwen2, Mistral, Qwen3 (``heads``
            mode; see :func:`_qwen3` for its per-head q/k norms), OLMo 2 (``heads`` mode, whole-
            projection q/k norms, :func:`_olmo2`), Phi-3 (fused ``qkv_proj`` and
            ``gate_up_proj``, see :func:`_phi3`), GPT-NeoX/Pythia (per-head fused QKV, parallel
            residual, ``heads`` mode; see :func:`_gpt_neox`), Gemma, Gemma 2, Gemma 3 text
            (``√d`` embedding scale, ``1 + w`` RMSNorms, sandwich norms, soft-capping, per-head
            q/k norms, ``heads`` mode; see :func:`_gemma`), OPT (pre- and post-LN, with or
            without ``project_in``/``project_out``, biases and affine LayerNorms; undivided
            stream, see :func:`_opt`), Mixtral (router and every expert; see :func:`_mixtral`),
            Qwen3-MoE (``heads`` mode; :func:`_qwen3_moe`).
        factor: integer ``k >= 2``: hidden size, feed-forward size and (``mode="heads"``) the
            number of heads are multiplied by it.
        mode: ``"heads"`` (keep the head dimension, copy heads; exact with RoPE) or
            ``"head_dim"`` (the article's: wider heads; inexact with RoPE).
        noise: symmetry breaking. Duplicated units receive identical gradients and stay
            copies forever; ``noise > 0`` adds, to every weight reading duplicated inputs, noise
            of standard deviation ``noise × std(weight)`` that sums to zero over each group of
            copies, so the function is unchanged (to rounding) but the copies drift apart.
            ``1e-2`` is a reasonable start; ``0`` keeps exact copies.
        seed: seed of that noise.
        keep_preactivations: the article's exactness details below, switchable to measure what
            each is worth. This one: the feed-forward's input layer reproduces the old
            pre-activations (repeated), so any activation (GeLU, SiLU, SwiGLU) sees the old values;
            ``False`` applies the plain linear-layer rule, exact only for homogeneous activations
            (formerly ``gelu_fix``).
        divide_norm_eps: ``eps/k`` in the norms (``False`` keeps ``eps``; formerly ``scale_eps``).
        ffn_out_bias_divisor: what the feed-forward output bias is divided by: ``"sqrt_k"`` (``√k``,
            derived, exact) or ``"k"`` (the article's printed table; formerly ``bias2="sqrt"`` /
            ``bias2="k"``).
        **deprecated: the old names ``gelu_fix``, ``scale_eps`` and ``bias2``, accepted for one
            more release with a ``DeprecationWarning``.

    Returns:
        The grown model (same dtype, device and eval/train mode as the input); ``save_pretrained``
        writes a plain checkpoint that ``from_pretrained`` loads with no custom code. A model on
        the meta device (``init_empty_weights``) gives a meta model with the grown shapes and
        config (noise is skipped there: no values), to plan a growth of a model too large to load.
        A bfloat16/float16 model is grown in its dtype: each weight is one copy or one scaling,
        rounded once, bit for bit the float32 growth of the same weights cast back (Qwen3's and
        Gemma 3's q/k projections, scaled twice, are within one ulp; Gemma's affine norm rule
        within one ulp of 1).

    Raises:
        ValueError: unsupported family (the message lists the supported ones), ``mode="head_dim"``
            for a family where it cannot be exact (Qwen3, Qwen3-MoE, OLMo 2, GPT-NeoX, Gemma 1-3,
            Mixtral; LLaMA, Qwen2, Mistral and Phi-3 allow it as the article's documented inexact
            case), or bad arguments.

    Example:
        >>> from kexue.growth import widen
        >>> from kexue.growth.zoo import tiny_model
        >>> small = tiny_model("llama-tied")
        >>> large = widen(small, 2)
        >>> small.config.hidden_size, large.config.hidden_size, large.config.num_attention_heads
        (16, 32, 8)
    """
    options = _renamed_options(
        deprecated,
        {
            "keep_preactivations": keep_preactivations,
            "divide_norm_eps": divide_norm_eps,
            "ffn_out_bias_divisor": ffn_out_bias_divisor,
        },
    )
    check_module("model", model, hf=True)
    check_int("factor", factor, 2)
    check_choice("mode", mode, MODES)
    check_choice("ffn_out_bias_divisor", options["ffn_out_bias_divisor"], FFN_OUT_BIAS_DIVISORS)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ARCH:
        raise ValueError(f"cannot widen model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
    check_noise(noise)
    maps = _Maps(
        factor,
        mode,
        keep_preactivations=options["keep_preactivations"],
        ffn_out_bias_divisor=options["ffn_out_bias_divisor"],
        noise=noise,
        generator=torch.Generator().manual_seed(seed),
    )
    return _widen_with(model, maps, divide_norm_eps=options["divide_norm_eps"])


def _widen_with(model: ModelT, maps: _Maps, *, divide_norm_eps: bool = True) -> ModelT:
    """The widening with explicit maps (the claims switch single factors through them)."""
    config = hf_config(model)
    if config.model_type in _UNDIVIDED and maps.divided:
        maps = copy.copy(maps)
        maps.divided = False
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        new_sd = _ARCH[config.model_type](maps, sd, config)
    new_config = _new_config(config, maps.k, maps.mode, divide_norm_eps=divide_norm_eps)
    return build(model, new_config, new_sd, f"widening {config.model_type}")


def widen_ffn(model: ModelT, intermediate_size: int, *, noise: float = 0.0, seed: int = 0) -> ModelT:
    """A new model whose feed-forward blocks have ``intermediate_size`` units, same function.

    Unit ``j`` of the new block copies unit ``j mod m`` of the old one (``m`` the old size):
    its input rows (``up``, and ``gate`` for SwiGLU) and bias are copied, and the output
    projection's column of a unit copied ``c`` times is divided by ``c``, so the copies' equal
    activations add up to the old contribution. Exact for any activation (GeLU, SiLU, SwiGLU)
    and any size ``>= m``, not only multiples; the residual stream is untouched. In Mixtral
    and Qwen3-MoE every expert is grown so (its gate and up halves of ``gate_up_proj`` each
    copy the units) and the router is untouched; ``intermediate_size`` is then the experts'
    width (Qwen3-MoE: ``moe_intermediate_size``; its dense layers keep theirs).

    Args:
        model: a supported HuggingFace model (``SUPPORTED``).
        intermediate_size: the new feed-forward width, at least the current one.
        noise, seed: symmetry breaking as in :func:`widen` (zero-sum noise on the output
            projection's columns of copied units).

    Returns:
        The grown model, in the input's dtype and on its device (the meta device too: shapes and
        config only); ``save_pretrained`` / ``from_pretrained`` round-trip it.

    Example:
        >>> from kexue.growth import widen_ffn
        >>> from kexue.growth.zoo import tiny_model
        >>> widen_ffn(tiny_model("llama-tied"), 40).config.intermediate_size
        40
    """
    check_module("model", model, hf=True)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _LAYOUT:
        raise ValueError(
            f"cannot widen the feed-forward of model_type {model_type!r}; supported: {', '.join(SUPPORTED)}"
        )
    check_noise(noise)
    prefix, _, _, _, field = _LAYOUT[model_type]
    config = copy.deepcopy(hf_config(model))
    width = getattr(config, field, None)
    m: int = 4 * config.n_embd if width is None else width  # GPT-2's n_inner=None means 4 n_embd
    check_int("intermediate_size", intermediate_size, m)
    generator = torch.Generator().manual_seed(seed)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    base = _bert_base(sd)
    new = dict(sd)
    with torch.no_grad():
        for i in range(num_layers(config)):
            _widen_ffn_layer(
                sd,
                new,
                model_type,
                prefix.format(i=i, base=base),
                m,
                intermediate_size,
                noise=noise,
                generator=generator,
            )
    setattr(config, field, intermediate_size)
    return build(model, config, new, f"widening the feed-forward of {model_type}")


def _unit_copies(units: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``size`` new units, on ``device``: the old unit it copies (``j mod units``) and
    how many copies that old unit has (``size // units``, one more for the first ``size % units``),
    counted without reading any value (the meta device has none)."""
    index = torch.arange(size, device=device) % units
    return index, size // units + (index < size % units).long()


def _widen_ffn_layer(
    sd: StateDict,
    new: StateDict,
    model_type: str,
    p: str,
    m: int,
    size: int,
    *,
    noise: float,
    generator: torch.Generator,
) -> None:
    """One layer of :func:`widen_ffn`: copy the units' input rows, divide the output columns of a
    unit copied ``c`` times by ``c`` (with zero-sum noise over the copies). Index tensors are made
    on each weight's device; the noise's index stays on the CPU, where the noise is drawn."""
    _, _, _, out, _ = _LAYOUT[model_type]
    _copy_input_units(sd, new, model_type, p, m, size)
    noise_index = torch.arange(size) % m
    if model_type in _EXPERTS:  # every expert: (E, 2m, d), (E, d, m); dense layers keep their own size
        gate_up, down = (p + n for n in _EXPERTS[model_type])
        if gate_up in sd:
            w = sd[gate_up]
            index, _ = _unit_copies(m, size, w.device)
            new[gate_up] = torch.cat([w[:, :m][:, index], w[:, m:][:, index]], dim=1)
            w = sd[down]
            index, count = _unit_copies(m, size, w.device)
            new[down] = zero_sum_noise(w[..., index] / count.to(w.dtype), noise_index, noise, generator).contiguous()
    elif out is not None:  # every dense family has one
        conv1d = model_type == "gpt2"
        w = sd[p + out + ".weight"]
        w = w.T if conv1d else w  # (d, m)
        index, count = _unit_copies(m, size, w.device)
        w = zero_sum_noise(w[:, index] / count.to(w.dtype), noise_index, noise, generator)
        new[p + out + ".weight"] = (w.T if conv1d else w).contiguous()


def _copy_input_units(sd: StateDict, new: StateDict, model_type: str, p: str, m: int, size: int) -> None:
    """The feed-forward input rows (and biases) of :func:`widen_ffn`'s layer ``p``: new unit ``j``
    copies old unit ``j mod m`` (in a fused ``[gate; up]`` weight, within each half)."""
    _, _, ins, _, _ = _LAYOUT[model_type]
    conv1d = model_type == "gpt2"
    for name in ins:  # rows (torch layout) = units
        w = sd[p + name + ".weight"]
        index, _ = _unit_copies(m, size, w.device)
        new[p + name + ".weight"] = (w[:, index] if conv1d else w[index]).contiguous()
        if p + name + ".bias" in sd:
            new[p + name + ".bias"] = sd[p + name + ".bias"][index]
    if model_type in _FUSED_FFN_IN:  # [gate; up] stacked: copy each half's units
        w = sd[p + _FUSED_FFN_IN[model_type] + ".weight"]
        index, _ = _unit_copies(m, size, w.device)
        new[p + _FUSED_FFN_IN[model_type] + ".weight"] = torch.cat([w[:m][index], w[m:][index]])
