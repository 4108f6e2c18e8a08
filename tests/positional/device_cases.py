"""The positional techniques' entries in the device and precision contract (see tests/device_contract.py).

The float64 references rotate (or tabulate) with float64 angles from the float64 frequency definitions. The
yardstick ``plain`` of the rotary entries is transformers' recipe, the one users would otherwise run: float32
frequencies and angles, cos/sin cast to the working dtype, ``x * cos + rotate_half(x) * sin`` in that dtype.
(The naive formula in bfloat16, bfloat16 angles included, is the bug being fixed, off by 8.6 at positions
below 8192: no yardstick.) Positions reach 8191 in the 1-D entries, where a float32 angle is itself off by
up to 5e-4 rad, so the float32 bound is set by the angles, and the low-precision bounds by the rounding.
"""

from __future__ import annotations

import torch

from device_contract import Entry, Setting, build
from kexue.positional import (
    RotaryEmbedding,
    apply_rotary,
    apply_rotary_qk,
    rope_parameters_from_config,
    sinusoidal_table,
)
from kexue.positional.reference import plain_half_rotation, sinusoidal_reference
from kexue.positional.rope import axial_frequencies, rope_frequencies
from kexue.positional.vit import TinyViT

D, T, OFFSET = 64, 64, 8128  # positions 8128 … 8191, where the issue measured bfloat16 angles
F32 = torch.float32


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rotate64(x: torch.Tensor, angles: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """The half-layout rotation in float64 (the reference)."""
    return plain_half_rotation(x.double(), angles.cos() * factor, angles.sin() * factor)


def _hf_recipe(x: torch.Tensor, angles32: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """transformers' rotation in ``x``'s dtype from float32 angles (the yardstick)."""
    cos, sin = (angles32.cos() * factor).to(x.dtype), (angles32.sin() * factor).to(x.dtype)
    return plain_half_rotation(x, cos, sin)


def _joined(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q`` and ``k`` flattened into one tensor (copies: ``torch.cat`` of float16 fails under CPU autocast)."""
    out = q.new_empty(q.numel() + k.numel())
    out[: q.numel()].copy_(q.flatten())
    out[q.numel() :].copy_(k.flatten())
    return out


def _positions_1d(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(OFFSET, OFFSET + T, dtype=dtype)


# --- apply_rotary / apply_rotary_qk: given tables ------------------------------------------------


def _tables_inputs(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    angles = _positions_1d(torch.float64)[:, None] * rope_frequencies(D)  # (T, D/2)
    q, k = _randn(2, 4, T, D, seed=1), _randn(2, 2, T, D, seed=2)  # grouped-query shapes
    return tuple(t.to(device, dtype) for t in (q, k, angles.cos(), angles.sin()))  # type: ignore[return-value]


def _apply(setting: Setting):
    q, _, cos, sin = build(setting, _tables_inputs)
    return lambda: apply_rotary(q, cos, sin)


def _apply_reference(dtype: torch.dtype) -> torch.Tensor:
    q, _, cos, sin = (t.double() for t in _tables_inputs(dtype, "cpu"))
    return plain_half_rotation(q, cos, sin)


def _apply_plain(dtype: torch.dtype) -> torch.Tensor:
    q, _, cos, sin = _tables_inputs(dtype, "cpu")
    return plain_half_rotation(q, cos, sin)


def _qk(setting: Setting):
    q, k, cos, sin = build(setting, _tables_inputs)

    def call() -> torch.Tensor:
        return _joined(*apply_rotary_qk(q, k, cos, sin))

    return call


def _qk_reference(dtype: torch.dtype) -> torch.Tensor:
    q, k, cos, sin = (t.double() for t in _tables_inputs(dtype, "cpu"))
    return torch.cat((plain_half_rotation(q, cos, sin).flatten(), plain_half_rotation(k, cos, sin).flatten()))


def _qk_plain(dtype: torch.dtype) -> torch.Tensor:
    q, k, cos, sin = _tables_inputs(dtype, "cpu")
    return torch.cat((plain_half_rotation(q, cos, sin).flatten(), plain_half_rotation(k, cos, sin).flatten()))


def _hf(setting: Setting):
    q, k, cos, sin = build(setting, _tables_inputs)
    from kexue.positional.hf import hf_apply_rotary_pos_emb

    hf_cos, hf_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]  # (1, T, D): transformers' tables

    def call() -> torch.Tensor:
        return _joined(*hf_apply_rotary_pos_emb(q, k, hf_cos, hf_sin))

    return call


# --- RotaryEmbedding: 1-D, cast with .to() ---------------------------------------------------------


def _rope(setting: Setting):
    rope, x = build(
        setting, lambda dtype, device: (RotaryEmbedding(D, device=device), _randn(1, 2, T, D).to(device, dtype))
    )
    return lambda: rope(x, offset=OFFSET)


def _rope_reference(dtype: torch.dtype) -> torch.Tensor:
    x = _randn(1, 2, T, D).to(dtype)
    return _rotate64(x, _positions_1d(torch.float64)[:, None] * rope_frequencies(D))


def _rope_plain(dtype: torch.dtype) -> torch.Tensor:
    x = _randn(1, 2, T, D).to(dtype)
    return _hf_recipe(x, _positions_1d(F32)[:, None] * rope_frequencies(D, dtype=F32))


# --- RotaryEmbedding.from_config: a YaRN-scaled LLaMA ----------------------------------------------


def _yarn_config():
    import transformers

    return transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 2048,
        },
    )


def _yarn(setting: Setting):
    config = _yarn_config()
    rope, x = build(
        setting,
        lambda dtype, device: (
            RotaryEmbedding.from_config(config, device=device),
            _randn(1, 2, T, D, seed=3).to(device, dtype),
        ),
    )
    return lambda: rope(x, offset=OFFSET)


def _yarn_angles(dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    params = rope_parameters_from_config(_yarn_config())
    return _positions_1d(dtype)[:, None] * params.inv_freq.to(dtype), params.attention_factor


def _yarn_reference(dtype: torch.dtype) -> torch.Tensor:
    return _rotate64(_randn(1, 2, T, D, seed=3).to(dtype), *_yarn_angles(torch.float64))


def _yarn_plain(dtype: torch.dtype) -> torch.Tensor:
    return _hf_recipe(_randn(1, 2, T, D, seed=3).to(dtype), *_yarn_angles(F32))


# --- M-RoPE: RotaryEmbedding.from_config of a Qwen2-VL text config, (T, 3) positions ---------------


def _mrope_config():
    import transformers

    return transformers.Qwen2VLTextConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
    )


def _mrope_positions() -> torch.Tensor:
    from kexue.positional.mrope import mrope_position_ids

    positions, _ = mrope_position_ids([1000, (1, 8, 8), 16], spatial_merge_size=2)  # text, an image, text
    return positions[-T:]  # (T, 3): the image's cells and the text after it, positions past 1000


def _mrope(setting: Setting):
    config = _mrope_config()
    rope, x = build(
        setting,
        lambda dtype, device: (
            RotaryEmbedding.from_config(config, device=device),
            _randn(1, 2, T, 32, seed=4).to(device, dtype),
        ),
    )
    positions = _mrope_positions().to(setting.device)
    return lambda: rope(x, positions)


def _mrope_angles(dtype: torch.dtype) -> torch.Tensor:
    from kexue.positional.mrope import mrope_frequencies

    freqs = mrope_frequencies(rope_parameters_from_config(_mrope_config()).inv_freq, (4, 6, 6))  # (3, 16), float64
    return _mrope_positions().to(dtype) @ freqs.to(dtype)


def _mrope_reference(dtype: torch.dtype) -> torch.Tensor:
    return _rotate64(_randn(1, 2, T, 32, seed=4).to(dtype), _mrope_angles(torch.float64))


def _mrope_plain(dtype: torch.dtype) -> torch.Tensor:
    return _hf_recipe(_randn(1, 2, T, 32, seed=4).to(dtype), _mrope_angles(F32))


# --- the 2-D RoPE of vit.py: TinyViT("rope-2d-axial") cast whole, fractional (interpolated) positions ----


def _vit_positions() -> torch.Tensor:
    """(144, 2) in [0, 7], float32 whatever the model's dtype (as the model makes them)."""
    return TinyViT("rope-2d-axial").positions(12, mode="interpolate")


def _vit(setting: Setting):
    torch.manual_seed(0)
    model, q = build(
        setting,
        lambda dtype, device: (
            TinyViT("rope-2d-axial").to(device, dtype),
            _randn(2, 4, 144, 16, seed=5).to(device, dtype),
        ),
    )
    return lambda: model.rope(q, model.positions(12, mode="interpolate", device=q.device), validate=False)


def _vit_reference(dtype: torch.dtype) -> torch.Tensor:
    angles = _vit_positions().double() @ axial_frequencies(16, 2, base=100.0)
    return _rotate64(_randn(2, 4, 144, 16, seed=5).to(dtype), angles)


def _vit_plain(dtype: torch.dtype) -> torch.Tensor:
    angles = _vit_positions() @ axial_frequencies(16, 2, base=100.0).to(F32)
    return _hf_recipe(_randn(2, 4, 144, 16, seed=5).to(dtype), angles)


# --- sinusoidal tables --------------------------------------------------------------------------------


def _sin_positions(dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return torch.arange(256 - T, 256, dtype=dtype, device=device)  # integers < 256: exact in every dtype


def _sinusoidal(setting: Setting):
    positions = build(setting, _sin_positions)
    return lambda: sinusoidal_table(positions, D, dtype=positions.dtype, validate=False)


def _sinusoidal_plain(dtype: torch.dtype) -> torch.Tensor:
    """The usual recipe: the table in float32, then cast."""
    return sinusoidal_table(_sin_positions(F32), D, angle_dtype=F32, dtype=F32).to(dtype)


ROTARY_RETURNS = "x's dtype (q's and k's)"
ENTRIES = [
    Entry(
        name="kexue.positional.apply_rotary",
        prepare=_apply,
        reference=_apply_reference,
        plain=_apply_plain,
        accepts="x: float16, bfloat16, float32, float64; cos/sin: any float dtype, on x's device",
        computes="float32 (float64 for float64 x); rounds once on output",
        returns=ROTARY_RETURNS,
    ),
    Entry(
        name="kexue.positional.apply_rotary_qk",
        prepare=_qk,
        reference=_qk_reference,
        plain=_qk_plain,
        accepts="q, k: one float dtype; cos/sin: any float dtype, on their device",
        computes="float32 (float64 for float64 q, k); rounds once on output",
        returns=ROTARY_RETURNS,
    ),
    Entry(
        name="kexue.positional.hf.hf_apply_rotary_pos_emb",
        prepare=_hf,
        reference=_qk_reference,
        plain=_qk_plain,
        accepts="transformers' (B, T, R) cos/sin tables and q, k in the model's dtype",
        computes="float32 products rounded to the model's dtype before the sum (transformers' recipe, bit for bit)",
        returns=ROTARY_RETURNS,
    ),
    Entry(
        name="kexue.positional.RotaryEmbedding",
        prepare=_rope,
        reference=_rope_reference,
        plain=_rope_plain,
        accepts="x of any float dtype; the module cast with .to()/.half()/.bfloat16() keeps its float32 frequencies",
        computes="angles and cos/sin in angle_dtype (float32), autocast off; rotation in float32, one rounding",
        returns="x's dtype",
    ),
    Entry(
        name="kexue.positional.RotaryEmbedding.from_config (yarn)",
        prepare=_yarn,
        reference=_yarn_reference,
        plain=_yarn_plain,
        accepts="a transformers config (any rope_type); x of any float dtype; the module cast with .to()",
        computes="frequencies in float64, held in angle_dtype; angles, tables (× attention factor) and rotation "
        "in float32",
        returns="x's dtype",
    ),
    Entry(
        name="kexue.positional.RotaryEmbedding.from_config (M-RoPE)",
        prepare=_mrope,
        reference=_mrope_reference,
        plain=_mrope_plain,
        accepts="an M-RoPE config (Qwen2-VL, Qwen3-VL); (T, 3) integer positions; x of any float dtype",
        computes="angles p·F in angle_dtype (float32), elementwise (autocast-proof); rotation in float32",
        returns="x's dtype",
    ),
    Entry(
        name="kexue.positional.vit.TinyViT.rope (2-D axial RoPE)",
        prepare=_vit,
        reference=_vit_reference,
        plain=_vit_plain,
        accepts="the ViT cast whole with .to(dtype); fractional (T, 2) positions; validate=False",
        computes="angles in float32 whatever the model's dtype; rotation in float32",
        returns="x's dtype",
    ),
    Entry(
        name="kexue.positional.sinusoidal_table",
        prepare=_sinusoidal,
        reference=lambda dtype: torch.from_numpy(sinusoidal_reference(_sin_positions(dtype).double().numpy(), D)),
        plain=_sinusoidal_plain,
        accepts="positions: an int length or a real tensor/array on any device; validate=False reads nothing back",
        computes="angles and sines in float64 (angle_dtype), rounded once to dtype",
        returns="dtype (default: torch's default dtype)",
    ),
]
