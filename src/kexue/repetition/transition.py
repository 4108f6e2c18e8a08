"""Bigram transition matrices and the decoding rules applied to them.

``P[i, j]`` is the probability that token ``j`` follows token ``i`` (rows sum to 1). It is
estimated from token sequences (characters, words, or a tokenizer's ids) by counting, with
optional add-``alpha`` smoothing, or from a causal LM by averaging its next-token distributions
after each token. A decoding rule turns ``P`` into the matrix of the process that decoding
actually follows, as the article does: keep some entries of each row and renormalise.

Dense matrices are NumPy float64 arrays; sparse ones are ``scipy.sparse.csr_array``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "Decoding",
    "Vocabulary",
    "apply_decoding",
    "check_transition",
    "estimate",
    "from_model",
    "parse_decodings",
    "tokenize",
]

_WORD = re.compile(r"[A-Za-z']+|[0-9]+|[^\sA-Za-z0-9']")


def tokenize(text: str, level: str) -> list[str]:
    """``level="char"``: every character; ``"word"``: words, numbers and single punctuation
    marks, lower-cased (whitespace dropped)."""
    from kexue._shared import check_choice

    check_choice("level", level, ("char", "word"))
    return list(text) if level == "char" else [w.lower() for w in _WORD.findall(text)]


@dataclass
class Vocabulary:
    """Token strings by id; with ``max_size``, rarer tokens map to ``unk``."""

    tokens: list[str]
    unk: int | None = None

    @classmethod
    def build(cls, tokens: Iterable[str], max_size: int | None = None, unk_token: str = "<unk>") -> Vocabulary:
        counts = Counter(tokens)
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        if max_size is not None and len(ranked) > max_size:
            return cls(ranked[: max_size - 1] + [unk_token], unk=max_size - 1)
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.tokens)}
        default = -1 if self.unk is None else self.unk
        ids = np.fromiter((index.get(t, default) for t in tokens), dtype=np.int64, count=len(tokens))
        if (ids < 0).any():
            raise ValueError("tokens outside the vocabulary and no unk token")
        return ids


def estimate(ids: np.ndarray | Sequence[np.ndarray], n: int, *, alpha: float = 0.0, sparse: bool = False):
    """Row-stochastic ``P`` from bigram counts of one or several id sequences.

    Args:
        ids: token ids (one array, or a list of arrays counted separately: no bigram across them).
        n: vocabulary size.
        alpha: add-``alpha`` smoothing (0: none). A token never followed by anything gets a
            uniform row (``alpha`` = 0 would leave it empty).
        sparse: return ``csr_array`` (only with ``alpha = 0``, else the matrix is dense anyway).
    """
    from kexue._shared import check_int, check_number

    check_int("n", n, 1)
    if check_number("alpha", alpha) < 0:
        raise ValueError(f"alpha={alpha!r} must be >= 0")
    if alpha > 0 and sparse:
        raise ValueError("sparse=True needs alpha=0: smoothing fills every entry")
    seqs = [np.asarray(ids)] if isinstance(ids, np.ndarray) else [np.asarray(s) for s in ids]
    for s in seqs:
        if s.dtype.kind not in "iu" or s.ndim != 1:
            raise TypeError(
                f"ids must be 1-D integer token ids (or a list of such arrays); got dtype {s.dtype}, shape {s.shape}"
            )
    rows = np.concatenate([s[:-1] for s in seqs]) if seqs else np.zeros(0, np.int64)
    cols = np.concatenate([s[1:] for s in seqs]) if seqs else np.zeros(0, np.int64)
    if rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"ids must lie in [0, {n})")
    counts = sp.coo_array((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    counts.sum_duplicates()
    if sparse:
        totals = np.asarray(counts.sum(axis=1)).ravel()
        empty = totals == 0
        counts = (
            counts
            + sp.csr_array((np.ones(int(empty.sum())), (np.flatnonzero(empty), np.flatnonzero(empty))), shape=(n, n))
            if empty.any()
            else counts
        )
        totals[empty] = 1
        return sp.csr_array(sp.diags_array(1 / totals) @ counts)
    dense = counts.toarray() + alpha
    totals = dense.sum(axis=1, keepdims=True)
    empty = totals[:, 0] == 0
    dense[empty] = 1.0
    return dense / dense.sum(axis=1, keepdims=True)


def from_model(model, sequences, *, batch_size: int = 16) -> np.ndarray:
    """``P`` from a causal LM: row ``i`` is the mean of the model's next-token distributions at
    every position of ``sequences`` (a ``(B, T)`` LongTensor of ids) whose current token is ``i``
    (the model sees the whole prefix: this is the bigram view of a real decoder). Tokens never
    seen as a current token get the model's distribution after that token alone.

    Runs on the model's device (the ids are moved there, the sums are kept there in float64; only
    the final matrix comes back to the host). Returns a dense ``(V, V)`` float64 matrix,
    ``V = model.config.vocab_size``.
    """
    import torch

    device = _model_device(model)
    sequences = torch.as_tensor(sequences, dtype=torch.long)
    if sequences.dim() != 2 or sequences.shape[1] < 1:
        raise ValueError(f"sequences must be a (B, T) tensor of token ids, got shape {tuple(sequences.shape)}")
    sequences = sequences.to(device)
    vocab = model.config.vocab_size
    sums = torch.zeros(vocab, vocab, dtype=torch.float64, device=device)
    counts = torch.zeros(vocab, dtype=torch.float64, device=device)
    was = model.training
    model.eval()
    with torch.no_grad():
        for chunk in sequences.split(batch_size):
            probs = torch.softmax(model(input_ids=chunk).logits.double(), dim=-1)[..., :vocab]
            sums.index_add_(0, chunk.flatten(), probs.flatten(0, 1))
            counts.index_add_(0, chunk.flatten(), torch.ones(chunk.numel(), dtype=torch.float64, device=device))
        missing = torch.nonzero(counts == 0).flatten()
        for part in missing.split(256):
            if len(part):
                sums[part] = torch.softmax(model(input_ids=part[:, None]).logits[:, -1].double(), dim=-1)[:, :vocab]
                counts[part] = 1.0
    model.train(was)
    P = (sums / counts[:, None]).cpu().numpy()
    return P / P.sum(axis=1, keepdims=True)


def _model_device(model):
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class Decoding:
    """A decoding rule: ``kind`` in greedy, topk, topp, temperature, sample, with its value."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


def parse_decodings(spec: str) -> list[Decoding]:
    """``"greedy,topk=40,topp=0.9,temperature=0.7,sample"`` → rules (errors name the bad item)."""
    rules = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, value = item.partition("=")
        kind = kind.lower()
        if kind in ("greedy", "sample", "pure"):
            if value:
                raise ValueError(f"decoding {item!r}: {kind} takes no value")
            rules.append(Decoding("sample" if kind == "pure" else kind))
            continue
        if kind not in ("topk", "topp", "temperature"):
            raise ValueError(f"decoding {item!r}: unknown rule; use greedy, topk=K, topp=P, temperature=T, sample")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(
                f"decoding {item!r}: {kind} needs a number, e.g. {kind}="
                + {"topk": "40", "topp": "0.9", "temperature": "0.7"}[kind]
            ) from None
        if (
            (kind == "topk" and (v < 1 or v != int(v)))
            or (kind == "topp" and not 0 < v <= 1)
            or (kind == "temperature" and not v > 0)
        ):
            raise ValueError(f"decoding {item!r}: topk needs an integer >= 1, topp a value in (0, 1], temperature > 0")
        rules.append(Decoding(kind, v))
    if not rules:
        raise ValueError("decoding: no rule given")
    return rules


def check_transition(P) -> int:
    """Check that ``P`` is a square, real, finite, non-negative, row-stochastic matrix (dense or
    sparse); its size ``n``. Errors name ``P``."""
    if not sp.issparse(P):
        P = np.asarray(P) if not hasattr(P, "detach") else P.detach().cpu().numpy()
        if P.dtype.kind not in "iuf":
            raise TypeError(f"P must hold real probabilities; got dtype {P.dtype}")
    shape = P.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"P must be a square (n, n) matrix, got shape {shape}")
    if shape[0] == 0:
        raise ValueError("P is empty (0 x 0): a transition matrix needs at least one state")
    data = P.data if sp.issparse(P) else np.asarray(P)
    if data.size and (not np.isfinite(data).all() or data.min() < 0):
        raise ValueError("P must hold finite, non-negative probabilities")
    sums = np.asarray(P.sum(axis=1)).ravel()
    if not np.allclose(sums, 1.0, atol=1e-8):
        bad = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"P must be row-stochastic: row {bad} sums to {sums[bad]:.6g}")
    return shape[0]


def apply_decoding(P, rule: Decoding | str, *, sparse: bool | None = None):
    """The transition matrix of decoding ``P`` with ``rule``: keep entries per row, renormalise.

    * ``greedy``: the row's largest entry (first on ties) gets 1;
    * ``topk=k``: the ``k`` largest entries (ties broken by lower index);
    * ``topp=p``: the smallest set of largest entries whose mass reaches ``p`` (nucleus);
    * ``temperature=T``: ``P^(1/T)`` renormalised;
    * ``sample``: ``P`` itself.

    ``sparse`` (default: sparse exactly for greedy/top-k/top-p when ``P`` is sparse or larger than
    5,000) returns ``csr_array``.
    """
    if isinstance(rule, str):
        (rule,) = parse_decodings(rule)
    check_transition(P)
    if sp.issparse(P) and rule.kind in ("greedy", "topk", "topp"):
        return _sparse_truncate(sp.csr_array(P), rule)
    dense = P.toarray() if sp.issparse(P) else np.asarray(P, dtype=np.float64)
    n = dense.shape[0]
    if rule.kind == "sample":
        out = dense.copy()
    elif rule.kind == "temperature":
        with np.errstate(divide="ignore"):
            logp = np.log(dense) / rule.value
        logp -= logp.max(axis=1, keepdims=True)
        out = np.exp(logp)
        out /= out.sum(axis=1, keepdims=True)
    else:
        order = np.argsort(-dense, axis=1, kind="stable")  # descending, lower index first on ties
        ranked = np.take_along_axis(dense, order, axis=1)
        if rule.kind == "greedy":
            keep = np.zeros_like(ranked, dtype=bool)
            keep[:, 0] = True
        elif rule.kind == "topk":
            keep = np.arange(n)[None, :] < int(rule.value)
        else:  # topp: include entries until the mass before them reaches p
            before = np.cumsum(ranked, axis=1) - ranked
            keep = before < rule.value - 1e-12
            keep[:, 0] = True
        kept = np.where(keep, ranked, 0.0)
        kept /= kept.sum(axis=1, keepdims=True)
        out = np.zeros_like(dense)
        np.put_along_axis(out, order, kept, axis=1)
    want_sparse = (
        sparse if sparse is not None else (rule.kind in ("greedy", "topk", "topp") and (sp.issparse(P) or n > 5000))
    )
    return sp.csr_array(out) if want_sparse else out


def _sparse_truncate(P: sp.csr_array, rule: Decoding) -> sp.csr_array:
    """greedy / top-k / top-p on a CSR matrix without densifying (same ties as the dense path)."""
    n = P.shape[0]
    counts = np.diff(P.indptr)
    rows = np.repeat(np.arange(n), counts)
    order = np.lexsort((P.indices, -P.data, rows))  # by row, then descending value, then index
    data, cols = P.data[order], P.indices[order]
    rank = np.arange(len(data)) - P.indptr[rows]
    if rule.kind == "greedy":
        keep = rank == 0
    elif rule.kind == "topk":
        keep = rank < int(rule.value)
    else:
        csum = np.cumsum(data)
        start = np.concatenate([[0.0], csum])[P.indptr[:-1]][rows]
        before = csum - data - start
        keep = (before < rule.value - 1e-12) | (rank == 0)
    rows, cols, data = rows[keep], cols[keep], data[keep]
    totals = np.bincount(rows, weights=data, minlength=n)
    return sp.csr_array((data / totals[rows], (rows, cols)), shape=P.shape)
