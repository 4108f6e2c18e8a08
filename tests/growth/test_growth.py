"""Widening and deepening preserve the function (float64), reload with plain from_pretrained."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from kexue.growth import widen
from kexue.growth.depth import deepen
from kexue.growth.parity import float64_norms, max_logit_difference

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4)


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)  # far from init: every weight matters
    return model.double().eval()


def _models() -> dict[str, torch.nn.Module]:
    return {
        "llama-gqa-untied": LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2, tie_word_embeddings=False)),
        "llama-tied": LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=4, tie_word_embeddings=True)),
        "qwen2-bias-gqa": Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2)),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32)),
        "bert-mlm": BertForMaskedLM(BertConfig(**SMALL, max_position_embeddings=32)),
    }


INPUTS = {"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))}


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("k", [2, 3])
def test_widen_by_heads_is_exact_in_float64(name: str, k: int) -> None:
    small = _random(_models()[name])
    large = widen(small, k, mode="heads")
    assert sum(p.numel() for p in large.parameters()) > 3 * sum(p.numel() for p in small.parameters())
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-10


@pytest.mark.parametrize("name", ["gpt2", "bert-mlm"])
def test_article_head_dim_widening_is_exact_without_rope(name: str) -> None:
    small = _random(_models()[name])
    assert max_logit_difference(small, widen(small, 2, mode="head_dim"), INPUTS) <= 1e-10


def test_documented_inexact_cases_are_inexact() -> None:
    small = _random(_models()["llama-gqa-untied"])
    with float64_norms():
        assert max_logit_difference(small, widen(small, 2, mode="head_dim"), INPUTS) > 1e-3  # RoPE frequencies change
        assert 1e-8 < max_logit_difference(small, widen(small, 2, scale_eps=False), INPUTS) < 1e-2  # eps not scaled
    gpt2 = _random(_models()["gpt2"])
    assert max_logit_difference(gpt2, widen(gpt2, 2, gelu_fix=False), INPUTS) > 1e-3  # plain repetition through GeLU
    assert max_logit_difference(gpt2, widen(gpt2, 2, bias2="k"), INPUTS) > 1e-3  # the article's b2/k
    assert max_logit_difference(gpt2, widen(gpt2, 2, bias2="sqrt"), INPUTS) <= 1e-10  # the derived b2/sqrt(k)


def test_embedded_minilm_widens_exactly() -> None:
    from transformers import AutoModel

    from kexue.data import embedded_model_path

    small = AutoModel.from_pretrained(str(embedded_model_path())).double().eval()
    large = widen(small, 2)
    enc = {"input_ids": torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]]), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    assert large.config.hidden_size == 768 and large.config.num_attention_heads == 24
    assert max_logit_difference(small, large, enc) <= 1e-10


@pytest.mark.parametrize("name", ["llama-gqa-untied", "qwen2-bias-gqa", "gpt2"])
def test_deepen_inserts_identity_blocks(name: str) -> None:
    small = _random(_models()[name])
    large = deepen(small, [-1, 0, 1, 1])
    layers = large.config.n_layer if name == "gpt2" else large.config.num_hidden_layers
    assert layers == 6
    with float64_norms():
        assert max_logit_difference(small, large, INPUTS) <= 1e-12
    # the inserted blocks can learn: their zeroed output projections get non-zero gradients
    large.train()
    large(**INPUTS).logits.pow(2).mean().backward()
    zeroed = [p for n, p in large.named_parameters() if (".1." in n or ".0." in n) and ("o_proj" in n or "c_proj" in n)]
    assert any(float(p.grad.abs().max()) > 0 for p in zeroed)


def test_save_and_reload_with_plain_from_pretrained(tmp_path) -> None:
    small = _random(_models()["llama-gqa-untied"])
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
        deepen(_models()["bert-mlm"], [0])
    with pytest.raises(ValueError, match="factor"):
        widen(_models()["gpt2"], 1)
    with pytest.raises(ValueError, match="mode"):
        widen(_models()["gpt2"], 2, mode="tiled")
    with pytest.raises(ValueError, match="out of range"):
        deepen(_models()["gpt2"], [5])
