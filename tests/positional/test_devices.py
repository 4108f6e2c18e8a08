"""RoPE and sinusoidal encodings where users run them: cast modules, autocast, the meta device, no host syncs,
bfloat16 transformers models, and CUDA (``gpu``-marked)."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from device_contract import count_host_syncs, cuda_sync_errors
from kexue.positional import RotaryEmbedding, apply_rotary, apply_rotary_qk, sinusoidal_table, vit
from kexue.positional.hf import SUPPORTED_FAMILIES, hf_apply_rotary_pos_emb, hf_apply_rotary_pos_emb_, patch_hf_rope
from kexue.positional.mrope import mrope_decode_positions
from kexue.positional.reference import plain_half_rotation
from kexue.positional.rope import rope_frequencies

BF16_EPS = torch.finfo(torch.bfloat16).eps
CASTS = {
    "bfloat16()": lambda m: m.bfloat16(),
    "half()": lambda m: m.half(),
    "to(bfloat16)": lambda m: m.to(torch.bfloat16),
    "to(float16)": lambda m: m.to(torch.float16),
    "double()": lambda m: m.double(),
}


def _issue_case() -> tuple[torch.Tensor, torch.Tensor, float]:
    """transformers #29285 / the issue: a 128-wide head at positions 0 … 8191, against float64 angles.
    Returns x, the float64 reference and the bound (twice the error of float32 angles, the recipe of transformers)."""
    x = torch.randn(1, 8192, 128, generator=torch.Generator().manual_seed(0))
    angles = torch.arange(8192, dtype=torch.float64)[:, None] * rope_frequencies(128)
    want = plain_half_rotation(x.double(), angles.cos(), angles.sin())
    angles32 = torch.arange(8192, dtype=torch.float32)[:, None] * rope_frequencies(128, dtype=torch.float32)
    recipe = plain_half_rotation(x, angles32.cos(), angles32.sin())
    return x, want, 2 * (recipe.double() - want).abs().max().item()


@pytest.mark.parametrize("cast", sorted(CASTS))
def test_a_cast_module_keeps_float32_angles_the_issue_case(cast: str) -> None:
    x, want, bound = _issue_case()
    rope = CASTS[cast](RotaryEmbedding(128))
    assert rope.freqs.dtype == torch.float32 and rope.state_dict()["freqs"].dtype == torch.float32
    error = (rope(x).double() - want).abs().max().item()
    assert error <= bound, f"{cast}: error {error:.3g} > bound {bound:.3g}"
    # the same cast without the override (nn.Module's own _apply) is the bug: frequencies in the cast dtype
    dtype = {
        "bfloat16()": torch.bfloat16,
        "to(bfloat16)": torch.bfloat16,
        "half()": torch.float16,
        "to(float16)": torch.float16,
        "double()": torch.float64,
    }[cast]
    broken = RotaryEmbedding(128)
    nn.Module._apply(broken, lambda t: t.to(dtype) if t.is_floating_point() else t)
    broken_error = (broken(x).double() - want).abs().max().item()
    if dtype != torch.float64:
        assert broken_error >= 1.0  # measured 8.8 (bfloat16) and 5.7 (float16) here


def test_from_config_and_mrope_modules_keep_their_precision_through_casts() -> None:
    transformers = pytest.importorskip("transformers")
    yarn = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 2048,
        },
    )
    rope = RotaryEmbedding.from_config(yarn).bfloat16()
    want = RotaryEmbedding.from_config(yarn, angle_dtype=torch.float64)
    x = torch.randn(1, 2, 16, 32)
    assert rope.freqs.dtype == torch.float32
    torch.testing.assert_close(rope(x, offset=8000).double(), want(x.double(), offset=8000), rtol=0, atol=2e-3)
    mixed = vit.TinyViT("rope-mixed").bfloat16()
    assert mixed.rope.freqs.dtype == torch.float32 and mixed.embed.weight.dtype == torch.bfloat16


def test_learnable_frequencies_keep_dtype_identity_and_gradient_through_a_cast() -> None:
    rope = RotaryEmbedding(16, axes=2, frequencies="mixed", learnable=True, num_heads=2)
    param = rope.freqs
    x = torch.randn(1, 2, 9, 16)
    rope(x, torch.randn(9, 2)).sum().backward()
    grad = param.grad.clone()
    rope.bfloat16()
    assert rope.freqs is param and param.dtype == torch.float32 and param.grad.dtype == torch.float32
    assert torch.equal(param.grad, grad)
    optimizer = torch.optim.SGD(rope.parameters(), lr=0.1)
    rope(x.bfloat16(), torch.randn(9, 2)).float().sum().backward()
    optimizer.step()  # float32 frequencies train next to bfloat16 weights


@pytest.mark.parametrize("how", ["built", "moved"])
def test_meta_device_gives_meta_outputs_of_the_right_shape(how: str) -> None:
    rope = RotaryEmbedding(32, device="meta") if how == "built" else RotaryEmbedding(32).to("meta")
    x = torch.empty(2, 4, 10, 32, device="meta", dtype=torch.bfloat16)
    for out in (
        rope(x),
        rope(x, offset=5),
        rope(x, torch.arange(10, device="meta")),
        rope(x, offset=torch.zeros(2, dtype=torch.long, device="meta")),
    ):
        assert out.is_meta and out.shape == x.shape and out.dtype == torch.bfloat16
    cos, _ = rope.cos_sin(torch.arange(10.0, device="meta"))
    assert cos.is_meta and cos.dtype == torch.float32 and cos.shape == (10, 16)
    table = sinusoidal_table(7, 16, device="meta")
    assert table.is_meta and table.shape == (7, 16)


def test_materialising_a_meta_module_recomputes_its_frequencies() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    )
    for meta, real in (
        (RotaryEmbedding(32, device="meta"), RotaryEmbedding(32)),
        (RotaryEmbedding.from_config(config, device="meta"), RotaryEmbedding.from_config(config)),
    ):
        meta.to_empty(device="cpu")
        assert torch.equal(meta.freqs, real.freqs)
        x = torch.randn(1, 2, 5, 32)
        assert torch.equal(meta(x, offset=3), real(x, offset=3))


def test_inputs_on_another_device_than_the_frequencies_are_named() -> None:
    with pytest.raises(ValueError, match="x is on cpu but this RotaryEmbedding's frequencies are on meta"):
        RotaryEmbedding(8, device="meta")(torch.randn(3, 8))


def test_no_host_sync_in_the_per_layer_paths() -> None:
    rope = RotaryEmbedding(32)
    mrope = RotaryEmbedding(32, axes=3, split=[4, 6, 6])
    q, k = torch.randn(2, 4, 6, 32), torch.randn(2, 2, 6, 32)
    cos, sin = rope.cos_sin(torch.arange(6))
    hf_cos, hf_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
    positions, offsets = torch.arange(6) + 40, torch.tensor([3, 70])
    with count_host_syncs() as syncs:
        apply_rotary(q, cos, sin)
        apply_rotary_qk(q, k, cos, sin)
        hf_apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
        hf_apply_rotary_pos_emb_(q.clone(), k.clone(), hf_cos, hf_sin)
        rope(q, offset=7)  # default positions: the cached table, sliced with Python ints
        got = {
            "positions": rope(q, positions, validate=False),
            "fractional": rope(q, positions / 3, validate=False),
            "offsets": rope(q, offset=offsets, validate=False),
        }
        mrope(q, torch.stack((positions, positions + 1, positions + 2), -1))  # integer (T, 3): nothing to validate
        mrope_decode_positions(torch.tensor(5), 12, new_tokens=1)
        sinusoidal_table(positions.float(), 16, validate=False)
    assert syncs == []
    # the opt-out computes what the validated path computes
    torch.testing.assert_close(got["positions"], rope(q, positions), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["fractional"], rope(q, positions / 3), rtol=0, atol=0)
    torch.testing.assert_close(got["offsets"], rope(q, offset=offsets), rtol=0, atol=1e-6)
    with count_host_syncs() as syncs:
        rope(q, positions / 3)  # validate=True (the default) reads positions back: it checks they are finite
    assert syncs


def test_the_patched_transformers_forward_syncs_nothing(monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    model = _tiny("llama", transformers).to(torch.bfloat16)
    module = importlib.import_module(SUPPORTED_FAMILIES["llama"])
    seen: list[list[str]] = []
    with patch_hf_rope(model):
        patched = module.apply_rotary_pos_emb

        def counted(*args, **kwargs):
            with count_host_syncs() as syncs:
                result = patched(*args, **kwargs)
            seen.append(list(syncs))
            return result

        monkeypatch.setattr(module, "apply_rotary_pos_emb", counted)
        with torch.no_grad():
            model(torch.randint(1, 97, (2, 9)))
        monkeypatch.undo()
    assert len(seen) == 2 and seen == [[], []]


def test_cpu_autocast_leaves_angles_and_outputs_alone() -> None:
    for rope, positions in (
        (RotaryEmbedding(32), torch.arange(5000.0, 5016.0)),
        (RotaryEmbedding(32, axes=2, frequencies="mixed", num_heads=4), torch.randn(16, 2) * 50),
    ):
        x = torch.randn(2, 4, 16, 32)
        plain_angles, plain_out = rope.angles(positions), rope(x, positions)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            angles, out = rope.angles(positions), rope(x, positions)
            low = rope(x.bfloat16(), positions)
        assert angles.dtype == torch.float32 and torch.equal(angles, plain_angles)
        assert out.dtype == torch.float32 and torch.equal(out, plain_out)
        assert low.dtype == torch.bfloat16 and torch.equal(low, rope(x.bfloat16(), positions))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_products_rounding_is_transformers_rotation_bit_for_bit(dtype: torch.dtype, backend: str) -> None:
    """transformers rotates a bfloat16 model in bfloat16: each product rounds before the sum. The drop-in does
    the same, on both paths; rounding once instead (more accurate) differs in the last bit."""
    from kexue.positional import _native

    if backend == "native" and not _native.available(dtype):
        pytest.skip(f"no native kernel for {dtype}")
    module = pytest.importorskip("transformers.models.llama.modeling_llama")
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 33, 64, generator=g).to(dtype), torch.randn(2, 2, 33, 64, generator=g).to(dtype)
    angles = torch.arange(33.0)[:, None] * 100 * rope_frequencies(64, dtype=torch.float32)
    cos = torch.cat((angles.cos(), angles.cos()), -1)[None].to(dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1)[None].to(dtype)
    theirs = module.apply_rotary_pos_emb(q, k, cos, sin)
    ours = apply_rotary_qk(
        q, k, cos[..., :32].unsqueeze(1), sin[..., :32].unsqueeze(1), rounding="products", backend=backend
    )
    once = apply_rotary(q, cos[..., :32].unsqueeze(1), sin[..., :32].unsqueeze(1), backend=backend)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.equal(once, theirs[0])


SMALL = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def _tiny(family: str, transformers):
    torch.manual_seed(0)
    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    }[family]
    return getattr(transformers, model_class)(getattr(transformers, config_class)(**SMALL)).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_bfloat16_model_patched_decodes_transformers_own_tokens(family: str) -> None:
    """``model.to(torch.bfloat16)`` then ``patch_hf_rope``: the same 32 greedy tokens and bit-identical logits.
    (With the rotation rounded once the LLaMA's logits move by a bfloat16 ulp and 11 of its 64 tokens change.)"""
    transformers = pytest.importorskip("transformers")
    model = _tiny(family, transformers).to(torch.bfloat16)
    ids = torch.randint(1, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
        want_logits = model(want).logits
        with patch_hf_rope(model):
            got = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
            got_logits = model(want).logits
    assert got.shape == (2, 55) and torch.equal(got, want)
    assert torch.equal(got_logits, want_logits)


def _train_vit(
    model: vit.TinyViT, dtype: torch.dtype, patches: torch.Tensor, labels: torch.Tensor, steps: int = 20
) -> torch.Tensor:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (64,), generator=generator)
        loss = F.cross_entropy(model(patches[batch].to(dtype)).float(), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).double()


def test_a_bfloat16_vit_with_2d_rope_tracks_its_float32_twin() -> None:
    """20 AdamW steps of the same ViT from the same weights on the same batches, after ``model.bfloat16()``:
    every step's loss within one bfloat16 unit (2⁻⁷ relative; measured 1.1e-3) of the float32 twin's, and
    the RoPE frequencies still float32. (On this 8×8 grid, angles ≤ 7 rad, rounding the angles to bfloat16 too
    stays inside that noise, 1.4e-3 measured: bfloat16 angles break RoPE at long positions, see the issue case.)"""
    x_train, y_train, _, _ = vit.load_digits_split(seed=0)
    patches = vit._patches(x_train, vit.TRAIN_SIZE)
    torch.manual_seed(0)
    twin = vit.TinyViT("rope-2d-axial")
    model = copy.deepcopy(twin).bfloat16()
    assert model.rope.freqs.dtype == torch.float32 and model.embed.weight.dtype == torch.bfloat16
    reference = _train_vit(twin, torch.float32, patches, y_train)
    losses = _train_vit(model, torch.bfloat16, patches, y_train)
    assert reference[-1] < reference[0] - 0.1  # it trains
    relative = ((losses - reference).abs() / reference).max().item()
    assert relative <= BF16_EPS, f"bfloat16 loss curve off by {relative:.3g} (relative) from float32's"


# --- CUDA: run by `make gpu-check` on a machine with a GPU ---------------------------------------------------


@pytest.mark.gpu
def test_cuda_rotary_embedding_matches_the_float64_reference_without_syncs() -> None:
    x, want, bound = _issue_case()
    rope = RotaryEmbedding(128).cuda().bfloat16()
    assert rope.freqs.dtype == torch.float32 and rope.freqs.device.type == "cuda"
    xc = x.cuda()
    positions, offsets = torch.arange(8192, device="cuda"), torch.zeros(1, dtype=torch.long, device="cuda")
    rope(xc)  # the first call builds the cached table
    with cuda_sync_errors():
        outs = [rope(xc), rope(xc, positions, validate=False), rope(xc, offset=offsets, validate=False)]
        bf16 = rope(xc.bfloat16(), positions, validate=False)
    for out in outs:
        assert out.device.type == "cuda" and (out.double().cpu() - want).abs().max().item() <= bound
    assert (
        bf16.dtype == torch.bfloat16
        and (bf16.double().cpu() - want).abs().max().item() <= 4 * BF16_EPS * want.abs().max().item()
    )


@pytest.mark.gpu
def test_meta_then_cuda_flow() -> None:
    rope = RotaryEmbedding(64, device="meta")
    assert rope(torch.empty(1, 4, 16, 64, device="meta")).is_meta
    rope.to_empty(device="cuda")
    x = torch.randn(1, 4, 16, 64)
    torch.testing.assert_close(rope(x.cuda(), offset=5).cpu(), RotaryEmbedding(64)(x, offset=5), rtol=0, atol=1e-5)
    assert sinusoidal_table(torch.arange(8.0, device="cuda"), 16, validate=False).device.type == "cuda"


@pytest.mark.gpu
def test_cuda_patched_bfloat16_llama_decodes_transformers_tokens_without_syncs() -> None:
    transformers = pytest.importorskip("transformers")
    model = _tiny("llama", transformers).to("cuda", torch.bfloat16)
    ids = torch.randint(1, 97, (2, 23), generator=torch.Generator().manual_seed(1)).cuda()
    module = importlib.import_module(SUPPORTED_FAMILIES["llama"])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
        with patch_hf_rope(model):
            got = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
            q, k = (
                torch.randn(2, 4, 9, 16, device="cuda", dtype=torch.bfloat16),
                torch.randn(2, 2, 9, 16, device="cuda", dtype=torch.bfloat16),
            )
            cos, sin = model.model.rotary_emb(q, torch.arange(9, device="cuda")[None].expand(2, -1))
            with cuda_sync_errors():
                rq, rk = module.apply_rotary_pos_emb(q.clone(), k.clone(), cos, sin)  # the patched function (in place)
    assert torch.equal(got, want)
    theirs = importlib.import_module(SUPPORTED_FAMILIES["llama"]).apply_rotary_pos_emb(
        q, k, cos, sin
    )  # unpatched again
    assert torch.equal(rq, theirs[0]) and torch.equal(rk, theirs[1])
