"""Mitchell attention, norms and gates: exact switches against transformers' own code, each
switch against its definition, gradients, and mitchellize on a LLaMA-style HF model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kexue import mitchell
from kexue.mitchell.nn import mitchellize, track_errors
from kexue.mitchell.transformer import (
    AttentionSwitches,
    MitchellGatedMLP,
    MitchellRMSNorm,
    bmm,
    mul,
)

EXACT = AttentionSwitches(scores=False, softmax=False, values=False, normalise=False)


def _qkv(seed: int = 0, heads: int = 4, kv_heads: int = 2, t: int = 9, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, t, d, generator=g)
    k, v = torch.randn(2, kv_heads, t, d, generator=g), torch.randn(2, kv_heads, t, d, generator=g)
    mask = torch.triu(torch.full((t, t), torch.finfo(torch.float32).min), 1)[None, None].expand(2, 1, t, t)
    return q, k, v, mask


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def test_exact_switches_reproduce_transformers_eager_attention() -> None:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, k, v, mask = _qkv()
    module = nn.Module()
    module.num_key_value_groups, module.training = 2, False
    want, want_p = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    rep = lambda x: x.repeat_interleave(2, dim=1)  # noqa: E731
    got, got_p = mitchell.attention(q, rep(k), rep(v), mask=mask, scaling=0.3, switches=EXACT)
    torch.testing.assert_close(got.transpose(1, 2), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_p, want_p, rtol=1e-6, atol=1e-7)


def test_each_switch_is_its_definition() -> None:
    q, k, v, mask = _qkv(1, heads=2, kv_heads=2)
    s = 1 / math.sqrt(8)
    scores = mitchell.mul(mitchell.bmm(q, k.transpose(-1, -2)), torch.tensor(s)) + mask
    _, p = mitchell.attention(q, k, v, mask=mask, switches=AttentionSwitches(scores=True, softmax=False, values=False))
    z = scores - scores.amax(-1, keepdim=True)
    assert torch.equal(p, torch.exp(z) / torch.exp(z).sum(-1, keepdim=True))
    out, p = mitchell.attention(q, k, v, mask=mask, switches=AttentionSwitches(scores=True, softmax=True, values=True))
    e = mitchell.exp2(mitchell.mul(z, torch.tensor(math.log2(math.e))))
    assert torch.equal(p, e / e.sum(-1, keepdim=True))
    assert torch.equal(out, mitchell.bmm(p, v))
    assert float(p[..., 0, 1:].abs().max()) == 0.0  # masked entries: exp2(-huge) is exactly 0
    exact, _ = mitchell.attention(q, k, v, mask=mask, switches=EXACT)
    rel = float((out - exact).norm() / exact.norm())
    assert 0.005 < rel < 0.15


def test_mitchell_exponential_never_below_exact_and_within_the_bound() -> None:
    z = torch.linspace(-30, 0, 20001, dtype=torch.float64)
    ratio = mitchell.softmax(z[None], exponentials=True).double() / torch.softmax(
        z[None], -1
    )  # same normaliser up to it
    e = mitchell.exp2(z / math.log(2)) / torch.exp(z)
    assert float(e.min()) >= 1 - 1e-15 and float(e.max()) == pytest.approx(2 / (math.e * math.log(2)), abs=1e-6)
    assert bool(torch.isfinite(ratio).all())


def test_exp2_gradient_is_the_derivative_of_the_approximation() -> None:
    from kexue.mitchell.transformer import _Exp2

    y = torch.tensor([-3.3, -0.6, 0.2, 2.7, 5.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Exp2.apply, (y,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("backward", ["mitchell", "exact"])
def test_bmm_and_mul_backwards_are_the_stated_products(backward: str) -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    b = torch.randn(5, 6, generator=g, requires_grad=True)
    grad = torch.randn(3, 4, 6, generator=g)
    bmm(a, b, backward=backward).backward(grad)
    if backward == "mitchell":
        assert torch.equal(a.grad, mitchell.bmm(grad, b.detach().T.contiguous()))
        assert torch.equal(b.grad, mitchell.bmm(a.detach().transpose(1, 2).contiguous(), grad).sum(0))
    else:
        torch.testing.assert_close(a.grad, grad @ b.detach().T)
        torch.testing.assert_close(b.grad, (a.detach().transpose(1, 2) @ grad).sum(0))
    x = torch.randn(4, 3, generator=g, requires_grad=True)
    w = torch.randn(3, generator=g, requires_grad=True)
    mul(x, w, backward=backward).backward(torch.ones(4, 3))
    want = mitchell.mul(torch.ones(4, 3), w.detach()) if backward == "mitchell" else w.detach().expand(4, 3)
    assert torch.equal(x.grad, want)


def test_rms_norm_matches_hf_when_exact_and_is_mitchell_products_otherwise() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hf = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(torch.linspace(0.5, 2, 16))
    ours = MitchellRMSNorm(hf.weight, 1e-5)
    x = torch.randn(3, 5, 16)
    assert torch.equal(ours._exact(x), hf(x))
    r = torch.rsqrt(mitchell.mul(x, x).mean(-1, keepdim=True) + 1e-5)
    assert torch.equal(ours(x), mitchell.mul(mitchell.mul(x, r), hf.weight.detach()))
    with torch.no_grad():
        assert 0.01 < float((ours(x) - hf(x)).norm() / hf(x).norm()) < 0.1


def test_mitchellize_hf_llama_all_parts_exact_switches_and_skips() -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(3))
    want = model(input_ids=ids).logits
    exact = mitchellize(copy.deepcopy(model), linears=False, attention=EXACT)
    torch.testing.assert_close(exact(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    full = copy.deepcopy(model)
    params = [p.data_ptr() for p in full.parameters()]
    mitchellize(
        full,
        attention=True,
        norms=True,
        gates=True,
        correction="piecewise",
        skip=("lm_head", "model.layers.1.self_attn"),
    )
    assert [p.data_ptr() for p in full.parameters()] == params
    layer0, layer1 = full.model.layers
    assert isinstance(layer0.mlp, MitchellGatedMLP) and isinstance(full.model.norm, MitchellRMSNorm)
    assert hasattr(layer0.self_attn, "_kexue_mitchell") and not hasattr(layer1.self_attn, "_kexue_mitchell")
    assert type(full.lm_head) is nn.Linear
    with track_errors(full) as errors:
        logits = full(input_ids=ids).logits
    assert "model.layers.0.self_attn.core" in errors and "model.layers.1.self_attn.core" not in errors
    assert "model.layers.0.mlp.gate" in errors and "model.norm" in errors and "lm_head" not in errors
    assert all(0 < v[0] < 0.05 for v in errors.values())  # piecewise-corrected: about 1 % per part
    logits.sum().backward()
    assert all(p.grad is not None for p in full.parameters() if p.requires_grad)


def test_mitchellize_rejects_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="backward"):
        mitchellize(_tiny_llama(), attention=True, backward="derivative")
    with pytest.raises(ValueError, match="attention"):
        mitchellize(nn.Sequential(nn.Linear(3, 3)), attention=True)
    with pytest.raises(TypeError, match="attention"):
        mitchellize(_tiny_llama(), attention="yes")
    with pytest.raises(ValueError, match="norms"):
        mitchellize(_tiny_llama(), norms=1)
