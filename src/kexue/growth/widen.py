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

from kexue._shared import check_choice, check_int

__all__ = ["SUPPORTED", "widen"]

SUPPORTED = ("bert", "gpt2", "llama", "qwen2", "mistral")
MODES = ("heads", "head_dim")


def _rep(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return t.repeat_interleave(k, dim=dim)


def _tile(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    return torch.cat([t] * k, dim=dim)


class _Maps:
    """The per-role maps for factor ``k`` (weights in ``(out, in)`` layout)."""

    def __init__(self, k: int, mode: str, gelu_fix: bool = True, bias2: str = "sqrt") -> None:
        self.k, self.mode, self.gelu_fix, self.bias2 = k, mode, gelu_fix, bias2
        self.s = math.sqrt(k)
        self.q4 = k ** 0.25

    # residual-stream vectors and norms
    def stream(self, t: torch.Tensor) -> torch.Tensor:  # (…, d) -> (…, k d)
        return _rep(t, -1, self.k) / self.s

    def embedding(self, w: torch.Tensor) -> torch.Tensor:  # (V, d)
        return _rep(w, 1, self.k) / self.s

    def lm_head(self, w: torch.Tensor) -> torch.Tensor:  # (V, d), untied
        return _rep(w, 1, self.k) / self.s

    # attention
    def qk(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return _tile(_rep(w, 1, k), 0, k) / self.s, None if b is None else _tile(b, 0, k)
        return _rep(_rep(w, 1, k), 0, k) / k * self.q4, None if b is None else _rep(b, 0, k) / self.s * self.q4

    def v(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if self.mode == "heads":
            return _tile(_rep(w, 1, k), 0, k) / self.s, None if b is None else _tile(b, 0, k)
        return _rep(_rep(w, 1, k), 0, k) / k, None if b is None else _rep(b, 0, k) / self.s

    def o(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        bias = None if b is None else _rep(b, 0, k) / self.s
        if self.mode == "heads":
            return _rep(_tile(w, 1, k), 0, k) / (k * self.s), bias
        return _rep(_rep(w, 1, k), 0, k) / k, bias

    # feed-forward
    def ffn_in(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        if not self.gelu_fix:  # the plain linear-layer rule: exact only for homogeneous activations
            return _rep(_rep(w, 1, k), 0, k) / k, None if b is None else _rep(b, 0, k) / self.s
        return _rep(_rep(w, 1, k), 0, k) / self.s, None if b is None else _rep(b, 0, k)

    def ffn_out(self, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.k
        scale = k if not self.gelu_fix else k * self.s
        bias = None if b is None else _rep(b, 0, k) / (self.s if self.bias2 == "sqrt" else k)
        return _rep(_rep(w, 1, k), 0, k) / scale, bias


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


def _llama(m: _Maps, sd: dict, config: Any) -> dict:
    new: dict[str, torch.Tensor] = {}
    for name in sd:
        if name.endswith("embed_tokens.weight"):
            new[name] = m.embedding(sd[name])
        elif name == "lm_head.weight":
            new[name] = m.lm_head(sd[name])
        elif re.search(r"(layernorm|norm)\.weight$", name):
            _norm(m, sd, name.removesuffix(".weight"), new)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        _linear(m.qk, sd, p + "self_attn.q_proj", new)
        _linear(m.qk, sd, p + "self_attn.k_proj", new)
        _linear(m.v, sd, p + "self_attn.v_proj", new)
        _linear(m.o, sd, p + "self_attn.o_proj", new)
        _linear(m.ffn_in, sd, p + "mlp.gate_proj", new)
        _linear(m.ffn_in, sd, p + "mlp.up_proj", new)
        _linear(m.ffn_out, sd, p + "mlp.down_proj", new)
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
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        w, b = sd[p + "attn.c_attn.weight"].T, sd[p + "attn.c_attn.bias"]  # (3d, d): q, k, v stacked
        parts = [m.qk(w[:d], b[:d]), m.qk(w[d : 2 * d], b[d : 2 * d]), m.v(w[2 * d :], b[2 * d :])]
        new[p + "attn.c_attn.weight"] = torch.cat([x[0] for x in parts]).T.contiguous()
        new[p + "attn.c_attn.bias"] = torch.cat([x[1] for x in parts])
        _linear(m.o, sd, p + "attn.c_proj", new, conv1d=True)
        _linear(m.ffn_in, sd, p + "mlp.c_fc", new, conv1d=True)
        _linear(m.ffn_out, sd, p + "mlp.c_proj", new, conv1d=True)
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
    base = "bert." if any(n.startswith("bert.") for n in sd) else ""
    for i in range(config.num_hidden_layers):
        p = f"{base}encoder.layer.{i}."
        _linear(m.qk, sd, p + "attention.self.query", new)
        _linear(m.qk, sd, p + "attention.self.key", new)
        _linear(m.v, sd, p + "attention.self.value", new)
        _linear(m.o, sd, p + "attention.output.dense", new)
        _linear(m.ffn_in, sd, p + "intermediate.dense", new)
        _linear(m.ffn_out, sd, p + "output.dense", new)
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


_ARCH: dict[str, Callable[[_Maps, dict, Any], dict]] = {"llama": _llama, "qwen2": _llama, "mistral": _llama, "gpt2": _gpt2, "bert": _bert}


def _new_config(config: Any, k: int, mode: str, scale_eps: bool) -> Any:
    c = copy.deepcopy(config)
    t = config.model_type
    eps_div = k if scale_eps else 1
    if t == "gpt2":
        c.n_embd = config.n_embd * k
        c.n_inner = None if config.n_inner is None else config.n_inner * k
        c.n_head = config.n_head * (k if mode == "heads" else 1)
        c.layer_norm_epsilon = config.layer_norm_epsilon / eps_div
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


def widen(model: nn.Module, factor: int, *, mode: str = "heads", gelu_fix: bool = True,
          scale_eps: bool = True, bias2: str = "sqrt") -> nn.Module:
    """A new model of the same class, ``factor`` times wider, computing the same function.

    Args:
        model: a HuggingFace model of a supported family (``SUPPORTED``): BERT (any head in
            ``BertModel``/``BertForMaskedLM``), GPT-2, LLaMA, Qwen2, Mistral.
        factor: integer ``k >= 2``: hidden size, feed-forward size and (``mode="heads"``) the
            number of heads are multiplied by it.
        mode: ``"heads"`` (keep the head dimension, copy heads; exact with RoPE) or
            ``"head_dim"`` (the article's: wider heads; inexact with RoPE).
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
    check_int("factor", factor, 2)
    check_choice("mode", mode, MODES)
    check_choice("bias2", bias2, ("sqrt", "k"))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ARCH:
        raise ValueError(f"cannot widen model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
    maps = _Maps(factor, mode, gelu_fix, bias2)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    new_sd = _ARCH[model_type](maps, sd, model.config)
    config = _new_config(model.config, factor, mode, scale_eps)
    dtype = next(model.parameters()).dtype
    grown = type(model)(config).to(dtype)
    missing, unexpected = grown.load_state_dict(new_sd, strict=False)
    tied = {n for n in missing if n in ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")}
    real_missing = [n for n in missing if n not in tied and not n.endswith(("position_ids", "token_type_ids", "attn.bias", "attn.masked_bias"))]
    if real_missing or unexpected:
        raise RuntimeError(f"internal error widening {model_type}: missing {real_missing[:5]}, unexpected {list(unexpected)[:5]}")
    grown.train(model.training)
    return grown
