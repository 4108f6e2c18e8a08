"""RotaryEmbedding.from_config against each model family's own rotary code in the installed transformers."""

from __future__ import annotations

import importlib
import logging
import math

import pytest
import torch

from kexue.positional import RotaryEmbedding

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 128, "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 64}


def _family(name: str, config_class: str, rotary_class: str, **fields):
    config = getattr(transformers, config_class)(**{**SMALL, **fields})
    return name, config, rotary_class


FAMILIES = [
    _family(
        "llama",
        "LlamaConfig",
        "LlamaRotaryEmbedding",
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    _family(
        "mistral",
        "MistralConfig",
        "MistralRotaryEmbedding",
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    _family(
        "qwen2",
        "Qwen2Config",
        "Qwen2RotaryEmbedding",
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    ),
    _family(
        "qwen3",
        "Qwen3Config",
        "Qwen3RotaryEmbedding",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        rope_parameters={"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0},
    ),
    _family(
        "phi3",
        "Phi3Config",
        "Phi3RotaryEmbedding",
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "short_factor": [1.0 + 0.1 * i for i in range(12)],
            "long_factor": [1.0 + 2.0 * i for i in range(12)],
            "original_max_position_embeddings": 4096,
        },
    ),
    _family(
        "gpt_neox",
        "GPTNeoXConfig",
        "GPTNeoXRotaryEmbedding",
        num_attention_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    ),
    _family(
        "gemma",
        "GemmaConfig",
        "GemmaRotaryEmbedding",
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=96,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        max_position_embeddings=256,
    ),
]


def _hf_rotate(family: str, config, rotary_class: str, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, **kw):
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    rotary = getattr(module, rotary_class)(config)
    cos, sin = rotary(q, positions[None], **kw)
    return module.apply_rotary_pos_emb(q, k, cos, sin)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logger = logging.getLogger("transformers.modeling_rope_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize(("family", "config", "rotary_class"), FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("length", [7, 300])
def test_rotation_equals_the_familys_own(family: str, config, rotary_class: str, length: int) -> None:
    torch.manual_seed(0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = torch.randn(2, config.num_attention_heads, length, head_dim)
    k = torch.randn(2, config.num_attention_heads, length, head_dim)
    positions = torch.arange(length) + 3
    hf_q, hf_k = _hf_rotate(family, config, rotary_class, q, k, positions)
    rope = RotaryEmbedding.from_config(config, seq_len=length + 3)
    # float32 angles of position p carry an error of about p · 2^-24 rad, in transformers and here alike
    atol = 2e-5 + 3e-7 * float(positions.max()) * float(q.abs().max())
    torch.testing.assert_close(rope(q, positions), hf_q, rtol=0, atol=atol)
    torch.testing.assert_close(rope(k, positions), hf_k, rtol=0, atol=atol)
    if rope.attention_factor != 1.0:
        with pytest.raises(ValueError, match="attention_factor"):
            rope(q, positions, inverse=True)


def test_longrope_switches_to_the_long_factors_past_the_original_length() -> None:
    family, config, rotary_class = next(f for f in FAMILIES if f[0] == "phi3")
    short, long = RotaryEmbedding.from_config(config), RotaryEmbedding.from_config(config, seq_len=5000)
    assert not torch.equal(short.freqs, long.freqs)
    q = torch.randn(1, 4, 5000, 32)
    positions = torch.arange(5000)
    hf_q, _ = _hf_rotate(family, config, rotary_class, q, q, positions)
    atol = 2e-5 + 3e-7 * 5000 * float(q.abs().max())  # float32 angles up to 5000 rad, here and in transformers
    torch.testing.assert_close(long(q, positions), hf_q, rtol=0, atol=atol)
    assert long.attention_factor == short.attention_factor > 1


def test_gemma3_local_and_global_layers() -> None:
    config = transformers.Gemma3TextConfig(
        **{**SMALL, "num_hidden_layers": 6}, num_attention_heads=2, num_key_value_heads=1, head_dim=64
    )
    module = importlib.import_module("transformers.models.gemma3.modeling_gemma3")
    q = torch.randn(1, 2, 40, 64)
    positions = torch.arange(40)
    for layer_type in ("sliding_attention", "full_attention"):
        rotary = module.Gemma3RotaryEmbedding(config)
        cos, sin = rotary(q, positions[None], layer_type=layer_type)
        hf_q, _ = module.apply_rotary_pos_emb(q, q, cos, sin)
        ours = RotaryEmbedding.from_config(config, layer_type=layer_type)
        torch.testing.assert_close(ours(q, positions), hf_q, rtol=2e-5, atol=2e-5)


def test_deepseek_interleaved_pairs_give_transformers_attention_scores() -> None:
    config = transformers.DeepseekV3Config(
        **SMALL,
        num_attention_heads=2,
        num_key_value_heads=2,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=16,
        kv_lora_rank=16,
        q_lora_rank=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=2,
        max_position_embeddings=16384,
        rope_interleave=True,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "beta_fast": 32,
            "beta_slow": 1,
        },
    )
    module = importlib.import_module("transformers.models.deepseek_v3.modeling_deepseek_v3")
    q, k = torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    positions = torch.arange(50)
    rotary = module.DeepseekV3RotaryEmbedding(config)
    cos, sin = rotary(q, positions[None])
    hf_q, hf_k = module.apply_rotary_pos_emb_interleave(q, k, cos, sin)
    rope = RotaryEmbedding.from_config(config)
    assert rope.layout == "interleaved" and rope.dim == 16
    torch.testing.assert_close(
        rope(q, positions) @ rope(k, positions).transpose(-1, -2), hf_q @ hf_k.transpose(-1, -2), rtol=1e-5, atol=1e-5
    )


def test_unsupported_configs_are_named() -> None:
    with pytest.raises(ValueError, match="rope_parameters"):
        RotaryEmbedding.from_config(transformers.BertConfig())
    vl = transformers.Qwen2VLTextConfig(
        **SMALL,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    with pytest.raises(
        ValueError, match=r"mrope_section=\[2, 3, 3\] must be three non-negative pair counts summing to 16"
    ):
        RotaryEmbedding.from_config(vl)


def _mrope_positions(batch: int, length: int) -> torch.Tensor:
    """(3, B, T) position ids as transformers takes them: text runs with t = h = w, then an image block."""
    t = torch.arange(length)
    ids = torch.stack([t, t, t])
    ids[1, 5:17] = 5 + torch.arange(12) // 4  # a 3 x 4 image grid after 5 text tokens
    ids[2, 5:17] = 5 + torch.arange(12) % 4
    ids[0, 5:17] = 5
    ids[:, 17:] = ids[:, 17:] - 12 + 4  # text after the image continues from max + 1
    return ids[:, None].expand(3, batch, length) + torch.arange(batch)[None, :, None]


@pytest.mark.parametrize(
    ("family", "config_class", "rotary_class", "sections"),
    [
        ("qwen2_vl", "Qwen2VLTextConfig", "Qwen2VLRotaryEmbedding", [4, 6, 6]),
        ("qwen2_vl", "Qwen2VLTextConfig", "Qwen2VLRotaryEmbedding", None),  # the family's default [16, 24, 24]
        ("qwen2_5_vl", "Qwen2_5_VLTextConfig", "Qwen2_5_VLRotaryEmbedding", [2, 7, 7]),
        ("qwen3_vl", "Qwen3VLTextConfig", "Qwen3VLTextRotaryEmbedding", [6, 5, 5]),
        ("qwen3_vl", "Qwen3VLTextConfig", "Qwen3VLTextRotaryEmbedding", None),  # the default [24, 20, 20], interleaved
    ],
)
def test_mrope_equals_transformers(family: str, config_class: str, rotary_class: str, sections) -> None:
    head_dim = 32 if sections is not None else 128
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    if sections is not None:
        rope_parameters["mrope_section"] = sections
    config = getattr(transformers, config_class)(
        **{**SMALL, "hidden_size": 4 * head_dim},
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        rope_parameters=rope_parameters,
    )
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    positions = _mrope_positions(2, 24)  # (3, B, T)
    q = torch.randn(2, 4, 24, head_dim)
    cos, sin = getattr(module, rotary_class)(config)(q, positions)
    hf_q, _ = module.apply_rotary_pos_emb(q, q, cos, sin)
    rope = RotaryEmbedding.from_config(config)
    assert rope.axes == 3 and rope.freqs.shape == (3, head_dim // 2)
    torch.testing.assert_close(rope(q, positions.permute(1, 2, 0)), hf_q, rtol=0, atol=5e-5)


def test_mrope_is_the_block_solution_and_text_is_1d() -> None:
    from kexue.positional.mrope import mrope_frequencies
    from kexue.positional.scaling import rope_parameters

    theta = rope_parameters(head_dim=32).inv_freq
    for interleaved in (False, True):
        f = mrope_frequencies(theta, (6, 5, 5), interleaved=interleaved)
        assert ((f != 0).sum(0) == 1).all() and torch.equal(f.sum(0), theta)  # one axis per pair, the 1-D ladder's θ_j
        assert sorted((f != 0).sum(1).tolist()) == [5, 5, 6]
        p = torch.tensor([[7.0, 7.0, 7.0]])
        assert torch.allclose(p.double() @ f, 7.0 * theta[None], rtol=0, atol=0)  # text (t = h = w): 1-D RoPE
    contiguous = mrope_frequencies(theta, (6, 5, 5))
    assert (contiguous[0, :6] != 0).all() and (contiguous[1, 6:11] != 0).all() and (contiguous[2, 11:] != 0).all()


def test_dynamic_ntk_fixed_base_per_cache_keeps_attention_relative() -> None:
    """One base for the whole cache (kexue's choice) vs transformers' base that moves as the sequence grows.

    Generating 64 tokens past a trained length of 256: with the base fixed for the final length
    (prompt + new tokens), a query and a cached key score by their offset alone. Had the keys been
    cached while the base was that of a shorter length, the same query-key pair scores differently.
    """
    config = transformers.LlamaConfig(
        **SMALL,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    )
    final = RotaryEmbedding.from_config(config, seq_len=320, angle_dtype=torch.float64)
    early = RotaryEmbedding.from_config(
        config, seq_len=280, angle_dtype=torch.float64
    )  # the base when the key was cached
    assert not torch.equal(final.freqs, early.freqs)
    q, k = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)

    def score(rope_q, rope_k, m: int, n: int) -> float:
        return float(rope_q(q[None], torch.tensor([m])) @ rope_k(k[None], torch.tensor([n])).T)

    assert score(final, final, 319, 270) == pytest.approx(score(final, final, 49, 0), rel=1e-12)  # offset 49 either way
    stale = score(final, early, 319, 270)  # a key rotated under the earlier base, a query under the final one
    assert abs(stale - score(final, final, 319, 270)) > 1e-3 * abs(score(final, final, 319, 270))


def test_bfloat16_models_keep_float32_angles_far_out() -> None:
    """bf16 queries at positions near 100k: kexue rotates with float32 tables and rounds once; transformers hands
    bf16 cos/sin tables to the product. Against a float64 rotation, kexue's error is one bf16 rounding."""
    family, config, rotary_class = next(f for f in FAMILIES if f[0] == "llama")
    positions = torch.arange(100_000, 100_064)
    q = torch.randn(1, 4, 64, 32).to(torch.bfloat16)
    exact = RotaryEmbedding.from_config(config, angle_dtype=torch.float64)(q.double(), positions)
    ours = RotaryEmbedding.from_config(config)(q, positions)
    hf_q, _ = _hf_rotate(family, config, rotary_class, q, q, positions)
    ours_err = float((ours.double() - exact).abs().max())
    hf_err = float((hf_q.double() - exact).abs().max())
    assert (
        ours.dtype == torch.bfloat16 and ours_err <= 2**-8 * float(exact.abs().max()) + 2e-3
    )  # float32 angles: ~6e-3 rad at 1e5
    assert ours_err <= hf_err


def test_attention_factor_is_in_the_tables_and_the_cache_follows_it() -> None:
    _family, config, _rotary_class = next(f for f in FAMILIES if f[0] == "qwen2")  # YaRN x4: factor 0.1 ln 4 + 1
    rope = RotaryEmbedding.from_config(config)
    cos, sin = rope.cos_sin(torch.arange(50))
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, rope.attention_factor**2), rtol=1e-6, atol=0)
    q = torch.randn(1, 4, 50, 32)
    scaled = rope(q)  # builds the cached table with the factor
    rope.attention_factor = 1.0
    plain = rope(q)  # the cache is rebuilt, not reused
    torch.testing.assert_close(scaled, plain * (0.1 * math.log(4.0) + 1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(rope(plain, inverse=True), q, atol=1e-5)
