"""HF models on kexue's rotary kernel: same logits, same greedy tokens, reversible."""

from __future__ import annotations

import importlib

import pytest
import torch

from kexue.positional.hf import SUPPORTED_FAMILIES, hf_apply_rotary_pos_emb, patch_hf_rope

transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 256}
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 1, "head_dim": 32}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 24}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 4, "pad_token_id": 0,
                                               "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                   "partial_rotary_factor": 0.5}}),
}


def _model(family: str):
    config_class, model_class, extra = MODELS[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**SMALL, **extra)
    return getattr(transformers, model_class)(config).eval()


def test_every_supported_family_is_tested() -> None:
    assert set(MODELS) == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_same_logits_and_greedy_tokens_with_the_kv_cache(family: str, monkeypatch) -> None:
    from kexue.positional import hf

    calls = []
    real = hf.apply_rotary
    monkeypatch.setattr(hf, "apply_rotary", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = _model(family)
    module = importlib.import_module(SUPPORTED_FAMILIES[family])
    original = module.apply_rotary_pos_emb
    ids = torch.randint(1, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        want_tokens = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        with patch_hf_rope(model) as patch:
            assert module.apply_rotary_pos_emb is hf_apply_rotary_pos_emb and patch.active
            got = model(ids).logits
            assert len(calls) == 2 * SMALL["num_hidden_layers"]  # q and k of every layer went through kexue
            got_tokens = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert module.apply_rotary_pos_emb is original and not patch.active
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_tokens, want_tokens)


def test_the_drop_in_equals_transformers_function_with_gradients() -> None:
    module = importlib.import_module(SUPPORTED_FAMILIES["llama"])
    model = _model("llama")
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    k = torch.randn(2, 2, 9, 16, requires_grad=True)
    positions = torch.arange(9)[None].expand(2, -1) + torch.tensor([[0], [5]])  # per-sequence offsets
    cos, sin = model.model.rotary_emb(q, positions)
    ours = hf_apply_rotary_pos_emb(q, k, cos, sin)
    theirs = module.apply_rotary_pos_emb(q, k, cos, sin)
    for a, b in zip(ours, theirs):
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
    assert module.apply_rotary_pos_emb is hf_apply_rotary_pos_emb  # b still holds it
    b.remove()
    assert module.apply_rotary_pos_emb is original


def test_unsupported_models_are_named() -> None:
    with pytest.raises(ValueError, match="families llama, mistral, qwen2, qwen3, phi3; got BertModel"):
        patch_hf_rope(transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                     num_attention_heads=2, intermediate_size=37)))
    with pytest.raises(ValueError, match="got int"):
        patch_hf_rope(3)
