"""Widening and deepening preserve the function (float64), reload with plain from_pretrained."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from kexue.growth import widen
from kexue.growth.depth import deepen
from kexue.growth.parity import float64_norms, gradient_map_error, gradients, max_logit_difference
from kexue.growth.zoo import randomized as _random
from kexue.growth.zoo import tiny_model

INPUTS = {"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))}

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4)
# the zoo's entries this file covers (tests/growth/test_families.py: Gemma 1-3, OPT, Mixtral, Qwen3-MoE)
NAMES = (
    "llama-gqa-untied",
    "llama-tied",
    "qwen2-bias-gqa",
    "qwen3-qk-norm",
    "phi3-fused-partial",
    "neox-parallel-partial",
    "olmo2-branch-norms",
    "neox-sequential-tied",
    "gpt2",
    "bert-mlm",
)


@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("k", [2, 3])
def test_widen_by_heads_is_exact_in_float64(name: str, k: int) -> None:
    small = _random(tiny_model(name))
    large = widen(small, k, mode="heads")
    assert sum(p.numel() for p in large.parameters()) > 3 * sum(p.numel() for p in small.parameters())
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10


@pytest.mark.parametrize("name", ["gpt2", "bert-mlm"])
def test_article_head_dim_widening_is_exact_without_rope(name: str) -> None:
    small = _random(tiny_model(name))
    assert max_logit_difference(small, widen(small, 2, mode="head_dim"), INPUTS) <= 1e-10


def test_documented_inexact_cases_are_inexact() -> None:
    small = _random(tiny_model("llama-gqa-untied"))
    with float64_norms():
        assert max_logit_difference(small, widen(small, 2, mode="head_dim"), INPUTS) > 1e-3  # RoPE frequencies change
        eps_kept = widen(small, 2, divide_norm_eps=False)
        assert 1e-8 < max_logit_difference(small, eps_kept, INPUTS) < 1e-2  # eps not scaled
    gpt2 = _random(tiny_model("gpt2"))
    plain_rule = widen(gpt2, 2, keep_preactivations=False)
    assert max_logit_difference(gpt2, plain_rule, INPUTS) > 1e-3  # plain repetition through GeLU
    assert max_logit_difference(gpt2, widen(gpt2, 2, ffn_out_bias_divisor="k"), INPUTS) > 1e-3  # the article's b2/k
    derived = widen(gpt2, 2, ffn_out_bias_divisor="sqrt_k")
    assert max_logit_difference(gpt2, derived, INPUTS) <= 1e-10  # the derived b2/sqrt(k)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"gelu_fix": False}, {"keep_preactivations": False}),
        ({"scale_eps": False}, {"divide_norm_eps": False}),
        ({"bias2": "k"}, {"ffn_out_bias_divisor": "k"}),
        ({"bias2": "sqrt"}, {"ffn_out_bias_divisor": "sqrt_k"}),
    ],
)
def test_renamed_widen_options_warn_and_give_the_new_options_result(
    old: dict[str, object], new: dict[str, object]
) -> None:
    gpt2 = _random(tiny_model("gpt2"))
    (old_name,), (new_name,) = old, new
    with pytest.warns(DeprecationWarning, match=f"widen\\({old_name}=...\\) is deprecated.*use widen\\({new_name}="):
        by_old = widen(gpt2, 2, **old)
    by_new = widen(gpt2, 2, **new)
    assert by_old.config.to_dict() == by_new.config.to_dict()
    for (name, a), (_, b) in zip(by_old.state_dict().items(), by_new.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_widen_rejects_unknown_options_and_bad_old_values() -> None:
    gpt2 = tiny_model("gpt2")
    with pytest.raises(TypeError, match="unexpected keyword argument 'gelu'"):
        widen(gpt2, 2, gelu=False)
    with pytest.raises(ValueError, match="bias2"), pytest.warns(DeprecationWarning, match="bias2"):
        widen(gpt2, 2, bias2="sqrt_k")
    with pytest.raises(ValueError, match="ffn_out_bias_divisor"):
        widen(gpt2, 2, ffn_out_bias_divisor="sqrt")


def test_embedded_minilm_widens_exactly() -> None:
    from transformers import AutoModel

    from kexue.data import embedded_model_path

    small = AutoModel.from_pretrained(str(embedded_model_path())).double().eval()
    large = widen(small, 2)
    enc = {
        "input_ids": torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]]),
        "attention_mask": torch.ones(1, 7, dtype=torch.long),
    }
    assert large.config.hidden_size == 768 and large.config.num_attention_heads == 24
    assert max_logit_difference(small, large, enc) <= 1e-10


@pytest.mark.parametrize(
    "name",
    [
        "llama-gqa-untied",
        "qwen2-bias-gqa",
        "gpt2",
        "qwen3-qk-norm",
        "phi3-fused-partial",
        "neox-parallel-partial",
        "neox-sequential-tied",
        "olmo2-branch-norms",
    ],
)
def test_deepen_inserts_identity_blocks(name: str) -> None:
    small = _random(tiny_model(name))
    large = deepen(small, [-1, 0, 1, 1])
    layers = large.config.n_layer if name == "gpt2" else large.config.num_hidden_layers
    assert layers == 6
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-12
    # the inserted blocks can learn: their zeroed output projections get non-zero gradients
    large.train()
    large(**INPUTS).logits.pow(2).mean().backward()
    zeroed = [
        p
        for n, p in large.named_parameters()
        if (".1." in n or ".0." in n)
        and any(out in n for out in ("o_proj", "c_proj", "attention.dense", "dense_4h_to_h"))
    ]
    assert any(float(p.grad.abs().max()) > 0 for p in zeroed)


def test_save_and_reload_with_plain_from_pretrained(tmp_path) -> None:
    small = _random(tiny_model("llama-gqa-untied"))
    large = deepen(widen(small, 2), [0])
    large.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    with float64_norms():
        assert max_logit_difference(small, reloaded, INPUTS) <= 1e-10


def test_unsupported_models_and_bad_arguments() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="supported: bert, gpt2, llama"):
        widen(t5, 2)
    with pytest.raises(ValueError, match="post-norm"):
        deepen(tiny_model("bert-mlm"), [0])
    with pytest.raises(ValueError, match="factor"):
        widen(tiny_model("gpt2"), 1)
    with pytest.raises(ValueError, match="mode"):
        widen(tiny_model("gpt2"), 2, mode="tiled")
    with pytest.raises(ValueError, match="out of range"):
        deepen(tiny_model("gpt2"), [5])


@pytest.mark.parametrize("name", list(NAMES))
def test_widen_ffn_is_exact_for_any_size(name: str) -> None:
    from kexue.growth import widen_ffn

    small = _random(tiny_model(name))
    old = 64 if name == "gpt2" else 24  # GPT-2: n_inner None = 4 n_embd
    large = widen_ffn(small, old * 2 + 5)
    assert large.config.to_dict().get("n_inner" if name == "gpt2" else "intermediate_size") == old * 2 + 5
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10
    with pytest.raises(ValueError, match="intermediate_size"):
        widen_ffn(small, old - 1)


def test_growth_never_aliases_the_small_model() -> None:
    from kexue.growth import widen_ffn

    small = _random(tiny_model("bert-mlm"))
    large = widen_ffn(deepen(_random(tiny_model("gpt2")), [0]), 70)
    ptrs = {t.data_ptr() for t in small.state_dict().values()}
    assert not ptrs & {t.data_ptr() for t in widen(small, 2).state_dict().values()}
    assert all(not p.is_meta for p in large.parameters())


@pytest.mark.parametrize("name", ["llama-gqa-untied", "gpt2", "bert-mlm"])
def test_symmetry_breaking_keeps_the_function_and_separates_the_copies(name: str) -> None:
    small = _random(tiny_model(name))
    exact, noisy = widen(small, 2), widen(small, 2, noise=0.05, seed=3)
    with float64_norms():
        assert max_logit_difference(small, noisy, INPUTS) <= 1e-10
    up = {
        "llama-gqa-untied": "model.layers.0.mlp.up_proj.weight",
        "gpt2": "transformer.h.0.mlp.c_fc.weight",
        "bert-mlm": "bert.encoder.layer.0.intermediate.dense.weight",
    }[name]
    with float64_norms():
        g_exact, g_noisy = gradients(exact, INPUTS)[up], gradients(noisy, INPUTS)[up]
    if name == "gpt2":  # Conv1D: units are columns
        g_exact, g_noisy = g_exact.T, g_noisy.T
    # without noise the two copies of unit 0 (rows 0 and 1) get the same gradient: they stay copies forever
    assert torch.equal(g_exact[0], g_exact[1]) and float(g_exact[0].abs().max()) > 0
    # with noise their gradients differ by far more than rounding
    assert float((g_noisy[0] - g_noisy[1]).abs().max()) > 1e-3 * float(g_noisy[0].abs().max())
    assert not torch.equal(widen(small, 2, noise=0.05, seed=4).state_dict()[up], noisy.state_dict()[up])


def test_symmetry_breaking_for_ffn_widening() -> None:
    from kexue.growth import widen_ffn

    small = _random(tiny_model("qwen2-bias-gqa"))
    noisy = widen_ffn(small, 48, noise=0.05)
    with float64_norms():
        assert max_logit_difference(small, noisy, INPUTS) <= 1e-10
        g = gradients(noisy, INPUTS)["model.layers.0.mlp.gate_proj.weight"]
    assert float((g[0] - g[24]).abs().max()) > 1e-3 * float(g[0].abs().max())  # unit 0 and its copy 24
    with pytest.raises(ValueError, match="noise"):
        widen_ffn(small, 48, noise=-1)


_GRAD_CASES = [
    (name, op)
    for name in NAMES
    for op in ("widen-heads", "widen-head_dim", "ffn", "deepen")
    if not (op == "deepen" and name == "bert-mlm")  # refused: post-norm
    and not (op == "widen-head_dim" and name not in ("gpt2", "bert-mlm"))
]  # inexact under RoPE


@pytest.mark.parametrize(("name", "op"), _GRAD_CASES)
def test_gradient_map_gives_the_large_models_gradient(name: str, op: str) -> None:
    """The identity behind the Adam-state transfer: at the grown point, g̃_j = g_s(j) / (n a_j)."""
    from kexue.growth import widen_ffn
    from kexue.growth.optim import GrowthMap

    grow = {
        "widen-heads": lambda m: widen(m, 2),
        "widen-head_dim": lambda m: widen(m, 2, mode="head_dim"),
        "ffn": lambda m: widen_ffn(m, 40 if name != "gpt2" else 100),
        "deepen": lambda m: deepen(m, [0, 1]),
    }[op]
    small = _random(tiny_model(name))
    large = grow(small)
    gmap = GrowthMap.probe(small, grow)
    assert gradient_map_error(small, large, gmap, INPUTS) <= 1e-9
    with float64_norms():
        g_large = gradients(large, INPUTS)
    if op != "deepen":
        assert all(bool((gmap.scale[n] > 0).all()) for n in g_large)  # widening creates no fresh entries
    if op == "deepen":  # the inserted blocks are fresh: their zeroed projections do get gradients
        assert any(float(g_large[n].abs().max()) > 0 for n in g_large if not bool((gmap.scale[n] > 0).any()))


def test_transfer_adam_state_matches_the_gradient_history() -> None:
    """Two Adam steps on the small model, transfer: the large model's moments equal the moving
    averages of the large model's own gradients at the grown points of the same trajectory."""
    small = _random(tiny_model("llama-gqa-untied"))
    grow = lambda m: widen(m, 2)  # noqa: E731
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3, betas=(0.9, 0.99), amsgrad=True)
    history = []
    for _ in range(2):
        grown_now = grow(small)
        with float64_norms():
            gradients(small, INPUTS)
            history.append(gradients(grown_now, INPUTS))
        opt.step()
    large = grow(small)
    large_opt = torch.optim.AdamW(large.parameters(), lr=5e-4, amsgrad=True)
    from kexue.growth.optim import transfer_adam_state

    transfer_adam_state(opt, small, large_opt, large, grow)
    for n, p in large.named_parameters():
        st = large_opt.state[p]
        m = 0.1 * 0.9 * history[0][n] + 0.1 * history[1][n]
        v = 0.01 * 0.99 * history[0][n] ** 2 + 0.01 * history[1][n] ** 2
        assert float(st["step"]) == 2
        assert torch.allclose(st["exp_avg"], m, rtol=1e-8, atol=1e-14), n
        assert torch.allclose(st["exp_avg_sq"], v, rtol=1e-8, atol=1e-20), n
    large_opt.step()  # the state is usable as is
    with pytest.raises(ValueError, match="no Adam state"):
        transfer_adam_state(torch.optim.AdamW(small.parameters()), small, large_opt, large, grow)
    with pytest.raises(ValueError, match="grow"):
        transfer_adam_state(opt, small, large_opt, large, lambda m: widen(m, 3))


@pytest.mark.parametrize("name", list(NAMES))
def test_float32_parity_is_within_relative_1e_minus_4(name: str) -> None:
    from kexue.growth import widen_ffn

    small = _random(tiny_model(name)).float()
    with torch.no_grad():
        scale = float(small(**INPUTS).logits.abs().max())
    ops = [lambda m: widen(m, 2), lambda m: widen_ffn(m, 100)] + (
        [] if name == "bert-mlm" else [lambda m: deepen(m, [0])]
    )
    for op in ops:
        assert max_logit_difference(small, op(small), INPUTS) <= 1e-4 * scale


@pytest.mark.parametrize("after", [[-1, 1], [0], [0, 0, 1]])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_deepen_gpt2_with_scores_scaled_by_inverse_layer_index(after: list[int], attention: str) -> None:
    """GPT-2 divides layer i's attention scores by i + 1: moved layers get their query rescaled."""
    config = GPT2Config(
        vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32, scale_attn_by_inverse_layer_idx=True
    )
    config._attn_implementation = attention
    small = _random(GPT2LMHeadModel(config))
    large = deepen(small, after)
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10
    # what the fix prevents: the same blocks without the query rescaling change the logits
    from kexue.growth import depth

    real = depth._index_compensation
    try:
        depth._index_compensation = lambda *a: None
        unfixed = deepen(small, after)
    finally:
        depth._index_compensation = real
    assert max_logit_difference(small, unfixed, INPUTS) > 1e-5


def test_deepen_gpt2_scaled_transfers_adam_state_through_the_rescaling() -> None:
    from kexue.growth.optim import GrowthMap

    config = GPT2Config(
        vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32, scale_attn_by_inverse_layer_idx=True
    )
    small = _random(GPT2LMHeadModel(config))
    grow = lambda m: deepen(m, [-1])  # noqa: E731  every original layer moves up one index
    large = grow(small)
    gmap = GrowthMap.probe(small, grow)
    scale = gmap.scale["transformer.h.1.attn.c_attn.weight"].view(16, 48)
    assert torch.allclose(scale[:, :16], torch.full((16, 16), 2.0, dtype=scale.dtype))  # (1 + 1) / (0 + 1): the query
    assert torch.allclose(scale[:, 16:], torch.ones(16, 32, dtype=scale.dtype))  # keys and values unscaled
    assert gradient_map_error(small, large, gmap, INPUTS) <= 1e-9


def test_deepen_qwen2_sliding_window_layers_keep_their_type() -> None:
    """Qwen2 makes layers past max_window_layers sliding-window ones: an inserted block copies the
    type of the layer it follows, and every original layer keeps its own."""
    config = Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    config._attn_implementation = "eager"
    small = _random(Qwen2ForCausalLM(config))
    assert small.config.layer_types == ["full_attention", "sliding_attention"]
    large = deepen(small, [-1, 0, 1])
    assert large.config.layer_types == [
        "full_attention",
        "full_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
    ]
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10  # 12 tokens > the window of 4: the types matter
    flipped = deepen(small, [0])
    flipped.config.layer_types = ["full_attention"] * 3  # what a rebuilt-from-max_window_layers config would say
    wrong = Qwen2ForCausalLM(flipped.config).double().eval()
    wrong.load_state_dict(flipped.state_dict())
    with float64_norms():
        assert max_logit_difference(small, wrong, INPUTS) > 1e-5


def _widened_with(small: torch.nn.Module, family: str, make) -> torch.nn.Module:
    """``widen(small, 2)`` with the family's map replaced by ``make(its real map)``: the mistake a test shows."""
    module = importlib.import_module("kexue.growth.widen")  # the module (kexue.growth.widen is also the function)
    real = module._ARCH[family]
    module._ARCH[family] = make(real)
    try:
        return widen(small, 2)
    finally:
        module._ARCH[family] = real


def _reloaded(large: torch.nn.Module, folder) -> torch.nn.Module:
    large.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()


def test_qwen3_qk_norms_need_the_joint_rescaling() -> None:
    """Without dividing q and k by √k, the per-head norms see eps/k against unscaled vectors: inexact."""
    small = _random(tiny_model("qwen3-qk-norm"))
    large = widen(small, 2)
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10

    def without_rescaling(real):  # q_norm/k_norm kept, but q and k not divided by √k
        return lambda m, sd, config: {
            n: (t * m.sqrt_k if n.endswith(("q_proj.weight", "k_proj.weight")) else t)
            for n, t in real(m, sd, config).items()
        }

    broken = _widened_with(small, "qwen3", without_rescaling)
    with float64_norms():
        assert max_logit_difference(small, broken, INPUTS) > 1e-8  # eps-sized, but 100x the parity bound
    with pytest.raises(ValueError, match="mode='heads' only"):
        widen(small, 2, mode="head_dim")


def test_qwen3_grown_reloads_with_plain_from_pretrained(tmp_path) -> None:
    small = _random(tiny_model("qwen3-qk-norm"))
    reloaded = _reloaded(deepen(widen(small, 2), [0]), tmp_path)
    assert (
        reloaded.config.num_attention_heads == 8
        and reloaded.config.head_dim == 8
        and reloaded.config.num_hidden_layers == 3
    )
    with float64_norms():
        assert max_logit_difference(small, reloaded, INPUTS) <= 1e-10


def test_phi3_fused_projections_are_split_by_role_and_reload(tmp_path) -> None:
    from kexue.growth import widen_ffn

    small = _random(tiny_model("phi3-fused-partial"))
    reloaded = _reloaded(deepen(widen_ffn(widen(small, 2), 80), [1]), tmp_path)
    assert reloaded.config.intermediate_size == 80 and reloaded.config.num_hidden_layers == 3
    with float64_norms():
        assert max_logit_difference(small, reloaded, INPUTS) <= 1e-10

    def fused_as_one(real):  # qkv mapped as one block: heads tiled as [q k v q k v], not [q q k k v v]
        def maps(m, sd, config):
            new = real(m, sd, config)
            for name in sd:
                if name.endswith("qkv_proj.weight"):
                    new[name] = m.qk(sd[name], None)[0]
            return new

        return maps

    broken = _widened_with(small, "phi3", fused_as_one)
    with float64_norms():
        assert max_logit_difference(small, broken, INPUTS) > 1e-3


def test_gpt_neox_per_head_qkv_layout_matters_and_reloads(tmp_path) -> None:
    """The fused rows are grouped per head ([q_h; k_h; v_h]): tiling them as plain q/k/v blocks breaks the function."""
    from kexue.growth import widen_ffn

    small = _random(tiny_model("neox-parallel-partial"))
    reloaded = _reloaded(deepen(widen_ffn(widen(small, 2), 60), [0]), tmp_path)
    assert reloaded.config.num_attention_heads == 8 and reloaded.config.intermediate_size == 60
    with float64_norms():
        assert max_logit_difference(small, reloaded, INPUTS) <= 1e-10

    def as_stacked_blocks(real):  # rows read as [q; k; v] stacked (LLaMA-style), not per head
        def maps(m, sd, config):
            new = real(m, sd, config)
            for name, w in sd.items():
                if name.endswith("query_key_value.weight"):
                    d = w.shape[0] // 3
                    new[name] = torch.cat([m.qk(w[j * d : (j + 1) * d], None)[0] for j in range(3)])
            return new

        return maps

    broken = _widened_with(small, "gpt_neox", as_stacked_blocks)
    with float64_norms():
        assert max_logit_difference(small, broken, INPUTS) > 1e-3


def test_olmo2_whole_projection_norms_are_tiled_and_reload(tmp_path) -> None:
    """OLMo 2's q/k norms span all heads: tiled over the copies (with q, k produced 1/√k smaller);
    treating them as stream norms (LLaMA's maps) is a different function."""
    small = _random(tiny_model("olmo2-branch-norms"))
    reloaded = _reloaded(deepen(widen(small, 2), [0, 1]), tmp_path)
    assert reloaded.config.num_attention_heads == 8 and reloaded.config.num_hidden_layers == 4
    with float64_norms():
        assert max_logit_difference(small, reloaded, INPUTS) <= 1e-10
    broken = _widened_with(small, "olmo2", lambda real: importlib.import_module("kexue.growth.widen")._llama)
    with float64_norms():
        assert max_logit_difference(small, broken, INPUTS) > 1e-3
