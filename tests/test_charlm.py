"""The char-LM workbench: corpus split and codec, the FLOPs count by hand, deterministic evaluation."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from kexue.charlm import CharCorpus, evaluate, flops_per_token


def test_corpus_codec_and_split() -> None:
    corpus = CharCorpus("abcabcabca" * 10, val_fraction=0.1)
    assert corpus.vocab_size == 3 and corpus.decode(corpus.encode("cab")) == "cab"
    assert len(corpus.train) == 90 and len(corpus.val) == 10
    with pytest.raises(ValueError, match="empty"):
        CharCorpus("")


def test_flops_per_token_by_hand() -> None:
    llama = LlamaConfig(
        vocab_size=65,
        hidden_size=64,
        intermediate_size=168,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    # per layer: q, o (64x64 each), k, v (64x32 each), gate/up/down (64x168 each); plus the head 64x65
    n = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 168) + 64 * 65
    assert flops_per_token(llama) == 6 * n + 12 * 2 * 64 * 128
    assert flops_per_token(llama, context=32) == 6 * n + 12 * 2 * 64 * 32
    gpt2 = GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=40)
    assert flops_per_token(gpt2) == 6 * (3 * (4 * 16 * 16 + 2 * 16 * 64) + 16 * 50) + 12 * 3 * 16 * 40


def test_evaluation_is_deterministic() -> None:
    corpus = CharCorpus("the quick brown fox jumps over the lazy dog. " * 200)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=corpus.vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )
    first = evaluate(model, corpus, context=16, windows=8)
    assert first == evaluate(model, corpus, context=16, windows=8)
    assert 2.0 < first < 5.0  # near ln(vocab) for an untrained model
