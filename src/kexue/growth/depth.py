"""Function-preserving depth growth: insert blocks that are the identity at initialisation.

In a pre-norm block ``x + Attn(Norm(x)) + FFN(Norm(·))`` the block is the identity when the
attention output projection and the feed-forward output projection (weights and biases) are
zero: each branch adds exactly 0. The inserted block copies its neighbour's other weights, so
it starts from trained attention and feed-forward weights (as in stacking methods) and only the
output projections start from zero; their gradients are non-zero, so training moves them.

Per-layer settings move with their layers:

* per-layer config lists (``layer_types``: Qwen2's sliding-window layers past
  ``max_window_layers``, Mistral/LLaMA-style per-layer attention types) are rebuilt, and an
  inserted block takes the type of the layer whose weights it copies (the layer it follows);
* Qwen3-MoE's dense layers (``mlp_only_layers``, ``decoder_sparse_step``) are rebuilt the
  same way (:func:`_dense_layers_follow`);
* Gemma 2/3 alternate sliding-window and global layers (``layer_types``), and Gemma 3 gives
  each type its own RoPE base: both follow a layer through ``layer_types``, so a sliding
  layer stays sliding, with its local base, wherever it moves;
* GPT-2's ``scale_attn_by_inverse_layer_idx`` divides layer ``i``'s attention scores by
  ``i + 1``. A layer moved from index ``i`` to ``j`` would divide by ``j + 1``. Its query
  projection (the first ``n_embd`` columns of ``c_attn``, weight and bias) is multiplied by
  ``(j + 1)/(i + 1)``, which cancels exactly, since the scores are linear in the query. An
  inserted copy gets the same factor for its own index, so it attends like its source.

Post-norm models (BERT: ``LayerNorm(x + branch(x))``) have no identity block of this form:
with zero branches the block still applies ``LayerNorm`` to ``x``, which is not the identity
(``x`` is itself a LayerNorm output with learned γ, β); :func:`deepen` refuses them, and OPT
with ``do_layer_norm_before=False`` likewise. Sandwich norms on the branch outputs (OLMo 2,
Gemma 2/3) are no obstacle: an RMSNorm of a zero branch is zero. In Mixtral (and Qwen3-MoE) the feed-forward
branch is ``Σ_e w_e E_e(x)``: zeroing every expert's ``down_proj`` makes it zero whatever the
router picks.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

import torch
from transformers import PretrainedConfig

from kexue._shared import check_module, num_layers
from kexue.growth._build import ModelT, build, hf_config, probing

__all__ = ["PRE_NORM", "deepen"]

PRE_NORM: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "qwen2": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "mistral": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "qwen3": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "phi3": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "olmo2": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),  # branch norms: Norm(0) = 0
    "gpt_neox": ("gpt_neox.layers", ("attention.dense", "mlp.dense_4h_to_h")),  # parallel residual too
    "gpt2": ("transformer.h", ("attn.c_proj", "mlp.c_proj")),
    "gemma": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "gemma2": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),  # sandwich norms: Norm(0) = 0
    "gemma3_text": ("model.layers", ("self_attn.o_proj", "mlp.down_proj")),
    "opt": ("model.decoder.layers", ("self_attn.out_proj", "fc2")),  # pre-LN (do_layer_norm_before) only
    "mixtral": ("model.layers", ("self_attn.o_proj", "mlp.experts.down_proj")),  # every expert's output zero
    "qwen3_moe": ("model.layers", ("self_attn.o_proj", "mlp.experts.down_proj", "mlp.down_proj")),
}  # + dense layers


def _index_compensation(
    model_type: str, config: PretrainedConfig
) -> Callable[[str, torch.Tensor, int, int], torch.Tensor] | None:
    """For settings that depend on a layer's index: ``(parameter, value, old index, new index) -> value``."""
    if model_type == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        width = config.n_embd

        def rescale_query(rest: str, value: torch.Tensor, old: int, new: int) -> torch.Tensor:
            if rest not in ("attn.c_attn.weight", "attn.c_attn.bias") or old == new:
                return value
            value = value.clone()
            value[..., :width] *= (new + 1) / (old + 1)  # Conv1D: output features last; q, k, v in that order
            return value

        return rescale_query
    return None


def _dense_layers_follow(old: PretrainedConfig, config: PretrainedConfig, plan: Sequence[tuple[int, bool]]) -> None:
    """Qwen3-MoE picks a layer's feed-forward by its index: dense if in ``mlp_only_layers`` or
    if ``(i + 1) % decoder_sparse_step ≠ 0``. The rebuilt config lists every new layer whose
    source was dense in ``mlp_only_layers`` and sets ``decoder_sparse_step = 1``, so each layer
    (and each inserted copy) keeps its source's kind."""

    def dense(i: int) -> bool:
        return i in old.mlp_only_layers or not (old.num_experts > 0 and (i + 1) % old.decoder_sparse_step == 0)

    config.mlp_only_layers = [j for j, (src, _) in enumerate(plan) if dense(src)]
    config.decoder_sparse_step = 1


def deepen(model: ModelT, after: Sequence[int]) -> ModelT:
    """A new model with an identity block inserted after each layer index in ``after``.

    Args:
        model: a pre-norm HuggingFace model (``PRE_NORM``): LLaMA, Qwen2, Mistral, Qwen3, Phi-3,
            OLMo 2, GPT-NeoX, GPT-2, Gemma, Gemma 2, Gemma 3 (text), OPT with
            ``do_layer_norm_before=True``, Mixtral and Qwen3-MoE (every expert's ``down_proj``
            zeroed).
        after: layer indices of the original model (``-1`` inserts before the first layer);
            repeated indices insert several blocks there. ``range(n)`` doubles the depth.

    Returns:
        The deeper model (same class, dtype and device, the meta device included;
        ``num_hidden_layers`` / ``n_layer`` updated).

    Raises:
        ValueError: a post-norm or unsupported family (the message lists the supported ones), or a
            layer index out of range.

    Example:
        >>> from kexue.growth import deepen
        >>> from kexue.growth.zoo import tiny_model
        >>> deepen(tiny_model("llama-tied"), range(2)).config.num_hidden_layers
        4
    """
    check_module("model", model, hf=True)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "bert":
        raise ValueError(
            "cannot deepen BERT exactly: it is post-norm, where a block with zero branches still applies "
            "LayerNorm; supported (pre-norm): " + ", ".join(PRE_NORM)
        )
    if model_type == "opt" and not hf_config(model).do_layer_norm_before:
        raise ValueError(
            "cannot deepen this OPT exactly: do_layer_norm_before=False makes it post-norm (OPT-350m), "
            "where a block with zero branches still applies LayerNorm; pre-norm OPT "
            "(do_layer_norm_before=True) is supported"
        )
    if model_type not in PRE_NORM:
        raise ValueError(f"cannot deepen model_type {model_type!r}; supported: {', '.join(PRE_NORM)}")
    n = num_layers(hf_config(model))
    after = list(after)
    for i in after:
        if isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < n:
            raise ValueError(
                f"after: layer index {i!r} is out of range; the model has layers 0..{n - 1} (-1: before the first)"
            )
    # new layer list: (source layer, is_identity_copy)
    plan = [(0, True)] * after.count(-1)
    for i in range(n):
        plan.append((i, False))
        plan += [(i, True)] * after.count(i)
    return relayered(model, plan)


def relayered(model: ModelT, plan: Sequence[tuple[int, bool]]) -> ModelT:
    """A new model whose layer ``j`` is a copy of layer ``plan[j][0]``, with its branch output
    projections zeroed where ``plan[j][1]`` (an identity block). Per-layer settings move with
    their layers (``layer_types``, Qwen3-MoE's dense layers, GPT-2's index scaling); under
    probing, identity copies are fresh parameters. :func:`deepen` and the stacking baseline
    of :mod:`kexue.growth.experiment` are plans.

    Args:
        model: a pre-norm HuggingFace model (``PRE_NORM``).
        plan: per new layer, ``(source layer index, is an identity block)``.

    Returns:
        The new model (same class, dtype and device).
    """
    old_config = hf_config(model)
    model_type = old_config.model_type
    prefix, zeroed = PRE_NORM[model_type]
    compensate = _index_compensation(model_type, old_config)
    sd = model.state_dict()
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_sd = {name: t for name, t in sd.items() if not pattern.match(name)}
    for j, (src, identity) in enumerate(plan):
        for name, t in sd.items():
            m = pattern.match(name)
            if m and int(m.group(1)) == src:
                rest = m.group(2)
                value = t.detach().clone()
                if identity and (
                    probing() or rest in zeroed or rest.rsplit(".", 1)[0] in zeroed
                ):  # a parameter or a module
                    value = torch.zeros_like(value)  # probing: inserted blocks are fresh parameters
                elif compensate is not None:
                    value = compensate(rest, value, src, j)
                new_sd[f"{prefix}.{j}.{rest}"] = value
    config = copy.deepcopy(old_config)
    if model_type == "gpt2":
        config.n_layer = len(plan)
    else:
        config.num_hidden_layers = len(plan)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[src] for src, _ in plan]
        if model_type == "qwen3_moe":
            _dense_layers_follow(old_config, config, plan)
    return build(model, config, new_sd, f"deepening {model_type}")
