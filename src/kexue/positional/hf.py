"""Hugging Face models on kexue's rotary kernel: a reversible patch of ``apply_rotary_pos_emb``.

transformers' decoder families rotate queries and keys in a module-level function of their
modeling file, ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``, with cos/sin tables
that repeat each pair's angle twice (``cat(θ, θ)``, the half layout) and rotate the first
``cos.shape[-1]`` coordinates (all of them, or Phi-3's rotated share). :func:`patch_hf_rope`
swaps that function for :func:`hf_apply_rotary_pos_emb`, which hands one copy of the angles to
:func:`kexue.positional.rope.apply_rotary` (the fused CPU kernel where it applies, plain torch
elsewhere). The model's weights, cache and outputs are untouched; only the arithmetic path
changes, so logits agree to float32 rounding and greedy decoding gives the same tokens.

The patch is per modeling module: while it is active, every model of that family in the
process uses it (transformers looks the function up in its module at each call). Patches
nest; each :meth:`RopePatch.remove` (or the end of its ``with`` block) undoes its own.

Example::

    from kexue.positional.hf import patch_hf_rope

    with patch_hf_rope(model):            # a LlamaForCausalLM, Qwen2, Mistral, Qwen3 or Phi-3 model
        out = model.generate(**inputs, max_new_tokens=32)
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import torch

from kexue.positional.rope import apply_rotary

__all__ = ["SUPPORTED_FAMILIES", "RopePatch", "hf_apply_rotary_pos_emb", "patch_hf_rope"]

# model_type -> the modeling module whose apply_rotary_pos_emb is replaced
SUPPORTED_FAMILIES = {
    "llama": "transformers.models.llama.modeling_llama",
    "mistral": "transformers.models.mistral.modeling_mistral",
    "qwen2": "transformers.models.qwen2.modeling_qwen2",
    "qwen3": "transformers.models.qwen3.modeling_qwen3",
    "phi3": "transformers.models.phi3.modeling_phi3",
}
_LOCK = threading.Lock()
_ORIGINALS: dict[str, Any] = {}  # module name -> transformers' own function
_ACTIVE: dict[str, int] = {}  # module name -> patches in force


def hf_apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` on kexue's kernel (same arguments, same results).

    ``cos``/``sin`` are transformers' ``(B, T, R)`` tables, each angle twice; the first half is
    kexue's ``(B, T, R/2)`` table. ``unsqueeze_dim`` is where the head dimension of ``q``/``k``
    is (1 for ``(B, H, T, D)``).
    """
    half = cos.shape[-1] // 2
    c = cos[..., :half].unsqueeze(unsqueeze_dim)
    s = sin[..., :half].unsqueeze(unsqueeze_dim)
    return apply_rotary(q, c, s), apply_rotary(k, c, s)


class RopePatch:
    """An active patch (see :func:`patch_hf_rope`); a context manager, or call :meth:`remove`."""

    def __init__(self, module_name: str) -> None:
        self.module_name = module_name
        self._active = True

    def remove(self) -> None:
        """Undo this patch (the last one out restores transformers' function); idempotent."""
        with _LOCK:
            if not self._active:
                return
            self._active = False
            _ACTIVE[self.module_name] -= 1
            if _ACTIVE[self.module_name] == 0:
                module = importlib.import_module(self.module_name)
                module.apply_rotary_pos_emb = _ORIGINALS.pop(self.module_name)
                del _ACTIVE[self.module_name]

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> RopePatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def patch_hf_rope(model: Any) -> RopePatch:
    """Route ``model``'s rotary embedding through kexue's kernel; returns the :class:`RopePatch`.

    Raises:
        ValueError: ``model`` is not a transformers model of a supported family (the error
            lists them).
    """
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"patch_hf_rope supports transformers models of the families {', '.join(SUPPORTED_FAMILIES)}; "
                         f"got {type(model).__name__} (model_type {family!r})")
    name = SUPPORTED_FAMILIES[family]
    module = importlib.import_module(name)
    with _LOCK:
        if name not in _ACTIVE:
            _ORIGINALS[name] = module.apply_rotary_pos_emb
            module.apply_rotary_pos_emb = hf_apply_rotary_pos_emb
            _ACTIVE[name] = 0
        _ACTIVE[name] += 1
    return RopePatch(name)
