"""Tiny random models of every family and variant the growth operators support.

One list shared by the tests and by ``kexue reproduce growth``'s parity table: every entry is
one configuration variant (hidden size 16, 2 layers, a 64-token vocabulary), built fresh by
:func:`tiny_model`, with random weights far from initialisation by :func:`randomized`, so
that every weight matters. :func:`operators` says which growth operators apply to an entry.

Example:
    >>> from kexue.growth.zoo import operators, tiny_model
    >>> model = tiny_model("gemma2-sandwich-softcap")
    >>> operators("gemma2-sandwich-softcap")
    ('widen-heads', 'widen_ffn', 'deepen')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from kexue._shared import check_choice
from kexue.growth._build import ModelT

__all__ = ["OPERATORS", "ZOO", "Operator", "operators", "randomized", "tiny_model", "tiny_models"]

# the growth operators a zoo entry can take
Operator = Literal["widen-heads", "widen-head_dim", "widen_ffn", "deepen", "add_experts"]
OPERATORS: tuple[Operator, ...] = get_args(Operator)

_SMALL: dict[str, Any] = dict(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4
)
_ROPE_PARTIAL: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}


def _llama(tied: bool) -> PreTrainedModel:
    return LlamaForCausalLM(LlamaConfig(**_SMALL, num_key_value_heads=4 if tied else 2, tie_word_embeddings=tied))


def _qwen2() -> PreTrainedModel:
    return Qwen2ForCausalLM(Qwen2Config(**_SMALL, num_key_value_heads=2))


def _qwen3() -> PreTrainedModel:
    return Qwen3ForCausalLM(Qwen3Config(**_SMALL, num_key_value_heads=2, head_dim=8))  # head_dim ≠ hidden/heads


def _phi3() -> PreTrainedModel:
    return Phi3ForCausalLM(
        Phi3Config(
            **_SMALL,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            rope_parameters={**_ROPE_PARTIAL, "partial_rotary_factor": 0.5},
        )
    )  # fused, half rotary


def _neox(parallel: bool) -> PreTrainedModel:
    if parallel:  # per-head fused QKV, quarter rotary
        return GPTNeoXForCausalLM(
            GPTNeoXConfig(
                **_SMALL,
                use_parallel_residual=True,
                bos_token_id=0,
                eos_token_id=0,
                rope_parameters={**_ROPE_PARTIAL, "partial_rotary_factor": 0.25},
            )
        )
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(**_SMALL, use_parallel_residual=False, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    )


def _olmo2() -> PreTrainedModel:
    return Olmo2ForCausalLM(
        Olmo2Config(**_SMALL, num_key_value_heads=2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    )


def _gpt2() -> PreTrainedModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
    )


def _bert() -> PreTrainedModel:
    return BertForMaskedLM(BertConfig(**_SMALL, max_position_embeddings=32))


def _gemma() -> PreTrainedModel:
    return GemmaForCausalLM(GemmaConfig(**_SMALL, num_key_value_heads=2, head_dim=8))  # tied, √d embedding scale


def _gemma2() -> PreTrainedModel:
    # sandwich norms, both soft-caps small enough to bite, query_pre_attn_scalar ≠ head_dim, untied head,
    # alternating sliding (window 4 < the tests' 12 tokens) and global layers
    return Gemma2ForCausalLM(
        Gemma2Config(
            **_SMALL,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=5,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=5.0,
            sliding_window=4,
            tie_word_embeddings=False,
        )
    )


def _gemma3() -> PreTrainedModel:
    # per-head (1 + w) q/k norms; the sliding layer has its own (here very different) RoPE base
    return Gemma3ForCausalLM(
        Gemma3TextConfig(
            **_SMALL,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=5,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        )
    )


def _opt(
    pre_ln: bool, proj: int = 16, affine: bool = True, bias: bool = True, final_norm: bool = True
) -> PreTrainedModel:
    return OPTForCausalLM(
        OPTConfig(
            vocab_size=64,
            hidden_size=16,
            ffn_dim=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=proj,
            do_layer_norm_before=pre_ln,
            layer_norm_elementwise_affine=affine,
            enable_bias=bias,
            _remove_final_layer_norm=not final_norm,
        )
    )


def _mixtral() -> PreTrainedModel:
    # HF's default grouped matmul needs 16-byte strides (widen_ffn's odd widths fail in float32): the per-expert loop
    return MixtralForCausalLM(
        MixtralConfig(
            **_SMALL,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            experts_implementation="eager",  # type: ignore[call-arg]  # HF's typed signature omits the base kwargs
        )
    )


def _qwen3_moe() -> PreTrainedModel:
    # layer 1 dense (mlp_only_layers), top-k weights not renormalised
    return Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            **_SMALL,
            num_key_value_heads=2,
            head_dim=8,  # type: ignore[call-arg]  # HF's typed signature omits head_dim and experts_implementation
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            mlp_only_layers=[1],
            norm_topk_prob=False,
            experts_implementation="eager",
        )
    )  # as for Mixtral


# name -> (builder, operators that apply)
_RoPE: tuple[Operator, ...] = (
    "widen-heads",
    "widen_ffn",
    "deepen",
)  # head_dim widening is inexact under RoPE: refused or not listed
ZOO: dict[str, tuple[Callable[[], PreTrainedModel], tuple[Operator, ...]]] = {
    "llama-gqa-untied": (lambda: _llama(False), _RoPE),
    "llama-tied": (lambda: _llama(True), _RoPE),
    "qwen2-bias-gqa": (_qwen2, _RoPE),
    "qwen3-qk-norm": (_qwen3, _RoPE),
    "phi3-fused-partial": (_phi3, _RoPE),
    "neox-parallel-partial": (lambda: _neox(True), _RoPE),
    "olmo2-branch-norms": (_olmo2, _RoPE),
    "neox-sequential-tied": (lambda: _neox(False), _RoPE),
    "gpt2": (_gpt2, ("widen-heads", "widen-head_dim", "widen_ffn", "deepen")),
    "bert-mlm": (_bert, ("widen-heads", "widen-head_dim", "widen_ffn")),  # post-norm: no identity block
    "gemma-tied": (_gemma, _RoPE),
    "gemma2-sandwich-softcap": (_gemma2, _RoPE),
    "gemma3-qk-norm-local-rope": (_gemma3, _RoPE),
    "opt-pre-ln": (lambda: _opt(True), ("widen-heads", "widen-head_dim", "widen_ffn", "deepen")),
    "opt-post-ln-proj": (
        lambda: _opt(False, proj=8),
        ("widen-heads", "widen-head_dim", "widen_ffn"),
    ),  # OPT-350m's shape
    "opt-post-ln-tied": (lambda: _opt(False), ("widen-heads", "widen_ffn")),
    "opt-no-bias-no-affine": (lambda: _opt(True, affine=False, bias=False), ("widen-heads", "widen_ffn", "deepen")),
    # pre-LN without the decoder's final LayerNorm (OPT-350m's converted checkpoints): the tied head is untied
    "opt-pre-ln-no-final-norm": (lambda: _opt(True, final_norm=False), ("widen-heads", "widen_ffn", "deepen")),
    "mixtral": (_mixtral, ("widen-heads", "widen_ffn", "deepen", "add_experts")),
    "qwen3-moe-dense-layer": (_qwen3_moe, ("widen-heads", "widen_ffn", "deepen", "add_experts")),
}


def tiny_model(name: str) -> PreTrainedModel:
    """A fresh tiny model of the zoo entry ``name`` (HF's random initialisation, float32).

    Args:
        name: a key of ``ZOO``.

    Returns:
        The model.

    Example:
        >>> tiny_model("gpt2").config.n_embd
        16
    """
    check_choice("name", name, tuple(ZOO))
    return ZOO[name][0]()


def tiny_models() -> dict[str, PreTrainedModel]:
    """Every zoo entry, freshly built: ``{name: model}``."""
    return {name: tiny_model(name) for name in ZOO}


def operators(name: str) -> tuple[Operator, ...]:
    """The growth operators that apply exactly to the zoo entry ``name`` (a subset of ``OPERATORS``).

    Args:
        name: a key of ``ZOO``.

    Returns:
        The operators' names.
    """
    check_choice("name", name, tuple(ZOO))
    return ZOO[name][1]


def randomized(model: ModelT, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> ModelT:
    """``model`` with every parameter drawn from ``N(0, 0.3²)`` (far from initialisation: every
    weight, including the norms' and the biases', matters), in ``dtype`` and eval mode.

    Args:
        model: the model, changed in place.
        seed: the weights' seed.
        dtype: the dtype it is cast to.

    Returns:
        ``model``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.to(dtype).eval()
