"""Whitening of sentence embeddings with the scikit-learn contract, fitted by streaming.

The statistics are the count ``n``, the mean ``μ`` and the scatter ``M = Σ_i (x_i - μ)ᵀ(x_i - μ)``,
all float64. A batch contributes its own mean and scatter (one GEMM on centred rows), merged by
Chan et al.'s exact pairwise update::

    n = n_a + n_b,  δ = μ_b - μ_a,  μ = μ_a + δ n_b / n,  M = M_a + M_b + δᵀδ n_a n_b / n

so ``partial_fit`` on any split of the data, ``merge`` of separately fitted parts and
``all_reduce`` over processes all give the statistics of the whole data (up to float64
rounding). The map is the article's generalised one::

    Σ = M / (n - ddof) = U Λ Uᵀ,   x~ = (x - β μ) U_k Λ_k^(-γ/2)

``β = γ = 1`` is whitening, ``γ = 0`` a rotation (PCA without rescaling), ``β = 0`` keeps the
mean; ``k = n_components`` keeps the directions of largest variance.

Reference: Su Jianlin, https://kexue.fm/archives/8069; Su et al., arXiv:2103.15316;
Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing sample
variances" (1979).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.numpy import save_file
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_array, validate_data

from kexue._device import autocast_disabled, collective_device
from kexue._shared import check_finite, check_int, check_number, check_process_group
from kexue.report.io import publish

__all__ = ["RankDeficientWarning", "Statistics", "Whitening", "validate_rows"]

Statistics: TypeAlias = tuple[int, np.ndarray, np.ndarray]  # (n, μ (d,), M (d, d)), float64
# a weakly keyed cache entry: (key, weak refs to mean_ and scatter_, the cached value)
_Entry: TypeAlias = tuple[Any, "weakref.ref[np.ndarray]", "weakref.ref[np.ndarray]", Any]

_FORMAT = "kexue.whitening/1"
_CHUNK_ROWS = 65536  # rows converted to float64 at a time: bounds the memory of a huge batch
# The eigendecomposition of each fitted Whitening, kept outside the estimator (transform must not
# change its __dict__) and keyed by everything it depends on: the parameters and the very arrays
# of the statistics, so set_params or more fitting can never leave it stale.
_SOLVED: weakref.WeakKeyDictionary[Whitening, _Entry] = weakref.WeakKeyDictionary()
# The eigendecomposition alone, keyed by what it depends on (statistics, ddof, shrinkage): changing
# n_components, beta, gamma or eps with set_params re-derives the map without a new eigh.
_DECOMPOSED: weakref.WeakKeyDictionary[Whitening, _Entry] = weakref.WeakKeyDictionary()


class RankDeficientWarning(UserWarning):
    """The covariance has (numerically) zero eigenvalues among the kept components.

    Args:
        *args: the message, as for any ``Warning``.
        **kwargs: none are used (``Warning`` takes none).
    """


def validate_rows(estimator: BaseEstimator | None, X: Any, *, reset: bool = False) -> torch.Tensor:
    """``X`` as a 2-D real tensor, checked as scikit-learn checks its estimators' input.

    NumPy arrays, lists and DataFrames go through scikit-learn's ``validate_data`` (which
    rejects sparse, complex, object and 1-D input with its usual messages, converts integers to
    float64 and keeps float32); torch tensors keep their device and dtype and get the same checks
    here. ``reset=True`` records the estimator's ``n_features_in_``; ``reset=False`` checks it.
    ``estimator=None`` checks the rows alone (no feature count).

    Args:
        estimator: the estimator whose ``n_features_in_`` is recorded or checked, or None.
        X: the rows, ``(n_samples, n_features)``: a torch tensor, NumPy array or array-like.
        reset: record the feature count (fitting afresh) instead of checking it.

    Returns:
        ``X`` as a 2-D tensor: a torch input itself (detached, same device and dtype), other input
        converted by scikit-learn (float64 or float32) and shared with it where possible.

    Raises:
        ValueError: sparse, complex, non-finite, empty or not 2-D input, the meta device, or a
            feature count other than the fitted one.
    """
    if not isinstance(X, torch.Tensor):
        options = {"dtype": [np.float64, np.float32], "ensure_all_finite": False}  # non-finite: check_finite's message
        array = check_array(X, **options) if estimator is None else validate_data(estimator, X, reset=reset, **options)
        if not array.flags.writeable or any(s < 0 for s in array.strides):  # broadcast or reversed views:
            array = np.ascontiguousarray(array).copy()  # torch.from_numpy wants a writable, forward buffer
        x = torch.from_numpy(array)
        check_finite("X", x)
        return x
    x = X.detach()
    if x.device.type == "meta":
        raise ValueError(
            "X is on the meta device, which holds no values: the Whitening estimator fits on and "
            "validates values (cpu, cuda, ...); WhiteningLayer(fitted).to('meta') gives the shapes"
        )
    if x.is_complex():
        raise ValueError(f"Complex data not supported: X is a {x.dtype} tensor")
    if x.dim() != 2:
        raise ValueError(
            f"X must be a 2-D array of shape (n_samples, n_features); got shape {tuple(x.shape)}. "
            "Reshape your data with x.reshape(-1, 1) for one feature or x.reshape(1, -1) for one sample"
        )
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"X must hold real numbers; got dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"X has shape {tuple(x.shape)}: at least 1 sample and 1 feature are required")
    d = int(x.shape[1])
    if estimator is None:
        pass
    elif reset:
        estimator.n_features_in_ = d
    elif hasattr(estimator, "n_features_in_") and d != estimator.n_features_in_:
        raise ValueError(
            f"X has {d} features, but {type(estimator).__name__} is expecting {estimator.n_features_in_} "
            "features as input."
        )
    check_finite("X", x)
    return x


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 statistics of tensors on ``device`` are computed: there, or on the CPU for MPS
    (which has no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def empty_statistics(d: int) -> Statistics:
    """The statistics of no rows in ``d`` dimensions: the identity of :func:`merge_statistics`."""
    return 0, np.zeros(d), np.zeros((d, d))


def _chunk_statistics(chunk: torch.Tensor) -> Statistics:
    """``(n, μ, M)`` of one float64 chunk, computed on its device with autocast off."""
    with autocast_disabled(chunk):
        mu = chunk.mean(0)
        centred = chunk - mu
        m2 = (centred.T @ centred).cpu().numpy()
    return chunk.shape[0], mu.cpu().numpy(), m2


def batch_statistics(x: torch.Tensor) -> Statistics:
    """``(n, μ, M)`` of the rows of ``x`` in float64, chunk by chunk (exact Chan merges).

    Each chunk's mean and scatter are computed in float64 on ``x``'s device (on the CPU for MPS)
    with autocast off, then merged on the host (one transfer per chunk: fitting synchronises).

    Args:
        x: the rows, ``(n, d)``.

    Returns:
        The statistics: the count, the mean ``(d,)`` and the scatter ``(d, d)``, float64 NumPy.
    """
    device = _float64_device(x.device)
    stats = empty_statistics(x.shape[1])
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        chunk = x[start : start + _CHUNK_ROWS].to(device=device, dtype=torch.float64)
        stats = merge_statistics(stats, _chunk_statistics(chunk))
    return stats


def merge_statistics(a: Statistics, b: Statistics) -> Statistics:
    """Chan et al.'s pairwise merge of ``(n, μ, M)``; an empty side (``n = 0``) is the identity.

    Args:
        a: the statistics of one part.
        b: the statistics of another part, of the same dimension.

    Returns:
        The statistics of both parts together (one side itself when the other is empty).
    """
    na, ma, sa = a
    nb, mb, sb = b
    if na == 0:
        return nb, mb, sb
    if nb == 0:
        return na, ma, sa
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    scatter = sa + sb + np.outer(delta, delta) * (na * nb / n)
    return n, mean, scatter


class Whitening(TransformerMixin, BaseEstimator):
    """Whitening ``x~ = (x - βμ) U_k Λ_k^(-γ/2)`` fitted in float64, by batch or by streaming.

    Args:
        n_components: ``k``, the number of output dimensions (directions of largest variance);
            ``None`` keeps all.
        beta: how much of the mean to subtract (1: all, 0: none).
        gamma: power of the rescaling (1: whitening, 0: rotation only, 0.5: half-way).
        ddof: the covariance divides by ``n - ddof`` (0: the article's; 1: scikit-learn's PCA).
        shrinkage: ``s`` in ``Σ' = (1 - s) Σ + s (tr Σ / d) I`` (Ledoit-Wolf style), which makes
            a rank-deficient covariance invertible.
        eps: added to every eigenvalue before the power ``-γ/2``.

    Attributes (after fitting):
        n_samples_seen_, n_features_in_, mean_ (μ), scatter_ (M), and, computed on demand,
        eigenvalues_ (all d, decreasing), components_ ((k, d), rows ``U_kᵀ``), kernel_
        (``(d, k)``), bias_ (``β μ``), n_components_; ``info_`` after :meth:`load`.

    Rank deficiency (fewer samples than dimensions, duplicated or constant features):
    eigenvalues below ``d · ε_float64 · λ_max`` are zero to machine precision. Unless ``eps`` or
    ``shrinkage`` lifts them, those directions are dropped from the kept components with a
    :class:`RankDeficientWarning`, so the output never holds ``inf`` or amplified noise.

    Example:
        >>> import numpy as np
        >>> from kexue.whitening import Whitening
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((1000, 6)) @ np.diag([5.0, 3, 2, 1, 0.5, 0.1]) + 1.0
        >>> w = Whitening(n_components=4).fit(x)            # (N, d) NumPy or torch
        >>> z = w.transform(x)                              # (N, 4), same type as the input
        >>> z.shape, bool(np.allclose(np.cov(z.T, ddof=0), np.eye(4)))
        ((1000, 4), True)
        >>> streamed = Whitening(n_components=4)
        >>> for batch in np.array_split(x, 7):              # or: streaming
        ...     _ = streamed.partial_fit(batch)
        >>> bool(np.allclose(streamed.transform(x), z))
        True
    """

    # fitted state (scikit-learn's convention: set by fit/partial_fit/load, absent before)
    n_samples_seen_: int
    n_features_in_: int
    mean_: np.ndarray
    scatter_: np.ndarray
    info_: dict[str, Any]

    def __init__(
        self,
        *,
        n_components: int | None = None,
        beta: float = 1.0,
        gamma: float = 1.0,
        ddof: int = 0,
        shrinkage: float = 0.0,
        eps: float = 0.0,
    ) -> None:
        self.n_components = n_components
        self.beta = beta
        self.gamma = gamma
        self.ddof = ddof
        self.shrinkage = shrinkage
        self.eps = eps

    # -- fitting ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.n_components is not None:
            check_int("n_components", self.n_components, 1)
        check_number("beta", self.beta)
        check_number("gamma", self.gamma)
        check_int("ddof", self.ddof, 0)
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1]; got {self.shrinkage!r}")
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0; got {self.eps!r}")

    def fit(self, X: Any, y: object = None) -> Whitening:
        """Fit on all of ``X`` (forgets earlier statistics).

        Args:
            X: the rows, ``(n_samples, n_features)``: a torch tensor (any device) or a NumPy
                array or array-like.
            y: ignored (scikit-learn's signature).

        Returns:
            self.
        """
        for attr in ("n_samples_seen_", "mean_", "scatter_", "n_features_in_"):
            self.__dict__.pop(attr, None)
        return self.partial_fit(X)

    def partial_fit(self, X: Any, y: object = None) -> Whitening:
        """Add the rows of ``X`` to the statistics (streaming; any batch sizes).

        Args:
            X: the rows, ``(n_samples, n_features)``, as for :meth:`fit`; the feature count must
                match earlier batches.
            y: ignored (scikit-learn's signature).

        Returns:
            self.
        """
        self._check_params()
        x = validate_rows(self, X, reset=not hasattr(self, "n_samples_seen_"))
        self._absorb(batch_statistics(x))
        return self

    def _absorb(self, stats: Statistics) -> None:
        d = stats[1].shape[0]
        current = (
            (self.n_samples_seen_, self.mean_, self.scatter_)
            if hasattr(self, "n_samples_seen_")
            else empty_statistics(d)
        )
        self.n_samples_seen_, self.mean_, self.scatter_ = merge_statistics(current, stats)
        self.n_features_in_ = int(self.mean_.shape[0])

    def merge(self, other: Whitening) -> Whitening:
        """Add another fitted Whitening's statistics to this one (same features); returns self.

        Args:
            other: a fitted :class:`Whitening` of the same feature count (its statistics are copied).

        Returns:
            self, holding the statistics of both.
        """
        other._require_fitted()
        if hasattr(self, "n_features_in_") and other.n_features_in_ != self.n_features_in_:
            raise ValueError(f"cannot merge: {other.n_features_in_} features into {self.n_features_in_}")
        self._absorb((other.n_samples_seen_, other.mean_.copy(), other.scatter_.copy()))
        return self

    def all_reduce(self, *, group: dist.ProcessGroup | None = None) -> Whitening:
        """Combine the statistics of every process (``torch.distributed``; gloo or NCCL).

        Each rank calls this after fitting its own shard; afterwards every rank holds the
        statistics of all the shards, merged in rank order. A rank with no data may call it
        unfitted if it knows the feature count from ``n_features_in_``.

        Args:
            group: the process group (default: the world).

        Returns:
            self.
        """
        check_process_group()
        self._require_fitted()
        d = self.n_features_in_
        packed = torch.from_numpy(np.concatenate([[float(self.n_samples_seen_)], self.mean_, self.scatter_.ravel()]))
        packed = packed.to(collective_device(group))  # NCCL: the current CUDA device; gloo: the CPU
        parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, packed, group=group)
        merged = empty_statistics(d)
        for part in parts:
            p = part.cpu().numpy()
            count = int(round(p[0]))  # noqa: RUF046 -- on NumPy < 2, round() of a float64 is a float64
            merged = merge_statistics(merged, (count, p[1 : 1 + d].copy(), p[1 + d :].reshape(d, d).copy()))
        self.n_samples_seen_, self.mean_, self.scatter_ = merged
        return self

    # -- the map ---------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not hasattr(self, "n_samples_seen_"):
            raise NotFittedError("this Whitening is not fitted yet; call fit or partial_fit first")

    def _cached(self, cache: weakref.WeakKeyDictionary[Whitening, _Entry], key: object) -> Any:
        """The value cached for ``key`` and the current statistics arrays, or None."""
        hit = cache.get(self)
        if hit is not None and hit[0] == key and hit[1]() is self.mean_ and hit[2]() is self.scatter_:
            return hit[3]
        return None

    def _store(self, cache: weakref.WeakKeyDictionary[Whitening, _Entry], key: object, value: Any) -> None:
        # weak references: a refit must not keep the old statistics alive
        cache[self] = (key, weakref.ref(self.mean_), weakref.ref(self.scatter_), value)

    def _solve(self) -> dict[str, np.ndarray]:
        """The map for the current parameters and statistics (computed once per such pair)."""
        self._require_fitted()
        self._check_params()
        key = (sorted(self.get_params().items()), self.n_samples_seen_)
        hit = self._cached(_SOLVED, key)
        if hit is not None:
            return hit
        solved = self._eigen()
        self._store(_SOLVED, key, solved)
        return solved

    def _decompose(self) -> tuple[np.ndarray, np.ndarray]:
        """``(λ, U)`` of the (shrunk) covariance, decreasing, with deterministic signs; computed once
        per statistics, ddof and shrinkage."""
        n, d = self.n_samples_seen_, self.n_features_in_
        if n - self.ddof <= 0:
            raise ValueError(f"{n} samples are not enough for ddof={self.ddof}")
        key = (n, self.ddof, self.shrinkage)
        hit = self._cached(_DECOMPOSED, key)
        if hit is not None:
            return hit
        sigma = self.scatter_ / (n - self.ddof)
        if self.shrinkage:
            sigma = (1 - self.shrinkage) * sigma + self.shrinkage * (np.trace(sigma) / d) * np.eye(d)
        lam, u = np.linalg.eigh((sigma + sigma.T) / 2)
        order = np.argsort(lam)[::-1]
        lam, u = np.clip(lam[order], 0.0, None), u[:, order]
        u = u * np.sign(u[np.abs(u).argmax(0), np.arange(d)])  # deterministic signs
        self._store(_DECOMPOSED, key, (lam, u))
        return lam, u

    def _kept(self, lam: np.ndarray, k: int) -> int:
        """How many of the first ``k`` components to keep: those whose shifted eigenvalue is not zero
        to machine precision (all of them for ``gamma = 0``), with a warning when some are dropped."""
        n, d = self.n_samples_seen_, self.n_features_in_
        shifted = lam[:k] + self.eps
        tol = d * np.finfo(np.float64).eps * max(float(lam[0]), np.finfo(np.float64).tiny)
        rank = int((shifted > tol).sum()) if self.gamma != 0 else k
        if rank < k:
            warnings.warn(
                f"the covariance has rank {rank} < n_components {k} (n_samples {n}, n_features {d}); "
                f"keeping {rank} components. Pass shrinkage>0 or eps>0 to keep all {k}",
                RankDeficientWarning,
                stacklevel=4,
            )
        return rank

    def _eigen(self) -> dict[str, np.ndarray]:
        d = self.n_features_in_
        lam, u = self._decompose()
        k = d if self.n_components is None else self.n_components
        if k > d:
            raise ValueError(f"n_components={k} exceeds the {d} features")
        shifted = lam[:k] + self.eps
        k = self._kept(lam, k)
        kernel = u[:, :k] * shifted[:k] ** (-self.gamma / 2)
        return {
            "eigenvalues": lam.copy(),
            "components": u[:, :k].T.copy(),
            "kernel": kernel,
            "bias": self.beta * self.mean_,
            "inverse": (u[:, :k] * shifted[:k] ** (self.gamma / 2)).T.copy(),
        }

    @property
    def eigenvalues_(self) -> np.ndarray:
        """All ``d`` eigenvalues of the (shrunk) covariance, decreasing (float64)."""
        return self._solve()["eigenvalues"]

    @property
    def components_(self) -> np.ndarray:
        """The kept principal directions as rows, ``(k, d)`` (``U_kᵀ``)."""
        return self._solve()["components"]

    @property
    def kernel_(self) -> np.ndarray:
        """The map's matrix ``W = U_k Λ_k^(-γ/2)``, ``(d, k)`` (float64)."""
        return self._solve()["kernel"]

    @property
    def bias_(self) -> np.ndarray:
        """The shift ``βμ`` subtracted before the kernel, ``(d,)`` (float64)."""
        return self._solve()["bias"]

    @property
    def n_components_(self) -> int:
        """The number of output dimensions ``k`` (fewer than ``n_components`` when rank-deficient)."""
        return int(self.kernel_.shape[1])

    def _apply(self, X: Any, matrix: np.ndarray, before: np.ndarray | None, after: np.ndarray | None) -> Any:
        if before is not None:  # transform: X in the input space
            x = validate_rows(self, X)
        else:  # inverse_transform: X in the output space
            x = validate_rows(None, X)
            if x.shape[1] != matrix.shape[0]:
                raise ValueError(
                    f"X has {x.shape[1]} features, but inverse_transform expects {matrix.shape[0]} (n_components_)"
                )
        # float16/bfloat16 inputs are computed in float32 with the float64 map rounded once to it (never
        # to the input's dtype), then rounded to the input's dtype; integers compute and return float64
        out_dtype = x.dtype if x.is_floating_point() else torch.float64
        work = torch.promote_types(out_dtype, torch.float32)
        m = torch.from_numpy(matrix).to(device=x.device, dtype=work)
        with autocast_disabled(x):
            xx = x.to(work)
            if before is not None:
                xx = xx - torch.from_numpy(before).to(device=x.device, dtype=work)
            out = xx @ m
            if after is not None:
                out = out + torch.from_numpy(after).to(device=x.device, dtype=work)
        out = out.to(out_dtype)
        return out.numpy() if isinstance(X, np.ndarray) or not isinstance(X, torch.Tensor) else out

    @overload
    def transform(self, X: torch.Tensor) -> torch.Tensor: ...
    @overload
    def transform(self, X: npt.ArrayLike) -> np.ndarray: ...
    def transform(self, X: torch.Tensor | npt.ArrayLike) -> torch.Tensor | np.ndarray:
        """``(X - βμ) W``; NumPy in, NumPy out; torch in, torch out (same device and dtype).

        float16 and bfloat16 tensors are computed in float32 (float32 and float64 in their own
        dtype) with autocast off, and returned in their dtype. The input is validated (finite),
        which reads a value back to the host; for a per-batch hot path on a GPU use
        :class:`~kexue.whitening.layer.WhiteningLayer`, which does not.

        Args:
            X: the rows, ``(n_samples, n_features_in_)``.

        Returns:
            The whitened rows, ``(n_samples, n_components_)``.
        """
        solved = self._solve()
        return self._apply(X, solved["kernel"], solved["bias"], None)

    @overload
    def inverse_transform(self, X: torch.Tensor) -> torch.Tensor: ...
    @overload
    def inverse_transform(self, X: npt.ArrayLike) -> np.ndarray: ...
    def inverse_transform(self, X: torch.Tensor | npt.ArrayLike) -> torch.Tensor | np.ndarray:
        """``X Λ_k^(γ/2) U_kᵀ + βμ``: exact when all components are kept, else the projection
        onto the kept ones (as in scikit-learn's PCA).

        Args:
            X: whitened rows, ``(n_samples, n_components_)``.

        Returns:
            The rows in the input space, ``(n_samples, n_features_in_)``, of ``X``'s type.
        """
        solved = self._solve()
        return self._apply(X, solved["inverse"], None, solved["bias"])

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """The output feature names, ``whitening0`` ... (scikit-learn's ``set_output`` uses them).

        Args:
            input_features: ignored (the outputs do not correspond to input features).

        Returns:
            An object array of ``n_components_`` names.
        """
        return np.asarray([f"whitening{i}" for i in range(self.n_components_)], dtype=object)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, info: dict[str, Any] | None = None) -> None:
        """Write kernel, bias and the raw statistics (safetensors + JSON metadata), atomically.

        Args:
            path: the file to write (replaced atomically if it exists).
            info: JSON-able notes kept with the file (e.g. the encoder and pooling it was
                fitted on); :meth:`load` restores them as ``info_``. Default: the ``info_``
                this Whitening was loaded with, if any.

        Example:
            >>> import os, tempfile
            >>> import numpy as np
            >>> w = Whitening().fit(np.random.default_rng(0).standard_normal((50, 3)))
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     w.save(os.path.join(folder, "w.safetensors"), info={"pooling": "cls"})
            ...     loaded = Whitening.load(os.path.join(folder, "w.safetensors"))
            >>> loaded.info_, bool(np.array_equal(loaded.kernel_, w.kernel_))
            ({'pooling': 'cls'}, True)
        """
        solved = self._solve()
        tensors = {
            "kernel": solved["kernel"],
            "bias": solved["bias"],
            "mean": self.mean_,
            "scatter": self.scatter_,
            "eigenvalues": solved["eigenvalues"],
        }
        info = info if info is not None else getattr(self, "info_", {})
        meta = {
            "format": _FORMAT,
            "params": json.dumps(self.get_params()),
            "n_samples_seen": str(self.n_samples_seen_),
            "info": json.dumps(info),
        }
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            save_file(
                {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(tmp), metadata=meta
            )
            publish(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> Whitening:
        """Read a file written by :meth:`save`; it transforms and can keep fitting.

        Args:
            path: the file.

        Returns:
            The fitted Whitening, with the notes saved with it as ``info_``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a kexue whitening file, or a damaged one.
        """
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"whitening file {file} does not exist")
        meta, tensors = _read_safetensors(file)
        try:
            w = cls(**json.loads(meta["params"]))
            w.n_samples_seen_ = int(meta["n_samples_seen"])
            w.mean_, w.scatter_ = tensors["mean"], tensors["scatter"]
            d = int(w.mean_.shape[0])
            valid = w.mean_.shape == (d,) and w.scatter_.shape == (d, d) and w.n_samples_seen_ >= 1
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{file} is a damaged kexue whitening file ({type(exc).__name__}: {exc})") from None
        if not valid:
            raise ValueError(
                f"{file} is a damaged kexue whitening file (mean {w.mean_.shape}, scatter {w.scatter_.shape})"
            )
        w.n_features_in_ = d
        w.info_ = json.loads(meta.get("info", "{}"))
        return w


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and arrays of a kexue whitening file (a clear ValueError for anything else)."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {}
            if meta.get("format") == _FORMAT:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 -- safe_open is not iterable
    except Exception as exc:  # not safetensors at all, or truncated: a clear error, never an internal one
        raise ValueError(f"{path} is not a kexue whitening file: not a readable safetensors file ({exc})") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a kexue whitening file (format {meta.get('format')!r}, expected {_FORMAT!r})")
    return meta, tensors
