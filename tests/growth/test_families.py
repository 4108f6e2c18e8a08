"""Gemma 1-3, OPT, Mixtral and Qwen3-MoE: every operator exact in float64, each family's peculiarity
needed (a test per rule shows the naive map is a different function), reload, noise, Adam transfer.

Mixture-of-experts models reload with HF's default grouped-matmul experts, which has no float64
kernel: their float64 parity runs through :func:`float64_norms`' per-expert loop."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from kexue.growth import add_experts, deepen, widen, widen_ffn
from kexue.growth.optim import GrowthMap, transfer_adam_state
from kexue.growth.parity import float64_norms, gradient_map_error, gradients, max_logit_difference, output_scale
from kexue.growth.zoo import OPERATORS, ZOO, operators, randomized, tiny_model, tiny_models

# 12 tokens: longer than the sliding window (4) of the Gemma 2/3 entries, so layer types matter
INPUTS = {"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))}

NEW = (
    "gemma-tied",
    "gemma2-sandwich-softcap",
    "gemma3-qk-norm-local-rope",
    "opt-pre-ln",
    "opt-post-ln-proj",
    "opt-post-ln-tied",
    "opt-no-bias-no-affine",
    "opt-pre-ln-no-final-norm",
    "mixtral",
    "qwen3-moe-dense-layer",
)
GROW = {
    "widen-heads": lambda m: widen(m, 2),
    "widen-head_dim": lambda m: widen(m, 2, mode="head_dim"),
    "widen_ffn": lambda m: widen_ffn(m, 53),
    "deepen": lambda m: deepen(m, [-1, 1]),
    "add_experts": lambda m: add_experts(m, 2),
}
_widen_module = importlib.import_module("kexue.growth.widen")  # kexue.growth.widen is also the function


def _relative(small, large) -> float:
    with float64_norms():
        return max_logit_difference(small, large, INPUTS) / output_scale(small, INPUTS)


def _widened_with(small, family: str, make, **kwargs):
    """``widen(small, 2)`` with the family's map replaced by ``make(its real map)``: the mistake a test shows."""
    real = _widen_module._ARCH[family]
    _widen_module._ARCH[family] = make(real)
    try:
        return widen(small, 2, **kwargs)
    finally:
        _widen_module._ARCH[family] = real


def _renamed(real, rule):
    """The real map, with ``rule(name, old tensor, m) -> tensor or None`` overriding entries."""

    def maps(m, sd, config):
        new = real(m, sd, config)
        for name, t in sd.items():
            replaced = rule(name, t, m)
            if replaced is not None:
                new[name] = replaced
        return new

    return maps


def _assert_gradient_map(small, grow) -> GrowthMap:
    """At the grown point the large model's gradient is g_s(j) / (n a_j) at every live entry."""
    gmap = GrowthMap.probe(small, grow)
    assert gradient_map_error(small, grow(small), gmap, INPUTS) <= 1e-9
    return gmap


def _reloaded(large, folder):
    large.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()


@pytest.mark.parametrize("name", NEW)
def test_every_operator_is_exact_in_float64_close_in_float32_and_reloads(name: str, tmp_path) -> None:
    small = randomized(tiny_model(name))
    small32 = copy.deepcopy(small).float()
    scale32 = output_scale(small32, INPUTS)
    for op in operators(name):
        large = GROW[op](small)
        assert _relative(small, large) <= 1e-10, op
        assert _relative(small, _reloaded(large, tmp_path / op)) <= 1e-10, op  # plain from_pretrained
        assert max_logit_difference(small32, GROW[op](small32), INPUTS) <= 1e-4 * scale32, op


@pytest.mark.parametrize("name", NEW)
def test_widening_by_three_and_composed_operators_are_exact(name: str) -> None:
    small = randomized(tiny_model(name))
    assert _relative(small, widen(small, 3)) <= 1e-10
    composed = widen(small, 2)
    for op in operators(name):
        if op not in ("widen-heads", "widen-head_dim"):
            composed = {
                "widen_ffn": lambda m: widen_ffn(m, 100),
                "deepen": lambda m: deepen(m, [0]),
                "add_experts": lambda m: add_experts(m, 3),
            }[op](composed)
    assert _relative(small, composed) <= 1e-10


@pytest.mark.parametrize(
    ("name", "op"),
    [
        (n, op)
        for n in NEW
        for op in operators(n)
        if not (n in ("opt-no-bias-no-affine", "opt-pre-ln-no-final-norm") and op.startswith("widen-"))
    ],
)  # head untied by the widening: refused
def test_gradient_map_for_every_new_family_and_operator(name: str, op: str) -> None:
    _assert_gradient_map(randomized(tiny_model(name)), GROW[op])


# ---- Gemma


def test_gemma_embedding_scale_needs_rep_over_k() -> None:
    """√(kd) inside the widened model: the article's rep/√k embedding is √k too large."""
    small = randomized(tiny_model("gemma-tied"))
    broken = _widened_with(
        small,
        "gemma",
        lambda real: _renamed(
            real, lambda n, t, m: _widen_module._rep(t, 1, m.k) / m.sqrt_k if n == "model.embed_tokens.weight" else None
        ),
    )
    assert _relative(small, broken) > 1e-3
    with pytest.raises(ValueError, match="mode='heads' only"):
        widen(small, 2, mode="head_dim")


@pytest.mark.parametrize("name", ["gemma-tied", "gemma2-sandwich-softcap"])
def test_gemma_final_norm_outputs_rep_h_for_the_head(name: str) -> None:
    """Tied (and, by the same rule, untied) head: the final norm must output rep(h), not the stream's rep(h)/√k."""
    small = randomized(tiny_model(name))
    family = small.config.model_type
    broken = _widened_with(
        small,
        family,
        lambda real: _renamed(
            real, lambda n, t, m: _widen_module._gemma_norm(m, t, 1 / m.sqrt_k) if n == "model.norm.weight" else None
        ),
    )
    assert _relative(small, broken) > 1e-3


def test_gemma_one_plus_w_norms_need_the_affine_rule() -> None:
    """Mapping w like a plain γ (rep(w)/√k) instead of 1 + w' = rep(1 + w)/√k changes every sandwich norm."""
    small = randomized(tiny_model("gemma2-sandwich-softcap"))
    broken = _widened_with(
        small,
        "gemma2",
        lambda real: _renamed(
            real, lambda n, t, m: _widen_module._rep(t, 0, m.k) / m.sqrt_k if "layernorm" in n else None
        ),
    )
    assert _relative(small, broken) > 1e-3


def test_gemma3_qk_norms_need_the_joint_rescaling() -> None:
    small = randomized(tiny_model("gemma3-qk-norm-local-rope"))
    broken = _widened_with(
        small,
        "gemma3_text",
        lambda real: (
            lambda m, sd, config: {
                n: (t * m.sqrt_k if n.endswith(("q_proj.weight", "k_proj.weight")) else t)
                for n, t in real(m, sd, config).items()
            }
        ),
    )
    assert 1e-9 < _relative(small, broken)  # eps-sized, but far above the parity bound


def test_gemma_norms_need_the_float64_patch() -> None:
    """HF's Gemma RMSNorm computes in float32 even for float64 input: ~1e-7 without float64_norms."""
    small = randomized(tiny_model("gemma-tied"))
    large = widen(small, 2)
    assert max_logit_difference(small, large, INPUTS) / output_scale(small, INPUTS) > 1e-9
    assert _relative(small, large) <= 1e-10


def test_gemma_gradient_map_and_adam_transfer_through_the_affine_norms() -> None:
    """The (1 + w) rule is affine; under probing it exposes its linear part rep(w)/√k, which is
    ∂w'/∂w: the gradient map and the transferred Adam moments are then the large model's own."""
    small = randomized(tiny_model("gemma2-sandwich-softcap"))
    grow = lambda m: deepen(widen(m, 2), [0])  # noqa: E731
    gmap = _assert_gradient_map(small, grow)
    scale = gmap.scale["model.layers.0.post_attention_layernorm.weight"]
    assert torch.allclose(scale, torch.full_like(scale, 2**-0.5))  # the linear part, not the affine map's value
    assert torch.allclose(gmap.scale["model.norm.weight"], torch.ones(32, dtype=torch.float64))
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    history = []
    for _ in range(2):
        with float64_norms():
            history.append(gradients(grow(small), INPUTS))
            gradients(small, INPUTS)
        opt.step()
    large = grow(small)
    large_opt = torch.optim.AdamW(large.parameters())
    transfer_adam_state(opt, small, large_opt, large, grow)
    for n, p in large.named_parameters():  # live entries: the moving average of the large model's own gradients
        live = (gmap.scale[n] > 0).view_as(p)
        m = 0.1 * 0.9 * history[0][n] + 0.1 * history[1][n]
        assert torch.allclose(large_opt.state[p]["exp_avg"][live], m[live], rtol=1e-8, atol=1e-14), n
        assert not large_opt.state[p]["exp_avg"][~live].any()  # fresh entries (the inserted block) start at zero


@pytest.mark.parametrize(
    ("name", "up"),
    [
        ("gemma3-qk-norm-local-rope", "model.layers.0.mlp.up_proj.weight"),
        ("opt-post-ln-proj", "model.decoder.layers.0.fc1.weight"),
        ("mixtral", "model.layers.0.mlp.experts.gate_up_proj"),
        ("qwen3-moe-dense-layer", "model.layers.1.mlp.up_proj.weight"),
    ],
)
def test_noise_keeps_the_function_and_separates_the_copies(name: str, up: str) -> None:
    small = randomized(tiny_model(name))
    noisy = widen(small, 2, noise=0.05, seed=1)
    assert _relative(small, noisy) <= 1e-10
    with float64_norms():
        g = gradients(noisy, INPUTS)[up]
    g = g[0] if g.dim() == 3 else g  # experts: expert 0's rows
    assert float((g[0] - g[1]).abs().max()) > 1e-3 * float(g[0].abs().max())  # unit 0 and its copy


def test_gemma2_soft_caps_and_query_scalar_are_exercised() -> None:
    """They need no rule (heads mode keeps scores and logits), but the zoo's Gemma 2 must exercise them."""
    small = randomized(tiny_model("gemma2-sandwich-softcap"))
    for field, value in (
        ("attn_logit_softcapping", None),
        ("final_logit_softcapping", None),
        ("query_pre_attn_scalar", 8),
    ):
        config = copy.deepcopy(small.config)
        setattr(config, field, value)
        other = type(small)(config).double().eval()
        other.load_state_dict(small.state_dict())
        assert _relative(small, other) > 1e-2, field


def test_gemma3_deepen_keeps_sliding_layers_sliding_with_their_rope_base(tmp_path) -> None:
    small = randomized(tiny_model("gemma3-qk-norm-local-rope"))
    large = deepen(small, [-1, 0])
    assert large.config.layer_types == ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
    attention = large.model.layers[2].self_attn  # the inserted copy of layer 0
    assert attention.is_sliding and attention.sliding_window == 4
    reloaded = _reloaded(widen_ffn(widen(large, 2), 70), tmp_path)
    assert reloaded.config.layer_types == large.config.layer_types
    assert reloaded.config.rope_parameters["sliding_attention"]["rope_theta"] == 10.0
    assert _relative(small, reloaded) <= 1e-10
    # what the rebuilt layer_types prevent: the same weights with the types shifted by the insertion
    shifted = copy.deepcopy(large.config)
    shifted.layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    wrong = type(large)(shifted).double().eval()
    wrong.load_state_dict(large.state_dict())
    assert _relative(small, wrong) > 1e-3


# ---- OPT


def test_opt_needs_the_undivided_stream() -> None:
    """OPT's LayerNorm eps is fixed in the modules: the divided stream rep(h)/√k would need eps/k.

    (Divided, the tied head needs no 1/k, as in GPT-2: rep(h)/√k · rep(E)/√k = h·E; so the
    producer rule is switched off too, and what remains is the eps error alone.)"""
    small = randomized(tiny_model("opt-pre-ln"))

    def divided(real):
        def maps(m, sd, config):
            m = copy.copy(m)
            m.divided = True
            return real(m, sd, config)

        return maps

    real_producer = _widen_module._opt_head_producer
    _widen_module._opt_head_producer = lambda config: None
    try:
        broken = _widened_with(small, "opt", divided)
    finally:
        _widen_module._opt_head_producer = real_producer
    assert 1e-9 < _relative(small, broken) < 1e-2  # eps-sized


@pytest.mark.parametrize("name", ["opt-pre-ln", "opt-post-ln-tied"])
def test_opt_tied_head_takes_its_one_over_k_at_the_last_layer_norm(name: str) -> None:
    small = randomized(tiny_model(name))
    producer = _widen_module._opt_head_producer(small.config)
    expected = "model.decoder.final_layer_norm" if name == "opt-pre-ln" else "model.decoder.layers.1.final_layer_norm"
    assert producer == expected
    large = widen(small, 2)
    assert large.config.tie_word_embeddings and _relative(small, large) < 1e-12
    with torch.no_grad():  # undo the 1/k on the head's input: the tied head then reads k h·E
        norm = large.get_submodule(producer)
        norm.weight.mul_(2)
        norm.bias.mul_(2)
    assert _relative(small, large) > 1e-3


def test_opt_without_affine_norms_unties_the_grown_head_and_reloads(tmp_path) -> None:
    small = randomized(tiny_model("opt-no-bias-no-affine"))
    large = widen(small, 2)
    assert small.config.tie_word_embeddings and not large.config.tie_word_embeddings
    assert large.lm_head.weight.data_ptr() != large.model.decoder.embed_tokens.weight.data_ptr()
    assert _relative(small, _reloaded(deepen(large, [0]), tmp_path)) <= 1e-10
    # the embedding and the untied head now get different gradients, which the small model's tied one cannot tell apart
    with pytest.raises(ValueError, match="splits a parameter"):
        GrowthMap.probe(small, lambda m: widen(m, 2))


def test_opt_350m_shape_grows_through_its_projections_and_reloads(tmp_path) -> None:
    """word_embed_proj_dim ≠ hidden_size: project_in/out absorb the width, embeddings stay as they were."""
    small = randomized(tiny_model("opt-post-ln-proj"))
    large = widen_ffn(widen(small, 2), 70)
    assert torch.equal(large.model.decoder.embed_tokens.weight, small.model.decoder.embed_tokens.weight)
    assert large.model.decoder.project_in.weight.shape == (32, 8)
    reloaded = _reloaded(large, tmp_path)
    assert reloaded.config.hidden_size == 32 and reloaded.config.word_embed_proj_dim == 8
    assert _relative(small, reloaded) <= 1e-10
    with pytest.raises(ValueError, match="do_layer_norm_before=False"):
        deepen(small, [0])


# ---- Mixtral


def test_mixtral_widening_keeps_the_router_logits() -> None:
    small = randomized(tiny_model("mixtral"))
    large = widen(small, 2, noise=0.05)
    with torch.no_grad(), float64_norms():
        a = small(**INPUTS, output_router_logits=True).router_logits
        b = large(**INPUTS, output_router_logits=True).router_logits
    assert max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)) <= 1e-12
    assert _relative(small, large) <= 1e-10
    with pytest.raises(ValueError, match="mode='heads' only"):
        widen(small, 2, mode="head_dim")


@pytest.mark.parametrize("c", [2, 3])
def test_add_experts_is_exact_only_with_top_k_raised(c: int, tmp_path) -> None:
    small = randomized(tiny_model("mixtral"))
    large = add_experts(small, c)
    assert (large.config.num_local_experts, large.config.num_experts_per_tok) == (4 * c, 2 * c)
    assert _relative(small, large) <= 1e-10
    # top-k kept: the K largest entries are K copies of fewer experts, a different mixture
    kept = copy.deepcopy(large.config)
    kept.num_experts_per_tok = small.config.num_experts_per_tok
    wrong = type(large)(kept).double().eval()
    wrong.load_state_dict(large.state_dict())
    assert _relative(small, wrong) > 1e-3
    if c == 2:
        assert _relative(small, _reloaded(large, tmp_path)) <= 1e-10


def test_add_experts_noise_keeps_the_function_and_separates_the_copies() -> None:
    small = randomized(tiny_model("mixtral"))
    exact, noisy = add_experts(small, 2), add_experts(small, 2, noise=0.05, seed=2)
    assert _relative(small, noisy) <= 1e-10
    name = "model.layers.0.mlp.experts.gate_up_proj"
    with float64_norms():
        g_exact, g_noisy = gradients(exact, INPUTS)[name], gradients(noisy, INPUTS)[name]
    assert torch.allclose(
        g_exact[0], g_exact[1], rtol=1e-10, atol=1e-15
    )  # copies of expert 0: same gradients without noise
    assert float((g_noisy[0] - g_noisy[1]).abs().max()) > 1e-3 * float(g_noisy[0].abs().max())
    with pytest.raises(ValueError, match="noise"):
        add_experts(small, 2, noise=-1)
    with pytest.raises(ValueError, match="factor"):
        add_experts(small, 1)
    with pytest.raises(ValueError, match="supported: mixtral"):
        add_experts(tiny_model("llama-tied"), 2)


def test_add_experts_gradient_map_and_adam_transfer() -> None:
    small = randomized(tiny_model("mixtral"))
    grow = lambda m: add_experts(m, 2)  # noqa: E731
    gmap = _assert_gradient_map(small, grow)
    assert torch.equal(gmap.count["model.layers.0.mlp.gate.weight"], torch.full((8 * 16,), 2.0, dtype=torch.float64))
    opt = torch.optim.Adam(small.parameters())
    with float64_norms():
        gradients(small, INPUTS)
        g_large = gradients(grow(small), INPUTS)
    opt.step()
    large = grow(small)
    large_opt = torch.optim.Adam(large.parameters())
    transfer_adam_state(opt, small, large_opt, large, grow)
    for n, p in large.named_parameters():
        assert torch.allclose(large_opt.state[p]["exp_avg"], 0.1 * g_large[n], rtol=1e-8, atol=1e-14), n


def test_qwen3_moe_dense_layers_follow_their_layer_through_deepen(tmp_path) -> None:
    """Qwen3-MoE picks dense or sparse by layer index (mlp_only_layers): rebuilt, each layer keeps its kind."""
    small = randomized(tiny_model("qwen3-moe-dense-layer"))
    assert small.config.mlp_only_layers == [1] and not small.config.norm_topk_prob
    large = deepen(small, [-1, 1])
    assert large.config.mlp_only_layers == [2, 3] and large.config.decoder_sparse_step == 1
    reloaded = _reloaded(add_experts(widen(large, 2), 2), tmp_path)
    assert reloaded.config.num_experts == 8 and reloaded.config.mlp_only_layers == [2, 3]
    assert _relative(small, reloaded) <= 1e-10
    depth = importlib.import_module("kexue.growth.depth")
    real = depth._dense_layers_follow
    depth._dense_layers_follow = lambda *args: None  # mlp_only_layers=[1] kept: new layer 1 (old 0, sparse) made dense
    try:
        with pytest.raises(RuntimeError, match="parameters not set"):
            deepen(small, [-1, 1])
    finally:
        depth._dense_layers_follow = real


# ---- the zoo and the errors


def test_zoo_lists_every_family_with_its_operators() -> None:
    from kexue.growth import PRE_NORM, SUPPORTED

    models = tiny_models()
    assert set(models) == set(ZOO) and {m.config.model_type for m in models.values()} <= set(SUPPORTED)
    assert set(SUPPORTED) - {"mistral"} <= {m.config.model_type for m in models.values()}  # Mistral: LLaMA's code path
    for name, model in models.items():
        assert set(operators(name)) <= set(OPERATORS)
        assert ("deepen" in operators(name)) == (
            model.config.model_type in PRE_NORM and getattr(model.config, "do_layer_norm_before", True)
        )
    with pytest.raises(ValueError, match="name='t5' is not supported"):
        tiny_model("t5")


def test_unsupported_families_name_the_supported_ones() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    for grow in (lambda m: widen(m, 2), lambda m: widen_ffn(m, 40), lambda m: deepen(m, [0])):
        with pytest.raises(ValueError, match=r"supported: .*gemma.*gemma2.*gemma3_text.*opt.*mixtral"):
            grow(t5)
