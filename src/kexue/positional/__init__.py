"""Position encodings: sinusoidal tables with the article's analysis, and rotary embeddings (RoPE).

* :mod:`kexue.positional.sinusoidal`: ``sinusoidal_table`` (1-D and N-D, both layouts) and the
  decay analysis of kexue.fm/archives/8231 (inner products, their integral approximation,
  pluggable frequency schedules).
* :mod:`kexue.positional.rope`: ``apply_rotary`` (fused CPU kernel, plain-torch path),
  ``apply_rotary_qk`` (queries and keys in one kernel call, GQA shapes, in place),
  ``RotaryEmbedding`` (1-D with offsets/partial/scaling, N-D axial, mixed and learnable),
  ``convert_layout`` between the half and interleaved pair layouts
  (kexue.fm/archives/8265, 8397).
* :mod:`kexue.positional.scaling`: the long-context scalings of Hugging Face configs
  (linear, dynamic NTK, YaRN, LongRoPE, Llama 3, proportional) in float64, ``rope_parameters``
  and ``rope_parameters_from_config``; ``pair_analysis`` and ``attention_decay`` (what a scaling
  does to each pair, and the article's long-range bound). ``RotaryEmbedding.from_config`` builds
  a transformers model's rotary embedding from its config.
* :mod:`kexue.positional.mrope`: multimodal M-RoPE (Qwen2-VL, Qwen3-VL): frequencies, 3-D
  position ids and the decode delta.
* :mod:`kexue.positional.hf`: ``patch_hf_rope``, HF decoder families on kexue's kernel.
* :mod:`kexue.positional.reference`: float64 oracles (``exp(Σ p_k B_k)`` and loops).
"""

from kexue.positional.rope import (
    BACKENDS,
    LAYOUTS,
    ROPE_SCALINGS,
    ROUNDINGS,
    SCALINGS,
    Backend,
    Layout,
    RotaryEmbedding,
    Rounding,
    Scaling,
    apply_rotary,
    apply_rotary_qk,
    axial_frequencies,
    convert_layout,
    grid_positions,
    layout_permutation,
    mixed_frequencies,
    rope_frequencies,
)
from kexue.positional.scaling import (
    ROPE_TYPE_NAMES,
    ROPE_TYPES,
    RopeParameters,
    RopeType,
    rope_parameters,
    rope_parameters_from_config,
)
from kexue.positional.sinusoidal import (
    TABLE_LAYOUTS,
    THETA_SCHEDULES,
    TableLayout,
    integral_approximation,
    relative_inner_products,
    sinusoidal_table,
    sinusoidal_table_nd,
)

__all__ = [
    "BACKENDS",
    "LAYOUTS",
    "ROPE_SCALINGS",
    "ROPE_TYPES",
    "ROPE_TYPE_NAMES",
    "ROUNDINGS",
    "SCALINGS",
    "TABLE_LAYOUTS",
    "THETA_SCHEDULES",
    "Backend",
    "Layout",
    "RopeParameters",
    "RopeType",
    "RotaryEmbedding",
    "Rounding",
    "Scaling",
    "TableLayout",
    "apply_rotary",
    "apply_rotary_qk",
    "axial_frequencies",
    "convert_layout",
    "grid_positions",
    "integral_approximation",
    "layout_permutation",
    "mixed_frequencies",
    "relative_inner_products",
    "rope_frequencies",
    "rope_parameters",
    "rope_parameters_from_config",
    "sinusoidal_table",
    "sinusoidal_table_nd",
]
