"""The matrix families on which ``estimate_r`` is checked (``kexue reproduce`` and ``kexue bench``).

Synthetic row-stochastic sparse matrices (random, power-law rows, peaked top-40), corpus bigram matrices
(tinyshakespeare, STS-B) and a model-derived one, and the estimator's actual error on each of them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from kexue.data import PathLike, load_stsb, load_tinyshakespeare
from kexue.repetition.measure import estimate_r, exact_r
from kexue.repetition.transition import Vocabulary, apply_decoding, from_model, tokenize, transition_matrix

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

__all__ = [
    "corpus_matrix",
    "estimator_errors",
    "matrix_families",
    "model_matrix",
    "power_law",
    "random_sparse",
    "tiny_char_gpt",
    "topk_matrix",
]


def topk_matrix(n: int, *, k: int = 40, seed: int = 0) -> sp.csr_array:
    """A random top-``k`` row-stochastic matrix (peaked rows), built sparse."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n, size=(n, k))
    vals = rng.random((n, k)) ** 6 + 1e-9
    P = sp.csr_array((vals.ravel(), (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n))
    P.sum_duplicates()
    totals = np.asarray(P.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(1 / totals) @ P)


def random_sparse(n: int, *, k: int = 8, seed: int = 0) -> sp.csr_array:
    """``k`` uniform random entries a row on random targets, renormalised."""
    rng = np.random.default_rng(seed)
    return _normalised(np.repeat(np.arange(n), k), rng.integers(0, n, size=n * k), rng.random(n * k), n)


def power_law(n: int, *, seed: int = 0, exponent: float = 1.2) -> sp.csr_array:
    """Rows with a heavy-tailed number of entries (2 … 400, Pareto), Zipf values ``∝ rank^−exponent``
    and targets drawn with Zipf popularity (a few tokens follow almost everything)."""
    rng = np.random.default_rng(seed)
    sizes = np.clip((rng.pareto(1.2, n) + 1) * 2, 2, 400).astype(np.int64)
    rows = np.repeat(np.arange(n), sizes)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    popular = 1.0 / np.arange(1, n + 1)
    cols = rng.choice(n, size=len(rows), p=popular / popular.sum())
    return _normalised(rows, cols, rank**-exponent, n)


def _normalised(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_array:
    P = sp.csr_array((vals, (rows, cols)), shape=(n, n))
    P.sum_duplicates()
    totals = np.asarray(P.sum(axis=1)).ravel()
    return sp.csr_array(sp.diags_array(1 / totals) @ P)


def corpus_matrix(tokens: list[str], n: int) -> tuple[sp.csr_array, int]:
    """Sparse bigram ``P`` of ``tokens`` over its ``n`` most frequent types (the rest one ``<unk>``);
    the sequence is read as a cycle (last token followed by the first), so every row has mass."""
    vocab = Vocabulary.build(tokens, max_size=n)
    ids = vocab.encode(tokens)
    return transition_matrix(np.concatenate([ids, ids[:1]]), len(vocab), sparse=True), len(vocab)


def matrix_families(n: int, *, corpora: bool = True, data_root: PathLike | None = None) -> dict[str, sp.csr_array]:
    """The estimator's test matrices at size ``n`` (corpus ones at their vocabulary when smaller):
    random sparse, power-law rows, peaked top-40 and (``corpora``) tinyshakespeare words and
    characters, STS-B sentences' words and characters (word matrices under sampling and top-p 0.9)."""
    out = {"random sparse, 8 a row": random_sparse(n), "power-law rows": power_law(n), "peaked top-40": topk_matrix(n)}
    if not corpora:
        return out
    shakespeare = load_tinyshakespeare(data_root)
    sts = load_stsb("train", data_root)
    sentences = "\n".join(sts.sentences1 + sts.sentences2)
    for name, text in (("tinyshakespeare", shakespeare), ("STS-B", sentences)):
        words, _ = corpus_matrix(tokenize(text, level="word"), n)
        out[f"{name} words, sampling"] = words
        out[f"{name} words, top-p 0.9"] = apply_decoding(words, "topp=0.9")
        out[f"{name} characters, sampling"] = corpus_matrix(tokenize(text, level="char"), n)[0]
    return out


def model_matrix(n: int, *, data_root: PathLike | None = None, seed: int = 0) -> sp.csr_array:
    """A model-derived ``P``: :func:`~kexue.repetition.transition.from_model` of a small LLaMA
    (vocabulary ``n``, tinyshakespeare's most frequent words; random weights: no training at this size
    on a CPU) over the first 4,096 word ids, sharpened to temperature 0.05 and then top-40-truncated, so
    rows are peaked and sparse."""
    from transformers import LlamaConfig, LlamaForCausalLM  # optional extra: nlp

    tokens = tokenize(load_tinyshakespeare(data_root), level="word")
    vocab = Vocabulary.build(tokens, max_size=n)
    # rows of tokens not in these windows: the model after that token alone
    ids = torch.as_tensor(vocab.encode(tokens[: 64 * 64]))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )
    P = from_model(model, ids[: 64 * 64].reshape(64, 64), batch_size=8)
    return sp.csr_array(apply_decoding(apply_decoding(P, "temperature=0.05"), "topk=40", sparse=True))


def tiny_char_gpt(vocab_size: int, *, seed: int) -> LlamaForCausalLM:
    """The char-level GPT of the repetition claims and the DRY benchmark, with fresh random weights: LLaMA-style,
    d 64, 2 layers, 4 heads, untied head (``torch.manual_seed(seed)`` first, so the weights are reproducible).

    Args:
        vocab_size: the number of characters.
        seed: the seed of the weights.

    Returns:
        A ``transformers.LlamaForCausalLM`` in training mode.
    """
    from transformers import LlamaConfig, LlamaForCausalLM  # optional extra: nlp

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=168,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def estimator_errors(
    families: dict[str, sp.csr_array], *, dense_block: int = 1, seed: int = 0
) -> dict[str, dict[str, float | str]]:
    """Per matrix family: exact R (dense LU), the estimate at its default 0.5 % target with every
    multi-token block sent down the stochastic path (``dense_block``), its standard error and its
    actual relative error (``"error / stderr"`` is the words ``"exact to rounding"`` when both are 0)."""
    rows: dict[str, dict[str, float | str]] = {}
    for name, P in families.items():
        r = exact_r(P.toarray())
        start = time.perf_counter()
        est = estimate_r(P, dense_block=dense_block, seed=seed)
        seconds = time.perf_counter() - start
        error = abs(est.value - r)
        rows[name] = {
            "n": P.shape[0],
            "exact R": r,
            "estimate": est.value,
            "stderr": est.stderr,
            "actual relative error": error / r,
            "error / stderr": error / est.stderr
            if est.stderr > 1e-12 * r and error > 1e-12 * r
            else "exact to rounding",
            "probes": est.probes,
            "blocks": est.blocks,
            "seconds": seconds,
        }
    return rows
