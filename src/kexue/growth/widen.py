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
=====================  ===========================================  ==========================

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
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kexue._shared import check_choice, check_int, check_module, check_number, num_layers
from kexue.growth._build import build, zero_sum_noise

__all__ = ["SUPPORTED", "widen", "widen_ffn"]

SUPPORTED = ("bert", "gpt2", "llama", "qwen2", "mistral", "qwen3", "olmo2", "phi3", "gpt_neox")
MODES = ("heads", "head_dim")


def _rep(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return t.repeat_interleave(k, dim=dim)


def _tile(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return torch.cat([t] * k, dim=dim)


class _Maps:
    """The per-role maps for factor ``k`` (weights in ``(out, in)`` layout).

    With ``noise > 0`` every weight that reads the (duplicated) residual stream or duplicated
    units gets zero-sum noise across each group of duplicated input columns: the function is
    unchanged, the copies' gradients are not (symmetry breaking)."""

    def __init__(self, k: int, mode: str, gelu_fix: bool = True, bias2: str = "sqrt",
                 noise: float = 0.0, generator: torch.Generator | None = None) -> None:
        self.k, self.mode, self.gelu_fix, self.bias2 = k, mode, gelu_fix, bias2
        self.s = math.sqrt(k)
        self.q4 = k ** 0.25
        self.noise, self.generator = noise, generator

    def _noisy(self, w: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        if not self.noise:
            return w
        n = w.shape[1]
        index = torch.arange(n) % (n // self.k) if tiled else torch.arange(n) // self.k
        return zero_sum_noise(w, index, self.noise, self.generator)

    # residual-stream vectors and norms
    def stream(self, t: torch.Tensor) -> torch.Tensor:  # (…, d) -> (…, k d)
        return _rep(t, -1, self.k) / self.s

    def embedding(self, w: torch.Tensor) -> torch.Tensor:  # (V, d)
        return _rep(w, 1, self.k) / self.s

    def lm_head(self, w: torch.Tensor) -> torch.Tensor:  # (V, d), untied
        return self._noisy(_rep(w, 1, self.k) / self.s)

    # attention
    def qk(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return self._noisy(_tile(_rep(w, 1, k), 0, k) / self.s), None if b is None else _tile(b, 0, k)
        return (self._noisy(_rep(_rep(w, 1, k), 0, k) / k * self.q4),
                None if b is None else _rep(b, 0, k) / self.s * self.q4)

    def v(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return self._noisy(_tile(_rep(w, 1, k), 0, k) / self.s), None if b is None else _tile(b, 0, k)
        return self._noisy(_rep(_rep(w, 1, k), 0, k) / k), None if b is None else _rep(b, 0, k) / self.s

    def o(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        bias = None if b is None else _rep(b, 0, k) / self.s
        if self.mode == "heads":  # input: k copies of all heads, side by side (tiled)
            return self._noisy(_rep(_tile(w, 1, k), 0, k) / (k * self.s), tiled=True), bias
        return self._noisy(_rep(_rep(w, 1, k), 0, k) / k), bias

    # feed-forward
    def ffn_in(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if not self.gelu_fix:  # the plain linear-layer rule: exact only for homogeneous activations
            return self._noisy(_rep(_rep(w, 1, k), 0, k) / k), None if b is None else _rep(b, 0, k) / self.s
        return self._noisy(_rep(_rep(w, 1, k), 0, k) / self.s), None if b is None else _rep(b, 0, k)

    def ffn_out(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        scale = k if not self.gelu_fix else k * self.s
        bias = None if b is None else _rep(b, 0, k) / (self.s if self.bias2 == "sqrt" else k)
        return self._noisy(_rep(_rep(w, 1, k), 0, k) / scale), bias


def _linear(maps_fn, sd: dict, prefix: str, new: dict, conv1d: bool = False) -> None:
    """Map ``prefix.weight`` / ``prefix.bias`` (HF Conv1D stores ``(in, out)``: transposed)."""
    w = sd[prefix + ".weight"]
    b = sd.get(prefix + ".bias")
    w2, b2 = maps_fn(w.T if conv1d else w, b)
    new[prefix + ".weight"] = (w2.T if conv1d else w2).contiguous()
    if b is not None:
        new[prefix + ".bias"] = b2


def _norm(m: _Maps, sd: dict, prefix: str, new: dict) -> None:
    new[prefix + ".weight"] = m.stream(sd[prefix + ".weight"])
    if prefix + ".bias" in sd:
        new[prefix + ".bias"] = m.stream(sd[prefix + ".bias"])


# The linear layers of block i, per family: prefix ("{base}" is "bert." for BERT with a head),
# attention (q, k, v, o; None: GPT-2's fused c_attn, handled in _gpt2), feed-forward inputs
# (rows = units: up, and gate for SwiGLU), feed-forward output, and the config field of the
# feed-forward width.
_LAYOUT = {
    "llama": ("model.layers.{i}.", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
              ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size"),
    "gpt2": ("transformer.h.{i}.", None, ("mlp.c_fc",), "mlp.c_proj", "n_inner"),
    "bert": ("{base}encoder.layer.{i}.", ("attention.self.query", "attention.self.key", "attention.self.value",
                                         "attention.output.dense"), ("intermediate.dense",), "output.dense", "intermediate_size"),
}
_LAYOUT["qwen2"] = _LAYOUT["mistral"] = _LAYOUT["qwen3"] = _LAYOUT["olmo2"] = _LAYOUT["llama"]
# Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj (handled in _phi3 and widen_ffn)
_LAYOUT["phi3"] = ("model.layers.{i}.", None, (), "mlp.down_proj", "intermediate_size")
_FUSED_FFN_IN = {"phi3": "mlp.gate_up_proj"}  # rows: [gate units; up units]
# GPT-NeoX/Pythia: fused per-head query_key_value (handled in _gpt_neox), GeLU feed-forward
_LAYOUT["gpt_neox"] = ("gpt_neox.layers.{i}.", None, ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size")


def _bert_base(sd: dict) -> str:
    return "bert." if any(n.startswith("bert.") for n in sd) else ""


def _blocks(m: _Maps, sd: dict, config: Any, new: dict, base: str = "") -> None:
    """Map the linear layers of every block listed in ``_LAYOUT`` (GPT-2's c_attn excepted)."""
    prefix, attention, ffn_in, ffn_out, _ = _LAYOUT[config.model_type]
    conv1d = config.model_type == "gpt2"
    for i in range(num_layers(config)):
        p = prefix.format(i=i, base=base)
        if attention is not None:
            for role, name in zip((m.qk, m.qk, m.v, m.o), attention):
                _linear(role, sd, p + name, new)
        for name in ffn_in:
            _linear(m.ffn_in, sd, p + name, new, conv1d=conv1d)
        _linear(m.ffn_out, sd, p + ffn_out, new, conv1d=conv1d)


def _stream_ends(m: _Maps, sd: dict, embedding: str, norms: str) -> dict[str, torch.Tensor]:
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


def _llama(m: _Maps, sd: dict, config: Any) -> dict:
    new = _stream_ends(m, sd, "embed_tokens.weight", r"(layernorm|norm)\.weight$")
    _blocks(m, sd, config, new)
    return new


def _with_qk_norms(m: _Maps, sd: dict, config: Any, norm_weight: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """LLaMA's maps for a model with RMSNorms on q and k (``q_norm``, ``k_norm``) sharing the
    config's ``rms_norm_eps`` with the stream norms: q and k are produced ``1/√k`` smaller, so
    that ``RMS(x/√k; eps/k) = RMS(x; eps)``, and ``norm_weight`` maps those norms' weights."""
    new = _llama(m, {n: t for n, t in sd.items() if not n.endswith(("q_norm.weight", "k_norm.weight"))}, config)
    for name, t in sd.items():
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            new[name] = norm_weight(t)
        elif re.search(r"self_attn\.(q|k)_proj\.(weight|bias)$", name):
            new[name] = new[name] / m.s
    return new


def _qwen3(m: _Maps, sd: dict, config: Any) -> dict:
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
        raise ValueError("Qwen3 widens in mode='heads' only: mode='head_dim' would widen the per-head q/k norms "
                         "(and is inexact under RoPE anyway)")
    return _with_qk_norms(m, sd, config, lambda w: w.clone())  # per head: the copies read the old weights


def _olmo2(m: _Maps, sd: dict, config: Any) -> dict:
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
        raise ValueError("OLMo 2 widens in mode='heads' only (mode='head_dim' would reorder its q/k norms' coordinates "
                         "and is inexact under RoPE)")
    return _with_qk_norms(m, sd, config, lambda w: _tile(w, 0, m.k))  # across all heads: tiled over the copies


def _phi3(m: _Maps, sd: dict, config: Any) -> dict:
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
        new[p + "mlp.gate_up_proj.weight"] = torch.cat([m.ffn_in(gate_up[:units], None)[0], m.ffn_in(gate_up[units:], None)[0]])
    _blocks(m, sd, config, new)
    return new


def _gpt_neox(m: _Maps, sd: dict, config: Any) -> dict:
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
        grouped = (_rep(w, 1, m.k) / m.s).view(heads, -1, w.shape[1] * m.k)
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


def _gpt2(m: _Maps, sd: dict, config: Any) -> dict:
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
        new[p + "attn.c_attn.bias"] = torch.cat([x[1] for x in parts])
        _linear(m.o, sd, p + "attn.c_proj", new, conv1d=True)
    _blocks(m, sd, config, new)
    for name in sd:  # buffers (attention masks of older versions) pass through
        if not name.endswith((".weight", ".bias")):
            new.setdefault(name, sd[name])
    return new


def _bert(m: _Maps, sd: dict, config: Any) -> dict:
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


_ARCH: dict[str, Callable[[_Maps, dict, Any], dict]] = {"llama": _llama, "qwen2": _llama, "mistral": _llama, "qwen3": _qwen3,
                                                         "olmo2": _olmo2, "phi3": _phi3, "gpt_neox": _gpt_neox, "gpt2": _gpt2, "bert": _bert}


def _new_config(config: Any, k: int, mode: str, scale_eps: bool) -> Any:
    c = copy.deepcopy(config)
    t = config.model_type
    eps_div = k if scale_eps else 1
    if t == "gpt2":
        c.n_embd = config.n_embd * k
        c.n_inner = None if config.n_inner is None else config.n_inner * k
        c.n_head = config.n_head * (k if mode == "heads" else 1)
        c.layer_norm_epsilon = config.layer_norm_epsilon / eps_div
    elif t == "gpt_neox":  # head size = hidden / heads: kept by multiplying both
        c.hidden_size, c.intermediate_size = config.hidden_size * k, config.intermediate_size * k
        c.num_attention_heads = config.num_attention_heads * k
        c.layer_norm_eps = config.layer_norm_eps / eps_div
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
    return c


def widen(model: nn.Module, factor: int, *, mode: str = "heads", noise: float = 0.0, seed: int = 0,
          gelu_fix: bool = True, scale_eps: bool = True, bias2: str = "sqrt") -> nn.Module:
    """A new model of the same class, ``factor`` times wider, computing the same function.

    Args:
        model: a HuggingFace model of a supported family (``SUPPORTED``): BERT (any head in
            ``BertModel``/``BertForMaskedLM``), GPT-2, LLaMA, Qwen2, Mistral, Qwen3 (``heads``
            mode; see :func:`_qwen3` for its per-head q/k norms), OLMo 2 (``heads`` mode, whole-
            projection q/k norms, :func:`_olmo2`), Phi-3 (fused ``qkv_proj`` and
            ``gate_up_proj``, see :func:`_phi3`), GPT-NeoX/Pythia (per-head fused QKV, parallel
            residual, ``heads`` mode; see :func:`_gpt_neox`).
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
        gelu_fix, scale_eps, bias2: the article's exactness details, switchable to measure
            what each is worth: the feed-forward rule for non-homogeneous activations, ``eps/k``
            in the norms, and the second feed-forward bias (``"sqrt"``: ``/√k``, derived;
            ``"k"``: ``/k``, the article's table).

    Returns:
        The grown model (same dtype, eval/train mode of the input); ``save_pretrained`` writes
        a plain checkpoint that ``from_pretrained`` loads with no custom code.

    Raises:
        ValueError: unsupported family (the message lists the supported ones) or bad arguments.
    """
    check_module("model", model, hf=True)
    check_int("factor", factor, 2)
    check_choice("mode", mode, MODES)
    check_choice("bias2", bias2, ("sqrt", "k"))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ARCH:
        raise ValueError(f"cannot widen model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
    _check_noise(noise)
    return _widen_with(model, _Maps(factor, mode, gelu_fix, bias2, noise, torch.Generator().manual_seed(seed)), scale_eps)


def _widen_with(model: nn.Module, maps: _Maps, scale_eps: bool = True) -> nn.Module:
    """The widening with explicit maps (the claims switch single factors through them)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        new_sd = _ARCH[model.config.model_type](maps, sd, model.config)
    return build(model, _new_config(model.config, maps.k, maps.mode, scale_eps), new_sd, f"widening {model.config.model_type}")


def _check_noise(noise: float) -> None:
    if check_number("noise", noise) < 0:
        raise ValueError(f"noise={noise!r} must be >= 0 (a relative standard deviation)")


def widen_ffn(model: nn.Module, intermediate_size: int, *, noise: float = 0.0, seed: int = 0) -> nn.Module:
    """A new model whose feed-forward blocks have ``intermediate_size`` units, same function.

    Unit ``j`` of the new block copies unit ``j mod m`` of the old one (``m`` the old size):
    its input rows (``up``, and ``gate`` for SwiGLU) and bias are copied, and the output
    projection's column of a unit copied ``c`` times is divided by ``c``, so the copies' equal
    activations add up to the old contribution. Exact for any activation (GeLU, SiLU, SwiGLU)
    and any size ``>= m``, not only multiples; the residual stream is untouched.

    Args:
        model: a supported HuggingFace model (``SUPPORTED``).
        intermediate_size: the new feed-forward width, at least the current one.
        noise, seed: symmetry breaking as in :func:`widen` (zero-sum noise on the output
            projection's columns of copied units).

    Returns:
        The grown model; ``save_pretrained`` / ``from_pretrained`` round-trip it.
    """
    check_module("model", model, hf=True)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _LAYOUT:
        raise ValueError(f"cannot widen the feed-forward of model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
    _check_noise(noise)
    prefix, _, ins, out, field = _LAYOUT[model_type]
    config = copy.deepcopy(model.config)
    m = getattr(config, field, None)
    if m is None:  # GPT-2's n_inner=None means 4 n_embd
        m = 4 * config.n_embd
    check_int("intermediate_size", intermediate_size, m)
    index = torch.arange(intermediate_size) % m
    count = torch.bincount(index, minlength=m)
    generator = torch.Generator().manual_seed(seed)
    conv1d = model_type == "gpt2"
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    base = _bert_base(sd)
    new = dict(sd)
    with torch.no_grad():
        for i in range(num_layers(config)):
            p = prefix.format(i=i, base=base)
            for name in ins:  # rows (torch layout) = units
                w = sd[p + name + ".weight"]
                new[p + name + ".weight"] = (w[:, index] if conv1d else w[index]).contiguous()
                if p + name + ".bias" in sd:
                    new[p + name + ".bias"] = sd[p + name + ".bias"][index]
            if model_type in _FUSED_FFN_IN:  # [gate; up] stacked: copy each half's units
                w = sd[p + _FUSED_FFN_IN[model_type] + ".weight"]
                new[p + _FUSED_FFN_IN[model_type] + ".weight"] = torch.cat([w[:m][index], w[m:][index]])
            w = sd[p + out + ".weight"]
            w = w.T if conv1d else w  # (d, m)
            w = zero_sum_noise(w[:, index] / count[index].to(w.dtype), index, noise, generator)
            new[p + out + ".weight"] = (w.T if conv1d else w).contiguous()
    setattr(config, field, intermediate_size)
    return build(model, config, new, f"widening the feed-forward of {model_type}")
