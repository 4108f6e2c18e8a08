"""Hugging Face models on kexue's rotary kernel: a reversible patch of ``apply_rotary_pos_emb``.

transformers' decoder families rotate queries and keys in a module-level function of their
modeling file, ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``, with cos/sin tables
that repeat each pair's angle twice (``cat(θ, θ)``, the half layout) and rotate the first
``cos.shape[-1]`` coordinates (all of them, or Phi-3's rotated share). :func:`patch_hf_rope`
swaps that function for :func:`hf_apply_rotary_pos_emb_` (in place during inference, the default)
or :func:`hf_apply_rotary_pos_emb`, which hand one copy of the angles to
:func:`kexue.positional.rope.apply_rotary_qk` (queries and keys in one call of the fused CPU
kernel where it applies, plain torch elsewhere). The model's weights, cache and outputs are untouched; only the
arithmetic path changes, so logits agree to float32 rounding and greedy decoding gives the same tokens.

Precision: the tables are transformers' own (float32 angles with autocast off, cos/sin cast to
the model's dtype), and in a bfloat16/float16 model each product rounds to that dtype before
the sum (``rounding="products"`` of :func:`kexue.positional.rope.apply_rotary`): bit-identical
to transformers' ``q * cos + rotate_half(q) * sin``, so a ``model.to(torch.bfloat16)`` decodes
transformers' own tokens. Rounding the sum once instead would be more accurate, but it moves
bfloat16 logits by an ulp, enough to flip near-tied greedy choices of a random model. The
patched function reads nothing back to the host (no synchronisation per layer on a GPU).

The patch is per modeling module: while it is active, every model of that family in the
process uses it (transformers looks the function up in its module at each call). Patches
nest; each :meth:`RopePatch.remove` (or the end of its ``with`` block) undoes its own.

Example::

    from kexue.positional.hf import patch_hf_rope

    with patch_hf_rope(model):            # a LlamaForCausalLM, Qwen2, Mistral, Qwen3 or Phi-3 model
                                          # (in_place=False to rotate out of place)
        out = model.generate(**inputs, max_new_tokens=32)
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import torch

from kexue._shared import check_bool
from kexue.positional.rope import apply_rotary_qk

__all__ = ["SUPPORTED_FAMILIES", "RopePatch", "hf_apply_rotary_pos_emb", "hf_apply_rotary_pos_emb_", "patch_hf_rope"]

# model_type -> the modeling module whose apply_rotary_pos_emb is replaced
SUPPORTED_FAMILIES = {
    "llama": "transformers.models.llama.modeling_llama",
    "mistral": "transformers.models.mistral.modeling_mistral",
    "qwen2": "transformers.models.qwen2.modeling_qwen2",
    "qwen3": "transformers.models.qwen3.modeling_qwen3",
    "phi3": "transformers.models.phi3.modeling_phi3",
}
_FUNCTION = "apply_rotary_pos_emb"  # the modeling modules' function that the patch swaps
_LOCK = threading.Lock()
_ORIGINALS: dict[str, Any] = {}  # module name -> transformers' own function
_ACTIVE: dict[str, int] = {}  # module name -> patches in force
_MODE: dict[str, bool] = {}  # module name -> in_place of the patches in force


def hf_apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` on kexue's kernel (same arguments, same results).

    Its signature is transformers' own (``unsqueeze_dim`` positional too), so it drops into a modeling module.

    Args:
        q: ``(B, H, T, D)`` queries.
        k: ``(B, H_kv, T, D)`` keys.
        cos: transformers' ``(B, T, R)`` table, each angle twice; the first half is kexue's
            ``(B, T, R/2)`` table.
        sin: the same for sine.
        unsqueeze_dim: where the head dimension of ``q``/``k`` is (1 for ``(B, H, T, D)``).

    Returns:
        ``(q_rotated, k_rotated)``.
    """
    return apply_rotary_qk(q, k, *_tables(cos, sin, unsqueeze_dim), rounding="products")


def hf_apply_rotary_pos_emb_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hf_apply_rotary_pos_emb` rotating ``q`` and ``k`` in place when no gradient is needed.

    Inside transformers' attention ``q`` and ``k`` are fresh projections used nowhere else, so
    rotating them in place is safe there and saves allocating two outputs; called on tensors
    of your own, it overwrites them. With gradients required it rotates out of place.

    Args:
        q, k, cos, sin, unsqueeze_dim: as in :func:`hf_apply_rotary_pos_emb`.

    Returns:
        ``(q, k)`` rotated (the same tensors when rotated in place).
    """
    c, s = _tables(cos, sin, unsqueeze_dim)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return apply_rotary_qk(q, k, c, s, rounding="products")
    return apply_rotary_qk(q, k, c, s, out=(q, k), rounding="products")


def _tables(cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = cos.shape[-1] // 2
    return cos[..., :half].unsqueeze(unsqueeze_dim), sin[..., :half].unsqueeze(unsqueeze_dim)


class RopePatch:
    """An active patch (see :func:`patch_hf_rope`); a context manager, or call :meth:`remove`.

    Args:
        module_name: the modeling module whose function is patched.
    """

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
                setattr(module, _FUNCTION, _ORIGINALS.pop(self.module_name))
                del _ACTIVE[self.module_name], _MODE[self.module_name]

    @property
    def active(self) -> bool:
        """Whether this patch is still in force."""
        return self._active

    def __enter__(self) -> RopePatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def patch_hf_rope(model: Any, *, in_place: bool = True) -> RopePatch:
    """Route ``model``'s rotary embedding through kexue's kernel; returns the :class:`RopePatch`.

    Args:
        model: a transformers model of one of :data:`SUPPORTED_FAMILIES`.
        in_place: rotate queries and keys in place during inference
            (:func:`hf_apply_rotary_pos_emb_`, the default): the same results without
            allocating two outputs per layer, whose page faults cost more than the rotation
            itself on CPU (6.3 ms against 2.3 ms per layer in a 4 x 1024-token LLaMA prefill
            here). Safe inside transformers' attention, where ``q`` and ``k`` are fresh
            projections (views of a fused ``qkv_proj`` for Phi-3, whose value slice is
            disjoint); it would overwrite tensors you pass to the patched function yourself.
            With gradients required the rotation is out of place either way. Patches of one
            family in force together must agree on it.

    Returns:
        The :class:`RopePatch` (a context manager).

    Raises:
        ValueError: ``model`` is not a transformers model of a supported family (the error
            lists them), or ``in_place`` differs from a patch already in force for the family.
    """
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"patch_hf_rope supports transformers models of the families {', '.join(SUPPORTED_FAMILIES)}; "
            f"got {type(model).__name__} (model_type {family!r})"
        )
    check_bool("in_place", in_place)
    name = SUPPORTED_FAMILIES[family]
    module = importlib.import_module(name)
    with _LOCK:
        if name not in _ACTIVE:
            _ORIGINALS[name] = getattr(module, _FUNCTION)
            setattr(module, _FUNCTION, hf_apply_rotary_pos_emb_ if in_place else hf_apply_rotary_pos_emb)
            _ACTIVE[name], _MODE[name] = 0, in_place
        elif _MODE[name] != in_place:
            raise ValueError(
                f"in_place={in_place} but the {family} patch already in force has in_place={_MODE[name]}; "
                "remove it first"
            )
        _ACTIVE[name] += 1
    return RopePatch(name)
