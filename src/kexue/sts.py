"""Semantic textual similarity evaluation: Spearman correlation × 100 of cosine similarities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from kexue.data import SentencePairs

__all__ = ["cosine_spearman", "sentence_transformer_encoder"]

Encoder = Callable[[Sequence[str]], "np.ndarray | torch.Tensor"]


def sentence_transformer_encoder(model, batch_size: int = 128) -> Encoder:
    """Wrap a ``SentenceTransformer`` as ``sentences -> (n, D)`` float64 array (eval mode, no grad)."""

    def encode(sentences: Sequence[str]) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            out = model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        finally:
            model.train(was_training)
        return np.asarray(out, dtype=np.float64)

    return encode


def cosine_spearman(encode: Encoder, pairs: SentencePairs) -> float:
    """Spearman's ρ × 100 between gold scores and the cosine similarity of the two sides."""
    a = np.asarray(encode(pairs.sentences1), dtype=np.float64)
    b = np.asarray(encode(pairs.sentences2), dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FloatingPointError(f"the encoder returned non-finite embeddings on {pairs.name}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(cos, pairs.scores).statistic * 100)
