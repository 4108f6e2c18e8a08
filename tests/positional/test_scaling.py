"""RoPE scalings against the installed transformers' ROPE_INIT_FUNCTIONS and the papers' rules."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch

from kexue.positional import reference
from kexue.positional.scaling import ROPE_TYPES, rope_parameters, rope_parameters_from_config

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

# head width, base, rotated share: a LLaMA head, a Phi-3 head, a NeoX-style quarter, odd widths
HEADS = [
    (128, 500000.0, 1.0),
    (96, 10000.0, 1.0),
    (64, 10000.0, 0.25),
    (80, 1e6, 0.5),
    (256, 10000.0, 1.0),
    (4, 10.0, 1.0),
]
LENGTHS = [None, 1, 4095, 4096, 4097, 131072]  # around an original length of 4096


def _config(head_dim: int, rope: dict, max_positions: int = 32768):
    heads = 4
    return transformers.LlamaConfig(
        hidden_size=head_dim * heads,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters=dict(rope),
    )


def _cases():
    for (d, base, share), factor in itertools.product(HEADS, (1.0, 2.0, 8.0, 32.5)):
        common = {"rope_theta": base, "partial_rotary_factor": share}
        yield d, {"rope_type": "linear", "factor": factor, **common}
        yield d, {"rope_type": "dynamic", "factor": factor, **common}
        yield d, {"rope_type": "proportional", "factor": factor, **common}
        for low, high in ((1.0, 4.0), (0.5, 8.0)):
            yield (
                d,
                {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": 4096,
                    **common,
                },
            )
        for fast, slow, truncate in ((32.0, 1.0, True), (16.0, 2.0, False), (64.0, 0.5, True)):
            yield (
                d,
                {
                    "rope_type": "yarn",
                    "factor": factor,
                    "original_max_position_embeddings": 4096,
                    "beta_fast": fast,
                    "beta_slow": slow,
                    "truncate": truncate,
                    **common,
                },
            )
        for extra in (
            {"mscale": 0.707, "mscale_all_dim": 0.707},
            {"mscale": 1.0, "mscale_all_dim": 0.5},
            {"mscale": 1.0},
            {"attention_factor": 0.8},
        ):
            yield (
                d,
                {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 4096, **extra, **common},
            )
        pairs = int(d * share) // 2
        yield (
            d,
            {
                "rope_type": "longrope",
                "short_factor": [1.0 + 0.05 * i for i in range(pairs)],
                "long_factor": [1.0 + 0.9 * i for i in range(pairs)],
                "original_max_position_embeddings": 4096,
                **common,
            },
        )
        yield (
            d,
            {
                "rope_type": "longrope",
                "factor": factor,
                "attention_factor": 1.25,
                "short_factor": [1.0] * pairs,
                "long_factor": [2.0] * pairs,
                "original_max_position_embeddings": 4096,
                **common,
            },
        )


CASES = list(_cases())


def _ids(case: tuple[int, dict]) -> str:
    return f"d={case[0]}-" + "-".join(
        f"{k}={v}" for k, v in case[1].items() if k not in ("short_factor", "long_factor")
    )


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logger = logging.getLogger("transformers.modeling_rope_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its notes about factor vs original length, for the configs chosen here on purpose
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_equals_transformers(case: tuple[int, dict]) -> None:
    d, case = case
    config = _config(d, case)
    for length in LENGTHS:
        hf_inv, hf_factor = ROPE_INIT_FUNCTIONS[case["rope_type"]](config, "cpu", seq_len=length)
        ours = rope_parameters_from_config(config, seq_len=length)
        assert ours.inv_freq.dtype == torch.float64 and ours.inv_freq.shape == hf_inv.shape
        # transformers works in float32, where base ** (2j / R) carries a relative error of about
        # ln(base) · 2^-24 (≈ 8e-7 at base 5e5); a formula that differs is off by 1e-3 or more
        torch.testing.assert_close(ours.inv_freq.float(), hf_inv, rtol=2e-6, atol=1e-30)
        assert ours.attention_factor == pytest.approx(float(hf_factor), rel=1e-15, abs=0)


def test_every_transformers_type_is_registered() -> None:
    assert set(ROPE_INIT_FUNCTIONS) <= set(ROPE_TYPES)
    assert set(ROPE_TYPES) - set(ROPE_INIT_FUNCTIONS) == {"default"}


@pytest.mark.parametrize("factor", [1.0, 4.0, 8.0, 16.0])
def test_llama3_is_the_published_rule(factor: float) -> None:
    p = rope_parameters(
        "llama3",
        head_dim=128,
        base=500000.0,
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    want = [reference.llama3_scaling_reference(j, 128, 500000.0, factor, 1.0, 4.0, 8192) for j in range(64)]
    assert p.inv_freq.tolist() == pytest.approx(want, rel=1e-15)
    theta = rope_parameters(head_dim=128, base=500000.0).inv_freq
    assert torch.equal(p.inv_freq[:10], theta[:10])  # the highest frequencies are untouched
    assert p.inv_freq[-1].item() == pytest.approx(theta[-1].item() / factor, rel=1e-15)  # the lowest divided by s


@pytest.mark.parametrize(("fast", "slow"), [(32.0, 1.0), (16.0, 2.0)])
def test_yarn_regions_are_the_papers(fast: float, slow: float) -> None:
    """Pairs that turn more than β_fast times over L₀ are kept, fewer than β_slow interpolated."""
    dim, base, original, s = 128, 10000.0, 4096, 8.0
    p = rope_parameters(
        "yarn",
        head_dim=dim,
        base=base,
        factor=s,
        original_max_position_embeddings=original,
        beta_fast=fast,
        beta_slow=slow,
        truncate=False,
    )
    theta = rope_parameters(head_dim=dim, base=base).inv_freq
    regions = [reference.yarn_regions_reference(j, dim, base, original, fast, slow) for j in range(dim // 2)]
    assert {"kept", "ramp", "interpolated"} == set(regions)
    for j, region in enumerate(regions):
        if region == "kept":
            assert p.inv_freq[j].item() == pytest.approx(theta[j].item(), rel=1e-14)
        elif region == "interpolated":
            assert p.inv_freq[j].item() == pytest.approx(theta[j].item() / s, rel=1e-14)
        else:
            assert theta[j].item() / s - 1e-18 <= p.inv_freq[j].item() <= theta[j].item() + 1e-18
    assert p.attention_factor == pytest.approx(0.1 * math.log(s) + 1, rel=1e-15)


@pytest.mark.parametrize("length", [1024, 4096, 5000, 65536])
def test_dynamic_ntk_is_the_published_rule(length: int) -> None:
    p = rope_parameters("dynamic", head_dim=64, base=10000.0, factor=4.0, max_position_embeddings=4096, seq_len=length)
    want = [reference.dynamic_ntk_reference(j, 64, 10000.0, 4.0, length, 4096) for j in range(32)]
    assert p.inv_freq.tolist() == pytest.approx(want, rel=1e-14)
    assert p.inv_freq[0].item() == 1.0  # the highest frequency never moves


def test_longrope_switches_at_the_original_length() -> None:
    kwargs = dict(
        head_dim=8,
        base=10000.0,
        short_factor=[1.0, 2.0, 3.0, 4.0],
        long_factor=[5.0, 6.0, 7.0, 8.0],
        original_max_position_embeddings=4096,
        max_position_embeddings=131072,
    )
    theta = rope_parameters(head_dim=8).inv_freq
    short = rope_parameters("longrope", seq_len=4096, **kwargs)
    long = rope_parameters("longrope", seq_len=4097, **kwargs)
    assert torch.allclose(short.inv_freq, theta / torch.tensor([1.0, 2, 3, 4], dtype=torch.float64), rtol=1e-15)
    assert torch.allclose(long.inv_freq, theta / torch.tensor([5.0, 6, 7, 8], dtype=torch.float64), rtol=1e-15)
    assert (
        short.attention_factor == long.attention_factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rope_type": "rotary"}, "rope_type"),
        ({"rope_type": "linear"}, "needs 'factor'"),
        ({"rope_type": "linear", "factor": 0.0}, "linear factor=0.0 must be a finite number > 0"),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 4.0,
                "high_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
            },
            "high_freq_factor",
        ),
        ({"rope_type": "yarn", "factor": 2.0}, "original_max_position_embeddings"),
        ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096, "truncate": "yes"}, "truncate"),
        (
            {
                "rope_type": "longrope",
                "short_factor": [1.0],
                "long_factor": [1.0],
                "original_max_position_embeddings": 4096,
            },
            "short_factor must hold 32",
        ),
        ({"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings"),
        ({"partial_rotary_factor": 0.01}, "rotary width of 0"),
        ({"partial_rotary_factor": 1.5}, "at most head_dim"),
        ({"base": 1.0}, r"base \(rope_theta\)=1.0 must be a finite number > 1"),
        ({"seq_len": 0}, "seq_len=0"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rope_parameters(**{"head_dim": 64, **kwargs})


def test_per_layer_type_configs_need_a_layer_type() -> None:
    config = transformers.Gemma3TextConfig(
        hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64, num_hidden_layers=2, vocab_size=32
    )
    assert set(config.rope_parameters) >= {"full_attention", "sliding_attention"}
    with pytest.raises(ValueError, match="layer_type=None"):
        rope_parameters_from_config(config)
    for layer_type in ("full_attention", "sliding_attention"):
        hf_inv, _hf_factor = ROPE_INIT_FUNCTIONS.get(
            config.rope_parameters[layer_type]["rope_type"], lambda *a, **k: (None, None)
        )(config, "cpu", layer_type=layer_type)
        ours = rope_parameters_from_config(config, layer_type=layer_type)
        if hf_inv is not None:
            torch.testing.assert_close(ours.inv_freq.float(), hf_inv, rtol=2e-6, atol=1e-30)
        else:  # "default": the plain ladder of that layer type's base
            base = config.rope_parameters[layer_type]["rope_theta"]
            assert torch.equal(ours.inv_freq, rope_parameters(head_dim=64, base=base).inv_freq)
    assert not torch.equal(
        rope_parameters_from_config(config, layer_type="full_attention").inv_freq,
        rope_parameters_from_config(config, layer_type="sliding_attention").inv_freq,
    )


def test_attention_decay_is_the_articles_sum() -> None:
    from kexue.positional.scaling import attention_decay

    theta = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for delta in (0.0, 1.0, 7.5, 300.0):
        partial, total = 0j, 0.0
        for t in theta.tolist():  # S_j = Σ_{k<j} e^{iΔθ_k}, summed over j = 1 … R/2
            partial += complex(math.cos(delta * t), math.sin(delta * t))
            total += abs(partial)
        assert attention_decay(theta, [delta]).item() == pytest.approx(total / 16, rel=1e-12)
    assert attention_decay(theta, 0.0).item() == pytest.approx(8.5)  # (R/2 + 1) / 2 at Δ = 0
    ladder = rope_parameters(head_dim=128).inv_freq
    values = attention_decay(ladder, torch.tensor([1.0, 10.0, 100.0]))
    assert values[0] > values[1] > values[2]  # the article's decay with distance


def test_pair_analysis() -> None:
    from kexue.positional.scaling import pair_analysis

    linear = pair_analysis(rope_parameters("linear", head_dim=64, factor=4.0), 4096)
    assert torch.allclose(linear["ratio"], torch.full((32,), 0.25, dtype=torch.float64), rtol=1e-15)
    plain = rope_parameters(head_dim=64)
    a = pair_analysis(plain, 4096)
    assert torch.allclose(a["wavelength"], 2 * math.pi / plain.inv_freq) and a["turns"][0] == pytest.approx(
        4096 / (2 * math.pi)
    )
    prop = pair_analysis(rope_parameters("proportional", head_dim=64, partial_rotary_factor=0.25), 100)
    assert (
        torch.isinf(prop["wavelength"][8:]).all() and (prop["turns"][8:] == 0).all() and (prop["ratio"][:8] == 1).all()
    )
    with pytest.raises(ValueError, match="context=0"):
        pair_analysis(plain, 0)


def test_scaling_claims() -> None:
    from kexue.positional import claims
    from kexue.report.claims import ClaimContext

    ctx = ClaimContext("rope", claims.ROPE.article)
    for check in (claims.scaling_matches_transformers, claims.scaling_analysis):
        claims.ROPE.run_check(check, ctx, debug=True)
    got = ctx.by_id
    assert got["rope.scaling.matches_transformers"].status == "pass"
    analysis = got["rope.scaling.analysis"]
    assert analysis.status == "documented" and len(analysis.table["rows"]) == 6
    llama = analysis.measured["Llama 3.1 (x8, L0 8k)"]
    assert llama["kept"] + llama["divided by s or more"] + llama["in between"] == 64 and llama["in between"] > 0
    linear, dynamic = (
        analysis.measured["linear x4 (position interpolation)"],
        analysis.measured["dynamic NTK x4, at 4 L0"],
    )
    assert (
        linear["divided by s or more"] == 64 and dynamic["kept"] == 1 and dynamic["in between"] > 0
    )  # NTK: pair 0 keeps θ_0 = 1
    proportional = analysis.measured["proportional, quarter rotated"]
    assert (proportional["kept"], proportional["not rotated"]) == (16, 48)
    assert analysis.measured["LongRoPE (Phi-3 style)"]["attention factor"] > 1  # sqrt(1 + ln 4 / ln 4096)
    assert [f.name for f in ctx.figures] == ["scalings"]
