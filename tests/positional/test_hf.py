"""HF models on kexue's rotary kernel: same logits, same greedy tokens, reversible."""

from __future__ import annotations

import importlib

import pytest
import torch

from kexue.positional.hf import SUPPORTED_FAMILIES, hf_apply_rotary_pos_emb, hf_apply_rotary_pos_emb_, patch_hf_rope

transformers = pytest.importorskip("transformers")

SMALL = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 1, "head_dim": 32}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 24}),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "num_key_value_heads": 4,
            "pad_token_id": 0,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        },
    ),
}


def _model(family: str):
    config_class, model_class, extra = MODELS[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**SMALL, **extra)
    return getattr(transformers, model_class)(config).eval()


def test_every_supported_family_is_tested() -> None:
    assert set(MODELS) == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_same_logits_and_greedy_tokens_with_the_kv_cache(family: str, in_place: bool, monkeypatch) -> None:
    from kexue.positional import hf

    calls = []
    real = hf.apply_rotary_qk
    monkeypatch.setattr(hf, "apply_rotary_qk", lambda *a, **kw: calls.append(kw.get("out")) or real(*a, **kw))
    model = _model(family)
    module = importlib.import_module(SUPPORTED_FAMILIES[family])
    original = module.apply_rotary_pos_emb
    ids = torch.randint(1, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        want_tokens = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        with patch_hf_rope(model, in_place=in_place) as patch:
            assert module.apply_rotary_pos_emb is (hf_apply_rotary_pos_emb_ if in_place else hf_apply_rotary_pos_emb)
            assert patch.active
            got = model(ids).logits
            assert len(calls) == SMALL["num_hidden_layers"]  # q and k of every layer, one call each
            assert all((out is not None) == in_place for out in calls)
            got_tokens = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert module.apply_rotary_pos_emb is original and not patch.active
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_tokens, want_tokens)


def test_in_place_rotates_out_of_place_when_gradients_are_needed() -> None:
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    k = torch.randn(1, 2, 5, 8)
    angles = torch.randn(1, 5, 4)
    cos, sin = torch.cat((angles.cos(),) * 2, -1), torch.cat((angles.sin(),) * 2, -1)
    before = k.clone()
    rq, rk = hf_apply_rotary_pos_emb_(q, k, cos, sin)
    assert torch.equal(k, before) and rq.grad_fn is not None
    with torch.no_grad():
        q2, k2 = q.detach().clone(), k.clone()
        got = hf_apply_rotary_pos_emb_(q2, k2, cos, sin)
    assert got[0] is q2 and got[1] is k2  # rotated in place
    torch.testing.assert_close(q2, rq.detach(), rtol=0, atol=0)
    torch.testing.assert_close(k2, rk, rtol=0, atol=0)


def test_the_drop_in_equals_transformers_function_with_gradients() -> None:
    module = importlib.import_module(SUPPORTED_FAMILIES["llama"])
    model = _model("llama")
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    k = torch.randn(2, 2, 9, 16, requires_grad=True)
    positions = torch.arange(9)[None].expand(2, -1) + torch.tensor([[0], [5]])  # per-sequence offsets
    cos, sin = model.model.rotary_emb(q, positions)
    ours = hf_apply_rotary_pos_emb(q, k, cos, sin)
    theirs = module.apply_rotary_pos_emb(q, k, cos, sin)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    (ours[0].sum() + 2 * ours[1].sum()).backward()
    grads = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    (theirs[0].sum() + 2 * theirs[1].sum()).backward()
    torch.testing.assert_close(grads[0], q.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], k.grad, rtol=1e-6, atol=1e-6)


def test_patches_nest_and_removal_is_idempotent() -> None:
    module = importlib.import_module(SUPPORTED_FAMILIES["qwen2"])
    original = module.apply_rotary_pos_emb
    a, b = patch_hf_rope(_model("qwen2")), patch_hf_rope(_model("qwen2"))
    a.remove()
    a.remove()
    assert module.apply_rotary_pos_emb is hf_apply_rotary_pos_emb_  # b still holds it (in place by default)
    with pytest.raises(ValueError, match="in_place=False but the qwen2 patch already in force has in_place=True"):
        patch_hf_rope(_model("qwen2"), in_place=False)
    b.remove()
    assert module.apply_rotary_pos_emb is original
    with pytest.raises(ValueError, match="in_place=1 must be True or False"):
        patch_hf_rope(_model("qwen2"), in_place=1)


def test_unsupported_models_are_named() -> None:
    with pytest.raises(ValueError, match="families llama, mistral, qwen2, qwen3, phi3; got BertModel"):
        patch_hf_rope(
            transformers.BertModel(
                transformers.BertConfig(
                    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
                )
            )
        )
    with pytest.raises(ValueError, match="got int"):
        patch_hf_rope(3)
