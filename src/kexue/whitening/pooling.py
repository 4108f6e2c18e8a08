"""Sentence vectors from a transformers encoder's hidden states, several poolings in one pass.

Poolings (masked means over tokens unless said otherwise):

* ``cls``: the last layer's first token;
* ``last-avg``: the mean of the last layer (sentence-transformers' mean pooling; cosine scores
  equal those of all-MiniLM-L6-v2's own pipeline, whose final normalisation does not change
  cosines);
* ``first-last-avg``: the mean of the first Transformer layer's output and the last layer's
  (what BERT-flow's code calls "last2avg", per the article);
* ``layers:i,j,...``: the mean over any set of hidden states (0 = the embedding output,
  negative indices count from the end).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from kexue._optional import require_extra

require_extra("kexue.whitening.pooling (encoding with a Hugging Face model)", "transformers")

__all__ = ["POOLINGS", "encode_poolings", "parse_pooling"]

POOLINGS = ("first-last-avg", "last-avg", "cls")


def parse_pooling(pooling: str) -> tuple[str, tuple[int, ...]]:
    """``(kind, layers)`` of a pooling name; a clear error for anything else."""
    if pooling == "cls":
        return "cls", (-1,)
    if pooling == "last-avg":
        return "avg", (-1,)
    if pooling == "first-last-avg":
        return "avg", (1, -1)
    if pooling.startswith("layers:"):
        try:
            layers = tuple(int(v) for v in pooling.removeprefix("layers:").split(","))
        except ValueError:
            layers = ()
        if layers:
            return "avg", layers
    raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)} or 'layers:i,j,...'")


def encode_poolings(
    model_dir: str | os.PathLike,
    sentences: Sequence[str],
    poolings: Sequence[str] = POOLINGS,
    *,
    batch_size: int = 128,
    max_length: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Encode ``sentences`` once and return ``{pooling: (N, D) float32}`` in input order.

    Sentences are batched by length (fewer pad tokens), the model runs in eval mode without
    gradient; ``progress(n)`` is called after each batch with its size.
    """
    from transformers import AutoModel, AutoTokenizer

    from kexue.data import quiet_offline_transformers

    quiet_offline_transformers()
    specs = {p: parse_pooling(p) for p in poolings}
    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model folder {path} has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out = {p: np.empty((len(sentences), model.config.hidden_size), dtype=np.float32) for p in poolings}
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            rows = order[start : start + batch_size]
            enc = tokenizer([sentences[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
            for name, (kind, layers) in specs.items():
                if kind == "cls":
                    vec = hidden[-1][:, 0]
                else:
                    vec = sum((hidden[i] * mask).sum(1) for i in layers) / (mask.sum(1) * len(layers))
                out[name][rows] = vec.float().numpy()
            if progress is not None:
                progress(len(rows))
    return out
