"""Semantic textual similarity evaluation: Spearman correlation × 100 of cosine similarities."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from scipy.stats import spearmanr

from kexue._shared import as_real_array
from kexue.data import SentencePairs

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "Encoder",
    "TaskScores",
    "cosine_spearman",
    "score_task",
    "score_tasks",
    "sentence_transformer_encoder",
    "unique_sentences",
]

# sentences -> (n, D) vectors: a NumPy array, or a torch tensor of any dtype (bfloat16 included) on any device
Encoder = Callable[[Sequence[str]], np.ndarray | torch.Tensor]


class TaskScores(TypedDict):
    """The scores of one STS task (see :func:`score_task`)."""

    all: float
    wmean: float
    pairs: int
    subsets: dict[str, float]


def sentence_transformer_encoder(model: SentenceTransformer, *, batch_size: int = 128) -> Encoder:
    """Wrap a ``SentenceTransformer`` as ``sentences -> (n, D)`` float64 array (eval mode, no grad).

    Args:
        model: the encoder (its training mode is restored after each call).
        batch_size: sentences per forward.

    Returns:
        The encoder function.
    """

    def encode(sentences: Sequence[str]) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            out = model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        finally:
            model.train(was_training)
        return as_real_array("embeddings", out)

    return encode


def cosine_spearman(encode: Encoder, pairs: SentencePairs) -> float:
    """Spearman's ρ × 100 between gold scores and the cosine similarity of the two sides.

    Args:
        encode: the sentence encoder.
        pairs: the scored pairs.

    Returns:
        The correlation × 100.

    Raises:
        FloatingPointError: the encoder returned non-finite vectors.
    """
    a = as_real_array("embeddings", encode(pairs.sentences1))  # torch on any device, bfloat16 included
    b = as_real_array("embeddings", encode(pairs.sentences2))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FloatingPointError(f"the encoder returned non-finite embeddings on {pairs.name}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(cos, pairs.scores).statistic * 100)


def unique_sentences(tasks: dict[str, list[SentencePairs]]) -> list[str]:
    """Every distinct sentence of the tasks, in first-seen order (encode each once).

    Args:
        tasks: task name → its subsets.

    Returns:
        The sentences.

    Example:
        >>> pairs = SentencePairs(name="toy", sentences1=["a", "b"], sentences2=["b", "c"], scores=[1.0, 2.0])
        >>> unique_sentences({"toy": [pairs]})
        ['a', 'b', 'c']
    """
    seen: dict[str, None] = {}
    for subsets in tasks.values():
        for pairs in subsets:
            seen.update(dict.fromkeys(pairs.sentences1))
            seen.update(dict.fromkeys(pairs.sentences2))
    return list(seen)


def _cosines(vectors: np.ndarray, index: dict[str, int], pairs: SentencePairs) -> np.ndarray:
    a = vectors[[index[s] for s in pairs.sentences1]]
    b = vectors[[index[s] for s in pairs.sentences2]]
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.where(norms > 0, norms, 1.0)


def score_task(subsets: Sequence[SentencePairs], vectors: np.ndarray, index: dict[str, int]) -> TaskScores:
    """Spearman × 100 of one task, two aggregations.

    * ``all``: one Spearman over the pooled pairs of every subset (SimCSE's and MTEB's);
    * ``wmean``: the subsets' Spearman averaged with weights = their pair counts (SentEval's
      "wmean", used by the BERT-flow and BERT-whitening papers).

    A task with one subset (STS-B, SICK-R) has ``all == wmean``.

    Args:
        subsets: the task's subsets.
        vectors: ``(n, D)`` sentence vectors (array-like or tensor).
        index: sentence → its row in ``vectors``.

    Returns:
        ``all``, ``wmean``, ``pairs`` (the number of pairs) and ``subsets`` (name → Spearman × 100,
        rounded to two decimals).

    Raises:
        FloatingPointError: non-finite vectors.
    """
    vectors = as_real_array("vectors", vectors)
    if not np.isfinite(vectors).all():
        raise FloatingPointError("non-finite sentence vectors")
    cos = [_cosines(vectors, index, p) for p in subsets]
    per = [float(spearmanr(c, p.scores).statistic * 100) for c, p in zip(cos, subsets, strict=True)]
    sizes = np.array([len(p) for p in subsets], dtype=np.float64)
    pooled = float(spearmanr(np.concatenate(cos), np.concatenate([p.scores for p in subsets])).statistic * 100)
    return TaskScores(
        all=pooled,
        wmean=float(np.dot(per, sizes) / sizes.sum()),
        pairs=int(sizes.sum()),
        subsets={p.name: round(r, 2) for p, r in zip(subsets, per, strict=True)},
    )


def score_tasks(
    tasks: dict[str, list[SentencePairs]], vectors: np.ndarray, index: dict[str, int]
) -> dict[str, TaskScores]:
    """:func:`score_task` for every task.

    Args:
        tasks: task name → its subsets.
        vectors: ``(n, D)`` sentence vectors.
        index: sentence → its row in ``vectors``.

    Returns:
        Task name → its scores.
    """
    return {name: score_task(subsets, vectors, index) for name, subsets in tasks.items()}
