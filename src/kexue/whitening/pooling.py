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

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from kexue import __version__
from kexue._native import cache_dir
from kexue._optional import require_extra
from kexue._shared import check_int
from kexue.data import quiet_offline_transformers
from kexue.report.io import atomic_write

require_extra("kexue.whitening.pooling (encoding with a Hugging Face model)", "transformers")

__all__ = ["POOLINGS", "Pooling", "cached_encode_poolings", "encode_poolings", "encoding_cache_key", "parse_pooling"]

# the named poolings; ``layers:i,j,...`` (any set of hidden states) is accepted beside them, so the
# functions take ``str`` pooling names
Pooling = Literal["first-last-avg", "last-avg", "cls"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)


def parse_pooling(pooling: str) -> tuple[Literal["cls", "avg"], tuple[int, ...]]:
    """``(kind, layers)`` of a pooling name; a clear error for anything else.

    Args:
        pooling: one of :data:`POOLINGS` or ``"layers:i,j,..."``.

    Returns:
        ``("cls", (-1,))`` for the last layer's first token, else ``("avg", layers)``: the hidden
        states averaged (0 = the embedding output, negative indices count from the end).

    Raises:
        ValueError: any other name.

    Example:
        >>> parse_pooling("first-last-avg"), parse_pooling("layers:0,-1")
        (('avg', (1, -1)), ('avg', (0, -1)))
    """
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
    *,
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 512,
    batch_tokens: int = 4096,
    max_length: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Encode ``sentences`` once and return ``{pooling: (N, D) float32}`` in input order.

    Sentences are tokenised once, sorted by token count and batched up to ``batch_size``
    sentences and ``batch_tokens`` tokens (padding included), so a batch holds sentences of nearly
    one length (sorting by characters instead pads STS's sentences by 47 % more tokens) and every
    matrix product is large; the model runs in eval mode without gradient; ``progress(n)`` is
    called after each batch with its size.

    Args:
        model_dir: a transformers encoder's folder (``config.json``, weights, tokenizer).
        sentences: the sentences.
        poolings: the poolings to compute (see :func:`parse_pooling`).
        batch_size: at most this many sentences per batch.
        batch_tokens: at most this many tokens (padding included) per batch.
        max_length: sentences are truncated to this many tokens.
        progress: called with the size of each batch once it is encoded.

    Returns:
        ``{pooling: (len(sentences), hidden) float32 array}``.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``config.json``.
        ValueError: an unknown pooling.
    """
    from transformers import AutoModel, AutoTokenizer  # optional extra: nlp

    for name, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens)):
        check_int(name, value, 1)
    quiet_offline_transformers()
    specs = {p: parse_pooling(p) for p in poolings}
    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model folder {path} has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    if not sentences:
        return {p: np.empty((0, model.config.hidden_size), dtype=np.float32) for p in poolings}
    tokens = tokenizer(list(sentences), truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in tokens["input_ids"]]
    out = {p: np.empty((len(sentences), model.config.hidden_size), dtype=np.float32) for p in poolings}
    with torch.inference_mode():
        for rows in _token_batches(lengths, batch_size, batch_tokens):
            enc = tokenizer.pad({key: [values[i] for i in rows] for key, values in tokens.items()}, return_tensors="pt")
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


def _token_batches(lengths: Sequence[int], rows: int, budget: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into batches of at most ``rows`` whose padded size (rows ×
    longest) stays within ``budget`` tokens (a sentence longer than the budget is a batch alone)."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or end - start == rows or (end + 1 - start) * lengths[order[end]] > budget:
            batches.append(order[start:end])
            start = end
    return batches


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoding_cache_key(
    model_dir: str | os.PathLike, sentences: Sequence[str], *, poolings: Sequence[str], max_length: int
) -> str:
    """A digest of everything the encodings depend on: the model folder's files (contents, not
    names or dates), the sentences in order, the poolings, ``max_length``, this module's source
    and the versions of kexue, torch and transformers; a change to any of them is a new key.

    Args:
        model_dir: the encoder's folder.
        sentences: the sentences, in order.
        poolings: the poolings.
        max_length: the truncation length.

    Returns:
        A 32-character hexadecimal key.
    """
    import transformers  # optional extra: nlp

    path = Path(model_dir)
    files = {str(f.relative_to(path)): _file_digest(f) for f in sorted(path.rglob("*")) if f.is_file()}
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "files": files,
                "poolings": list(poolings),
                "max_length": max_length,
                "code": _file_digest(Path(__file__)),  # this module's source: an edited encoder is a new key
                "versions": [__version__, torch.__version__, transformers.__version__],
            },
            sort_keys=True,
        ).encode()
    )
    for s in sentences:  # length-prefixed, so no two lists of sentences give the same bytes
        data = s.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def cached_encode_poolings(
    model_dir: str | os.PathLike,
    sentences: Sequence[str],
    *,
    poolings: Sequence[str] = POOLINGS,
    max_length: int = 256,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`encode_poolings`, kept in the kexue cache folder (``encodings/``) by
    :func:`encoding_cache_key`; returns ``(vectors, hit)``.

    The encodings are deterministic (eval mode, no gradient), so a hit equals a fresh pass to
    the bit on the same machine and versions. ``KEXUE_NO_CACHE=1`` (``kexue reproduce --no-cache``)
    always encodes and leaves the cache as it is; an unreadable or unwritable cache only costs
    the time of encoding again. An entry for the STS sets is about 116 MB (25,190 × 384 × 3
    float32); old entries are not removed (delete ``encodings/`` in the cache folder to free them).

    Args:
        model_dir: as for :func:`encode_poolings`.
        sentences: as for :func:`encode_poolings`.
        poolings: as for :func:`encode_poolings`.
        max_length: as for :func:`encode_poolings`.
        progress: as for :func:`encode_poolings` (called once with the count on a hit).

    Returns:
        ``(vectors, hit)``: :func:`encode_poolings`' result and whether it came from the cache.
    """
    use_cache = os.environ.get("KEXUE_NO_CACHE", "") in ("", "0")
    key = encoding_cache_key(model_dir, sentences, poolings=poolings, max_length=max_length) if use_cache else ""
    target = cache_dir() / "encodings" / f"{key}.npz"
    if use_cache and target.is_file():
        try:
            with np.load(target) as stored:
                vectors = {p: stored[p] for p in poolings}
            if all(v.shape[0] == len(sentences) for v in vectors.values()):
                if progress is not None:
                    progress(len(sentences))
                return vectors, True
        except Exception:  # a damaged entry (truncated, not a zip, a missing array): encode again and replace it
            pass
    vectors = encode_poolings(model_dir, sentences, poolings=poolings, max_length=max_length, progress=progress)
    if use_cache:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = dict(vectors)  # np.savez's stub types its **arrays like its allow_pickle flag
        np.savez(buffer, **arrays)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, buffer.getvalue())
        except OSError:
            pass
    return vectors, False
