"""Parity checks: does the grown model compute the small model's function?

HF's LLaMA-family RMSNorm upcasts to float32 and back, which caps float64 parity at ~1e-7
whatever the weights; :func:`float64_norms` temporarily computes those norms in the input's
dtype so that float64 checks test the mathematics (HF's float32 behaviour is unchanged outside).
"""

from __future__ import annotations

import contextlib
import importlib

import torch

__all__ = ["float64_norms", "max_logit_difference", "output_scale"]

_RMS = {"llama": "LlamaRMSNorm", "qwen2": "Qwen2RMSNorm", "mistral": "MistralRMSNorm", "qwen3": "Qwen3RMSNorm", "phi3": "Phi3RMSNorm",
        "olmo2": "Olmo2RMSNorm"}


def _exact_forward(self, hidden: torch.Tensor) -> torch.Tensor:
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def float64_norms():
    """Within the block, LLaMA/Qwen2/Mistral/Qwen3/Phi-3/OLMo 2 RMSNorm compute in the input dtype."""
    saved = []
    for family, cls_name in _RMS.items():
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        cls = getattr(module, cls_name)
        saved.append((cls, cls.forward))
        cls.forward = _exact_forward
    try:
        yield
    finally:
        for cls, forward in saved:
            cls.forward = forward


def _output(model, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def max_logit_difference(small, large, inputs: dict, *, widened_by: int = 1) -> float:
    """``max |out_large - out_small|`` on ``inputs`` (no grad). For a model without a head
    (hidden states out), the large model's ``rep(h)/√k`` is mapped back first."""
    with torch.no_grad():
        a, b = _output(small, inputs), _output(large, inputs)
        if b.shape != a.shape:
            k = b.shape[-1] // a.shape[-1]
            b = b.unflatten(-1, (a.shape[-1], k)).mean(-1) * k ** 0.5
        return float((b - a).abs().max())


def output_scale(model, inputs: dict) -> float:
    """``max |output|`` (logits, or last hidden states without a head): the denominator of relative parity."""
    with torch.no_grad():
        return float(_output(model, inputs).abs().max())
