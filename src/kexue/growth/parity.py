"""Parity checks: does the grown model compute the small model's function?

HF's LLaMA-family RMSNorm upcasts to float32 and back, Gemma's RMSNorm computes in float32
(``x.float()``) and the Mixtral/Qwen3-MoE routers take their softmax in float32: each caps
float64 parity at ~1e-7 whatever the weights, and the experts' default grouped matmul refuses
float64 outright. :func:`float64_norms` temporarily computes those in the input's dtype (the
experts by HF's own per-expert loop) so that float64 checks test the mathematics; HF's float32
behaviour is unchanged, and everything is restored on exit.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from kexue.growth.optim import GrowthMap

__all__ = ["float64_norms", "gradient_map_error", "gradients", "max_logit_difference", "output_scale"]


_Forward = Callable[..., Any]  # a module class's forward, self first
Inputs = dict[str, torch.Tensor]


def _exact_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


def _exact_gemma_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma's ``x / RMS(x) · (1 + w)`` in the input's dtype (HF: in float32)."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def _exact_router_forward(self: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixtral's / Qwen3-MoE's top-k router with the softmax in the input's dtype (HF: in float32)."""
    logits = torch.nn.functional.linear(hidden.reshape(-1, self.hidden_dim), self.weight)  # (tokens, E)
    top, index = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)  # (tokens, top_k)
    if getattr(self, "norm_topk_prob", True):  # Mixtral always renormalises; Qwen3-MoE by its config
        top = top / top.sum(dim=-1, keepdim=True)
    return logits, top, index


def _eager_experts_in_float64(dispatched: _Forward) -> _Forward:
    """The experts' forward: HF's own per-expert loop for float64 input (the default grouped
    matmul has no float64 kernel), the configured implementation otherwise."""
    eager = getattr(dispatched, "__wrapped__", dispatched)  # use_experts_implementation wraps the loop

    def forward(self: Any, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return (eager if hidden.dtype == torch.float64 else dispatched)(self, hidden, *args, **kwargs)

    return forward


def _always(forward: _Forward) -> Callable[[_Forward], _Forward]:
    return lambda original: forward


# (family, class name) -> (its forward -> the forward it gets inside float64_norms)
_PATCHES: dict[tuple[str, str], Callable[[_Forward], _Forward]] = {
    ("llama", "LlamaRMSNorm"): _always(_exact_forward),
    ("qwen2", "Qwen2RMSNorm"): _always(_exact_forward),
    ("mistral", "MistralRMSNorm"): _always(_exact_forward),
    ("qwen3", "Qwen3RMSNorm"): _always(_exact_forward),
    ("phi3", "Phi3RMSNorm"): _always(_exact_forward),
    ("olmo2", "Olmo2RMSNorm"): _always(_exact_forward),
    ("gemma", "GemmaRMSNorm"): _always(_exact_gemma_forward),
    ("gemma2", "Gemma2RMSNorm"): _always(_exact_gemma_forward),
    ("gemma3", "Gemma3RMSNorm"): _always(_exact_gemma_forward),
    ("mixtral", "MixtralRMSNorm"): _always(_exact_forward),
    ("mixtral", "MixtralTopKRouter"): _always(_exact_router_forward),
    ("mixtral", "MixtralExperts"): _eager_experts_in_float64,
    ("qwen3_moe", "Qwen3MoeRMSNorm"): _always(_exact_forward),
    ("qwen3_moe", "Qwen3MoeTopKRouter"): _always(_exact_router_forward),
    ("qwen3_moe", "Qwen3MoeExperts"): _eager_experts_in_float64,
}


@contextlib.contextmanager
def float64_norms() -> Iterator[None]:
    """Within the block, the RMSNorms of LLaMA/Qwen2/Mistral/Qwen3/Phi-3/OLMo 2/Mixtral/Gemma 1-3/
    Qwen3-MoE and the Mixtral/Qwen3-MoE routers compute in the input dtype, and those models'
    experts run HF's per-expert loop for float64 input.

    Example:
        >>> import torch
        >>> from kexue.growth.parity import float64_norms, max_logit_difference
        >>> from kexue.growth.zoo import randomized, tiny_model
        >>> small = randomized(tiny_model("llama-tied"))
        >>> with float64_norms():
        ...     same = max_logit_difference(small, small, {"input_ids": torch.tensor([[1, 2, 3]])})
        >>> same
        0.0
    """
    saved: list[tuple[type[nn.Module], _Forward]] = []
    for (family, cls_name), patch in _PATCHES.items():
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        cls = getattr(module, cls_name)
        saved.append((cls, cls.forward))
        cls.forward = patch(cls.forward)
    try:
        yield
    finally:
        for cls, forward in saved:
            cls.forward = forward


def _output(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def max_logit_difference(small: nn.Module, large: nn.Module, inputs: Inputs, *, widened_by: int = 1) -> float:
    """``max |out_large - out_small|`` on ``inputs`` (no grad). For a model without a head
    (hidden states out), the large model's ``rep(h)/√k`` is mapped back first.

    Args:
        small: the model before growth.
        large: the grown model.
        inputs: keyword inputs of both models (``input_ids``, ...).
        widened_by: unused (the widening factor is read off the output shapes); kept for callers.

    Returns:
        The largest absolute difference of the outputs (logits, or last hidden states).
    """
    with torch.no_grad():
        a, b = _output(small, inputs), _output(large, inputs)
        if b.shape != a.shape:
            k = b.shape[-1] // a.shape[-1]
            b = b.unflatten(-1, (a.shape[-1], k)).mean(-1) * k**0.5
        return float((b - a).abs().max())


def output_scale(model: nn.Module, inputs: Inputs) -> float:
    """``max |output|`` (logits, or last hidden states without a head): the denominator of relative parity.

    Args:
        model: a HuggingFace model.
        inputs: its keyword inputs.

    Returns:
        The largest absolute output entry.
    """
    with torch.no_grad():
        return float(_output(model, inputs).abs().max())


def gradients(model: nn.Module, inputs: Inputs) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the next-token cross-entropy on ``inputs`` (targets: the
    ids shifted by one, cyclically). Call in eval mode: no dropout, so a small and a grown
    model compute the same function.

    Args:
        model: a HuggingFace language model.
        inputs: its keyword inputs, ``input_ids`` included.

    Returns:
        ``{parameter name: gradient}`` for every parameter that received one.
    """
    model.zero_grad()
    logits = _output(model, inputs)
    ids = inputs["input_ids"]
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def gradient_map_error(small: nn.Module, large: nn.Module, gmap: GrowthMap, inputs: Inputs) -> float:
    """The gradient identity behind the Adam-state transfer, measured: ``max |g̃ − g_large|``
    over every parameter's live entries, relative to the largest gradient entry of the large
    model (parameters whose gradient is zero, an unused embedding row say, are judged on that
    scale too), with ``g̃ = g_s(j) / (n a_j)`` the map's prediction from the small model's
    gradient. Runs inside :func:`float64_norms`.

    Args:
        small: the model before growth.
        large: the grown model.
        gmap: the growth's :class:`~kexue.growth.optim.GrowthMap`.
        inputs: keyword inputs of both models.

    Returns:
        The relative worst error (0 for a map that predicts the gradients exactly).
    """
    with float64_norms():
        g_small, g_large = gradients(small, inputs), gradients(large, inputs)
    predicted = gmap.gradients(g_small)
    scale = max(float(g.abs().max()) for g in g_large.values())
    worst = 0.0
    for name, g in g_large.items():
        live = (gmap.scale[name] > 0).view_as(g)
        if live.any():
            worst = max(worst, float((predicted[name].view_as(g)[live] - g[live]).abs().max()))
    return worst / max(scale, 1e-300)
