"""Function-preserving growth of the number of experts of a mixture-of-experts model.

A Mixtral-style sparse block computes, for a token ``x`` with router logits ``l = W_r x``
(one per expert), ``p = softmax(l)``, the set ``T`` of the ``K`` largest ``p_e``, the
renormalised weights ``w_e = p_e / Σ_{f∈T} p_f`` and the output ``Σ_{e∈T} w_e E_e(x)``.

:func:`add_experts` copies every expert ``c`` times, router row included, and sets the number
of experts per token to ``c K``:

* the ``c`` copies of expert ``e`` have equal logits ``l_e``, so the softmax over the ``c E``
  entries gives each copy ``p_e / c`` (the denominator gains a factor ``c``);
* the ``c K`` largest entries are exactly the ``c`` copies of each of the old top ``K``
  (every copy of an old top-``K`` expert beats every copy of the others), barring ties in
  ``p`` that the old router would also have had to break;
* the renormalised weight of one copy is ``(p_e/c) / Σ_{f∈T} c (p_f / c) = w_e / c``, and the
  ``c`` copies compute the same ``E_e(x)``: together ``w_e E_e(x)``, the old term.

The mixture is unchanged. Keeping ``K`` instead would select ``K`` copies of the top
``⌈K/c⌉`` experts only: a different function (tested). Without renormalisation (weights
``p`` themselves, Qwen3-MoE's ``norm_topk_prob=False``) the argument is the same:
``c · p_e / c = p_e``.

Symmetry breaking: the copies' ``down_proj`` get noise summing to zero over the ``c`` copies
of each expert. The block is linear in ``down_proj`` and every copy has weight ``w_e / c``,
so the sum over the copies, and the function, is unchanged, while the copies' gradients
(including their ``gate_up_proj``'s) now differ. The router rows stay equal: any difference
would shift the weights. (The router's load-balancing loss, used in training only, counts
copies as separate experts.)
"""

from __future__ import annotations

import copy

import torch

from kexue._shared import check_int, check_module, num_layers
from kexue.growth._build import ModelT, build, check_noise, hf_config, zero_sum_noise

__all__ = ["MOE", "add_experts"]

# model_type -> (router weight (E, d), expert parameters with the expert axis first, the one that gets noise,
#                config field of the expert count)
MOE: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "mixtral": (
        "mlp.gate.weight",
        ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
        "mlp.experts.down_proj",
        "num_local_experts",
    ),
    "qwen3_moe": (
        "mlp.gate.weight",
        ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
        "mlp.experts.down_proj",
        "num_experts",
    ),
}


def _noisy_copies(w: torch.Tensor, copies: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Zero-sum noise over each group of ``copies`` consecutive experts (axis 0)."""
    index = torch.arange(w.shape[0]) // copies
    return zero_sum_noise(w.movedim(0, -1), index, noise, generator).movedim(-1, 0).contiguous()


def add_experts(model: ModelT, factor: int, *, noise: float = 0.0, seed: int = 0) -> ModelT:
    """A new model with every expert copied ``factor`` times and ``factor ×`` the experts per token.

    See the module docstring for why the function is unchanged. Expert ``e`` of the old model
    becomes experts ``c·e … c·e + c - 1``.

    Args:
        model: a HuggingFace mixture-of-experts model of a supported family (``MOE``: Mixtral,
            Qwen3-MoE with or without ``norm_topk_prob``; its dense layers are left as they are).
        factor: ``c >= 2``: ``num_local_experts`` and ``num_experts_per_tok`` are multiplied by it.
        noise: symmetry breaking (standard deviation ``noise × std(down_proj)``, zero-sum over
            the copies of each expert); ``0`` keeps exact copies.
        seed: seed of that noise.

    Returns:
        The grown model (same class, dtype and device, the meta device included);
        ``save_pretrained`` / ``from_pretrained`` round-trip it.

    Raises:
        ValueError: an unsupported family (the message lists the supported ones) or bad arguments.

    Example:
        >>> from kexue.growth.moe import add_experts
        >>> from kexue.growth.zoo import tiny_model
        >>> add_experts(tiny_model("mixtral"), 2).config.num_local_experts
        8
    """
    check_module("model", model, hf=True)
    check_int("factor", factor, 2)
    check_noise(noise)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MOE:
        raise ValueError(f"cannot add experts to model_type {model_type!r}; supported: {', '.join(MOE)}")
    router, experts, noisy, field = MOE[model_type]
    generator = torch.Generator().manual_seed(seed)
    sd = {n: t.detach() for n, t in model.state_dict().items()}
    new = dict(sd)
    with torch.no_grad():
        for i in range(num_layers(hf_config(model))):
            p = f"model.layers.{i}."
            if p + router not in sd:  # a dense layer (Qwen3-MoE's mlp_only_layers)
                continue
            for name in (router, *experts):
                new[p + name] = sd[p + name].repeat_interleave(factor, dim=0)
            new[p + noisy] = _noisy_copies(new[p + noisy], factor, noise, generator)
    config = copy.deepcopy(hf_config(model))
    setattr(config, field, getattr(config, field) * factor)
    config.num_experts_per_tok = config.num_experts_per_tok * factor
    return build(model, config, new, f"adding experts to {model_type}")
