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
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from kexue._shared import check_choice, check_int, check_number, deprecated_alias

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "DECODING_KINDS",
    "LEVELS",
    "Decoding",
    "DecodingKind",
    "Level",
    "Vocabulary",
    "apply_decoding",
    "check_transition",
    "from_model",
    "parse_decodings",
    "tokenize",
    "transition_matrix",
]

Level = Literal["char", "word"]
LEVELS: tuple[Level, ...] = get_args(Level)
DecodingKind = Literal["greedy", "topk", "topp", "temperature", "sample"]
DECODING_KINDS: tuple[DecodingKind, ...] = get_args(DecodingKind)
# a transition matrix as the functions accept it: NumPy or torch (dense), or a scipy.sparse matrix
MatrixLike: TypeAlias = "npt.ArrayLike | torch.Tensor | sp.sparray | sp.spmatrix"

_WORD = re.compile(r"[A-Za-z']+|[0-9]+|[^\sA-Za-z0-9']")
_TRUNCATING: tuple[DecodingKind, ...] = ("greedy", "topk", "topp")


def tokenize(text: str, *, level: Level) -> list[str]:
    """Split ``text`` into tokens.

    Args:
        text: the text.
        level: ``"char"``: every character; ``"word"``: words, numbers and single punctuation marks,
            lower-cased (whitespace dropped).

    Returns:
        The tokens, in order.

    Example:
        >>> tokenize("The cat, the mat.", level="word")
        ['the', 'cat', ',', 'the', 'mat', '.']
    """
    check_choice("level", level, LEVELS)
    return list(text) if level == "char" else [w.lower() for w in _WORD.findall(text)]


@dataclass
class Vocabulary:
    """Token strings by id; with ``max_size``, rarer tokens map to ``unk``.

    Args:
        tokens: the token strings, by id.
        unk: the id that tokens outside the vocabulary map to (``None``: such tokens are an error).
    """

    tokens: list[str]
    unk: int | None = None

    @classmethod
    def build(cls, tokens: Iterable[str], *, max_size: int | None = None, unk_token: str = "<unk>") -> Vocabulary:
        """The vocabulary of ``tokens``, most frequent first (ties by the token's text).

        Args:
            tokens: the corpus's tokens.
            max_size: keep the ``max_size - 1`` most frequent and map the rest to ``unk_token`` (``None``: keep all).
            unk_token: the text of the unknown token.

        Returns:
            The vocabulary.

        Example:
            >>> Vocabulary.build("abracadabra", max_size=3)
            Vocabulary(tokens=['a', 'b', '<unk>'], unk=2)
        """
        counts = Counter(tokens)
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        if max_size is not None and len(ranked) > max_size:
            return cls(tokens=[*ranked[: max_size - 1], unk_token], unk=max_size - 1)
        return cls(tokens=ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids of ``tokens``.

        Args:
            tokens: token strings.

        Returns:
            A 1-D int64 array of ids.

        Raises:
            ValueError: a token is outside the vocabulary and there is no ``unk``.
        """
        index = {t: i for i, t in enumerate(self.tokens)}
        default = -1 if self.unk is None else self.unk
        ids = np.fromiter((index.get(t, default) for t in tokens), dtype=np.int64, count=len(tokens))
        if (ids < 0).any():
            raise ValueError("tokens outside the vocabulary and no unk token")
        return ids


def transition_matrix(
    ids: np.ndarray | Sequence[np.ndarray], n: int, *, alpha: float = 0.0, sparse: bool = False
) -> np.ndarray | sp.csr_array:
    """Row-stochastic ``P`` from bigram counts of one or several id sequences (formerly ``estimate``).

    Args:
        ids: token ids (one array, or a list of arrays counted separately: no bigram across them).
        n: vocabulary size.
        alpha: add-``alpha`` smoothing (0: none). A token never followed by anything gets a
            uniform row (``alpha`` = 0 would leave it empty).
        sparse: return ``csr_array`` (only with ``alpha = 0``, else the matrix is dense anyway).

    Returns:
        The ``(n, n)`` float64 matrix, dense or ``csr_array``.

    Example:
        >>> import numpy as np
        >>> transition_matrix(np.array([0, 1, 0, 1, 1]), 2)
        array([[0. , 1. ],
               [0.5, 0.5]])
    """
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


def from_model(model: PreTrainedModel, sequences: torch.Tensor | npt.ArrayLike, *, batch_size: int = 16) -> np.ndarray:
    """``P`` from a causal LM: row ``i`` is the mean of the model's next-token distributions at
    every position of ``sequences`` (a ``(B, T)`` LongTensor of ids) whose current token is ``i``
    (the model sees the whole prefix: this is the bigram view of a real decoder). Tokens never
    seen as a current token get the model's distribution after that token alone.

    Runs on the model's device (the ids are moved there, the sums are kept there in float64; only
    the final matrix comes back to the host).

    Args:
        model: an HF causal LM (``model(input_ids=...).logits``, ``model.config.vocab_size``).
        sequences: ``(B, T)`` token ids.
        batch_size: sequences per forward pass.

    Returns:
        A dense ``(V, V)`` float64 matrix, ``V = model.config.vocab_size``.
    """
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


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class Decoding:
    """A decoding rule: ``kind`` in greedy, topk, topp, temperature, sample, with its value.

    Args:
        kind: the rule.
        value: its number (``k`` of topk, ``p`` of topp, ``T`` of temperature; ``None`` for greedy and sample).
    """

    kind: DecodingKind
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


def parse_decodings(spec: str) -> list[Decoding]:
    """Decoding rules from their comma-separated spelling (errors name the bad item).

    Args:
        spec: rules separated by commas: ``greedy``, ``topk=K``, ``topp=P``, ``temperature=T``,
            ``sample`` (or ``pure``).

    Returns:
        The rules, in order.

    Example:
        >>> [str(rule) for rule in parse_decodings("greedy,topk=40,topp=0.9,sample")]
        ['greedy', 'topk=40', 'topp=0.9', 'sample']
    """
    rules = [_parse_rule(item) for item in filter(None, (s.strip() for s in spec.split(",")))]
    if not rules:
        raise ValueError("decoding: no rule given")
    return rules


def _parse_rule(item: str) -> Decoding:
    """One rule of :func:`parse_decodings` (``"topk=40"``)."""
    kind, _, value = item.partition("=")
    kind = kind.lower()
    if kind in ("greedy", "sample", "pure"):
        if value:
            raise ValueError(f"decoding {item!r}: {kind} takes no value")
        return Decoding(kind="sample" if kind == "pure" else cast(DecodingKind, kind))
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
    return Decoding(kind=cast(DecodingKind, kind), value=v)


def _number(rule: Decoding) -> float:
    """The value of a rule that needs one (topk, topp, temperature)."""
    if rule.value is None:
        raise TypeError(f"decoding rule {rule.kind!r} needs a value, e.g. Decoding(kind={rule.kind!r}, value=...)")
    return rule.value


def check_transition(P: MatrixLike) -> int:
    """Check that ``P`` is a square, real, finite, non-negative, row-stochastic matrix (dense or
    sparse). Errors name ``P``.

    Args:
        P: the matrix (NumPy, torch or scipy.sparse).

    Returns:
        Its size ``n``.
    """
    M: Any = P if sp.issparse(P) else _host_array(P)  # scipy.sparse ships no types
    if not sp.issparse(M) and M.dtype.kind not in "iuf":
        raise TypeError(f"P must hold real probabilities; got dtype {M.dtype}")
    shape = M.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"P must be a square (n, n) matrix, got shape {shape}")
    if shape[0] == 0:
        raise ValueError("P is empty (0 x 0): a transition matrix needs at least one state")
    data = M.data if sp.issparse(M) else M
    if data.size and (not np.isfinite(data).all() or data.min() < 0):
        raise ValueError("P must hold finite, non-negative probabilities")
    sums = np.asarray(M.sum(axis=1)).ravel()
    if not np.allclose(sums, 1.0, atol=1e-8):
        bad = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"P must be row-stochastic: row {bad} sums to {sums[bad]:.6g}")
    return shape[0]


def _host_array(P: MatrixLike) -> np.ndarray:
    """A dense ``P`` as a NumPy array on the host (a torch tensor is detached and copied there)."""
    return P.detach().cpu().numpy() if isinstance(P, torch.Tensor) else np.asarray(P)


def as_dense(P: MatrixLike) -> np.ndarray:
    """``P`` as a dense float64 NumPy array (a sparse matrix densified, a torch tensor copied to the host).

    Args:
        P: a dense or sparse matrix.

    Returns:
        The float64 array.
    """
    if sp.issparse(P):
        return sp.csr_array(P).toarray()
    return np.asarray(_host_array(P), dtype=np.float64)


def apply_decoding(P: MatrixLike, rule: Decoding | str, *, sparse: bool | None = None) -> np.ndarray | sp.csr_array:
    """The transition matrix of decoding ``P`` with ``rule``: keep entries per row, renormalise.

    * ``greedy``: the row's largest entry (first on ties) gets 1;
    * ``topk=k``: the ``k`` largest entries (ties broken by lower index);
    * ``topp=p``: the smallest set of largest entries whose mass reaches ``p`` (nucleus);
    * ``temperature=T``: ``P^(1/T)`` renormalised;
    * ``sample``: ``P`` itself.

    Args:
        P: row-stochastic ``(n, n)`` matrix, dense or sparse.
        rule: a :class:`Decoding` or its spelling (``"topk=40"``).
        sparse: return ``csr_array`` (default: sparse exactly for greedy/top-k/top-p when ``P`` is
            sparse or larger than 5,000).

    Returns:
        The decoded ``(n, n)`` matrix, dense float64 or ``csr_array``.

    Example:
        >>> import numpy as np
        >>> apply_decoding(np.array([[0.2, 0.8], [0.6, 0.4]]), "greedy")
        array([[0., 1.],
               [1., 0.]])
    """
    if isinstance(rule, str):
        (rule,) = parse_decodings(rule)
    check_transition(P)
    if sp.issparse(P) and rule.kind in _TRUNCATING:
        return _sparse_truncate(sp.csr_array(P), rule)
    dense = as_dense(P)
    n = dense.shape[0]
    if rule.kind == "sample":
        out = dense.copy()
    elif rule.kind == "temperature":
        out = _temperature(dense, _number(rule))
    else:
        out = _dense_truncate(dense, rule)
    want_sparse = sparse if sparse is not None else (rule.kind in _TRUNCATING and (sp.issparse(P) or n > 5000))
    return sp.csr_array(out) if want_sparse else out


def _temperature(dense: np.ndarray, temperature: float) -> np.ndarray:
    """``P^(1/T)`` renormalised per row."""
    with np.errstate(divide="ignore"):
        logp = np.log(dense) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _dense_truncate(dense: np.ndarray, rule: Decoding) -> np.ndarray:
    """greedy / top-k / top-p on a dense matrix (ties broken by lower index)."""
    order = np.argsort(-dense, axis=1, kind="stable")  # descending, lower index first on ties
    ranked = np.take_along_axis(dense, order, axis=1)
    if rule.kind == "greedy":
        keep = np.zeros_like(ranked, dtype=bool)
        keep[:, 0] = True
    elif rule.kind == "topk":
        keep = np.arange(dense.shape[0])[None, :] < int(_number(rule))
    else:  # topp: include entries until the mass before them reaches p
        before = np.cumsum(ranked, axis=1) - ranked
        keep = before < _number(rule) - 1e-12
        keep[:, 0] = True
    kept = np.where(keep, ranked, 0.0)
    kept /= kept.sum(axis=1, keepdims=True)
    out = np.zeros_like(dense)
    np.put_along_axis(out, order, kept, axis=1)
    return out


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
        keep = rank < int(_number(rule))
    else:
        csum = np.cumsum(data)
        start = np.concatenate([[0.0], csum])[P.indptr[:-1]][rows]
        before = csum - data - start
        keep = (before < _number(rule) - 1e-12) | (rank == 0)
    rows, cols, data = rows[keep], cols[keep], data[keep]
    totals = np.bincount(rows, weights=data, minlength=n)
    return sp.csr_array((data / totals[rows], (rows, cols)), shape=P.shape)


# renamed in 0.2: ``estimate`` built a transition matrix, not an estimate of R
__getattr__ = deprecated_alias(__name__, {"estimate": ("transition_matrix", transition_matrix)})
