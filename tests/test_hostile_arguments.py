"""Hostile non-array arguments of the public API (models, factors, indices, options, callables).

The array arguments are covered by tests/test_hostile_input.py. Here each row of CASES calls one
public function with one bad argument and expects a ValueError or TypeError whose message names
that argument: never an AttributeError or RuntimeError from deep inside.
"""

from __future__ import annotations

import pytest
import torch

from kexue import mitchell
from kexue.contrastive import InfoNCE, cached_backward, naive_accumulation_backward
from kexue.growth import add_experts, deepen, widen, widen_ffn
from kexue.growth.callback import GrowthCallback
from kexue.mitchell import MitchellLinear, mitchellize, track_errors
from kexue.orthogonal import apply_orthogonal_map, orthogonal_map
from kexue.positional import (
    RotaryEmbedding,
    axial_frequencies,
    grid_positions,
    layout_permutation,
    mixed_frequencies,
    rope_frequencies,
    sinusoidal_table,
)
from kexue.repetition import estimate_r, find_loops, parse_decodings
from kexue.repetition.dry import DRYLogitsProcessor
from kexue.repetition.hf import LoopStoppingCriteria


@pytest.fixture(scope="module")
def llama():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config)


NAN = float("nan")
X = torch.randn(4, 3)

CASES = [
    # (id, call(llama), the argument the message must name)
    ("widen-not-a-model", lambda m: widen(object(), 2), "model"),
    ("widen-plain-module", lambda m: widen(torch.nn.Linear(2, 2), 2), "model"),
    ("widen-factor-0", lambda m: widen(m, 0), "factor"),
    ("widen-factor-float", lambda m: widen(m, 1.5), "factor"),
    ("widen-mode", lambda m: widen(m, 2, mode="x"), "mode"),
    ("widen-noise-nan", lambda m: widen(m, 2, noise=NAN), "noise"),
    ("widen-ffn-not-a-model", lambda m: widen_ffn(object(), 64), "model"),
    ("widen-ffn-smaller", lambda m: widen_ffn(m, 3), "intermediate_size"),
    ("deepen-not-a-model", lambda m: deepen(object(), [0]), "model"),
    ("deepen-index-out-of-range", lambda m: deepen(m, [99]), "after"),
    ("deepen-index-not-int", lambda m: deepen(m, ["a"]), "after"),
    ("add-experts-dense-model", lambda m: add_experts(m, 2), "model_type"),
    ("add-experts-factor-1", lambda m: add_experts(m, 1), "factor"),
    ("growth-callback-step-0", lambda m: GrowthCallback(lambda x: x, 0), "at_step"),
    ("growth-callback-lr-scale-nan", lambda m: GrowthCallback(lambda x: x, 1, lr_scale=NAN), "lr_scale"),
    ("growth-callback-not-callable", lambda m: GrowthCallback(None, 1), "grow"),
    ("dry-multiplier-nan", lambda m: DRYLogitsProcessor(NAN), "multiplier"),
    ("dry-allowed-length-0", lambda m: DRYLogitsProcessor(1.0, allowed_length=0), "allowed_length"),
    ("dry-base-below-1", lambda m: DRYLogitsProcessor(1.0, base=0.5), "base"),
    ("loop-stopping-prompt-negative", lambda m: LoopStoppingCriteria(-1), "prompt_length"),
    ("loop-stopping-budget-negative", lambda m: LoopStoppingCriteria(0, loop_budget=-1), "loop_budget"),
    ("mitchellize-not-a-module", lambda m: mitchellize(object()), "model"),
    ("mitchellize-backward", lambda m: mitchellize(torch.nn.Linear(2, 2), backward="x"), "backward"),
    ("mitchellize-correction", lambda m: mitchellize(torch.nn.Linear(2, 2), correction="x"), "correction"),
    ("track-errors-not-a-module", lambda m: track_errors(object()).__enter__(), "model"),
    ("mitchell-linear-backward", lambda m: MitchellLinear(2, 2, backward="x"), "backward"),
    ("mitchell-mul-backend", lambda m: mitchell.mul(X, X, backend="gpu"), "backend"),
    ("mitchell-mul-correction", lambda m: mitchell.mul(X, X, correction="linear"), "correction"),
    ("mitchell-bmm-backend", lambda m: mitchell.bmm(X[None], X.T[None], backend="gpu"), "backend"),
    ("orthogonal-kind", lambda m: orthogonal_map([1.0, 0.0], [0.0, 1.0], kind="householder"), "kind"),
    ("orthogonal-degenerate", lambda m: orthogonal_map([1.0, 0.0], [0.0, 1.0], degenerate="ignore"), "degenerate"),
    ("apply-orthogonal-zero-a", lambda m: apply_orthogonal_map(X, torch.zeros(3), torch.ones(3)), "a"),
    ("rotary-dim-odd", lambda m: RotaryEmbedding(3), "dim"),
    ("rotary-base-negative", lambda m: RotaryEmbedding(8, base=-1.0), "base"),
    ("rotary-offset-negative", lambda m: RotaryEmbedding(8)(torch.randn(1, 2, 8), offset=-1), "offset"),
    ("rope-frequencies-0", lambda m: rope_frequencies(0), "rotary_dim"),
    ("axial-axes-0", lambda m: axial_frequencies(8, 0), "axes"),
    ("mixed-base-nan", lambda m: mixed_frequencies(8, 2, base=NAN), "base"),
    ("grid-negative", lambda m: grid_positions(-1), "sizes"),
    ("layout-odd", lambda m: layout_permutation(3, source="half", target="interleaved"), "head_dim"),
    ("layout-source", lambda m: layout_permutation(4, source="rotated", target="interleaved"), "source"),
    ("sinusoidal-length-negative", lambda m: sinusoidal_table(-3, 8), "positions"),
    ("sinusoidal-dim-odd", lambda m: sinusoidal_table(4, 7), "dim"),
    ("decodings-topk-negative", lambda m: parse_decodings("topk=-1"), "decoding"),
    ("decodings-empty", lambda m: parse_decodings(""), "decoding"),
    ("decodings-unknown", lambda m: parse_decodings("beam=4"), "decoding"),
    ("estimate-r-probes-0", lambda m: estimate_r([[1.0]], probes=0), "probes"),
    ("find-loops-period-0", lambda m: find_loops([[1, 2, 1, 2]], max_period=0), "max_period"),
    ("infonce-temperature-0", lambda m: InfoNCE(temperature=0.0), "temperature"),
    ("infonce-similarity", lambda m: InfoNCE(temperature=0.1, similarity="l2"), "similarity"),
    ("cached-encoder-none", lambda m: cached_backward(None, [X, X], InfoNCE(), micro_batch_size=2), "encoders"),
    (
        "cached-micro-0",
        lambda m: cached_backward(torch.nn.Linear(3, 3), [X, X], InfoNCE(), micro_batch_size=0),
        "micro_batch_size",
    ),
    (
        "cached-two-encoders-three-sides",
        lambda m: cached_backward([torch.nn.Identity()] * 2, [X, X, X], InfoNCE(), micro_batch_size=2),
        "encoders",
    ),
    (
        "naive-micro-0",
        lambda m: naive_accumulation_backward(torch.nn.Linear(3, 3), [X, X], InfoNCE(), micro_batch_size=0),
        "micro_batch_size",
    ),
]


@pytest.mark.parametrize(("call", "arg"), [pytest.param(c, a, id=i) for i, c, a in CASES])
def test_bad_argument_is_named(llama, call, arg: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        call(llama)
    assert arg in str(info.value), str(info.value)
