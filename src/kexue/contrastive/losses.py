"""InfoNCE with general targets, dense and tiled (the similarity matrix never materialised).

For queries ``q_i`` (N of them) and documents ``d_j`` (M ≥ N: positives plus extra hard
negatives), similarities ``s_ij = scale · sim(q_i, d_j)`` (``scale = 1/τ``) and a target
matrix ``t`` (each row a distribution over the documents):

    L_rows = −(1/N) Σ_ij t_ij log softmax_j(s_ij) = (1/N) Σ_i [(Σ_j t_ij) LSE_j(s_ij) − Σ_j t_ij s_ij]

``symmetric=True`` averages it with the column direction (document → query, columns without
any target skipped), as CLIP does. ``∂L/∂s_ij = (p_ij − t_ij)/N`` row-wise, which is all the
tiled backward needs: it recomputes ``s`` tile by tile from the saved log-sum-exps, so memory
is O(tile²) instead of O(N M).

Targets: ``None`` (``t = I``: query i's positive is document i), a LongTensor of one positive
index per query, or a dense ``(N, M)`` matrix (several positives: give each row weights that
sum to 1, e.g. ``1/k`` for k positives).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import nn

from kexue._device import autocast_disabled
from kexue._shared import check_choice, check_finite, check_int, check_number

__all__ = ["InfoNCE", "info_nce", "info_nce_tiled"]

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[Similarity, ...] = get_args(Similarity)


def _index_targets(
    targets: torch.Tensor | None, n: int, m: int, device: torch.device, validate: bool = True
) -> torch.Tensor:
    """One positive document index per query: ``None`` means ``0 … N−1`` (range checked with ``validate``)."""
    if targets is None:
        if m < n:
            raise ValueError(
                f"d has {m} rows but the default targets pair q[i] with d[i]: d needs at least as many rows as q ({n})"
            )
        return torch.arange(n, device=device)
    if targets.shape != (n,):
        raise ValueError(
            f"index targets must have shape ({n},) (one document index per query); got {tuple(targets.shape)}"
        )
    if validate and n and targets.device.type != "meta" and (int(targets.min()) < 0 or int(targets.max()) >= m):
        raise ValueError(f"index targets must lie in [0, {m}); got range [{int(targets.min())}, {int(targets.max())}]")
    return targets.long()


def _is_index(targets: torch.Tensor | None) -> bool:
    return targets is None or targets.dtype in (torch.int64, torch.int32)


def _dense_targets(
    targets: torch.Tensor | None, n: int, m: int, device: torch.device, dtype: torch.dtype, validate: bool = True
) -> torch.Tensor:
    """The ``(N, M)`` target matrix of any accepted form (``None``, indices, or dense weights)."""
    if targets is None:
        _index_targets(None, n, m, device)
        return torch.eye(n, m, device=device, dtype=dtype)
    if _is_index(targets):
        return torch.nn.functional.one_hot(_index_targets(targets, n, m, device, validate), m).to(dtype)
    if targets.shape != (n, m):
        raise ValueError(f"dense targets must have shape ({n}, {m}); got {tuple(targets.shape)}")
    if (
        validate
        and targets.device.type != "meta"
        and (not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()))
    ):
        raise ValueError("dense targets must be finite and non-negative")
    return targets.to(dtype)


def _validate(q: torch.Tensor, d: torch.Tensor, similarity: Similarity, values: bool = True) -> None:
    """Types and shapes always; with ``values``, finiteness too (a host synchronisation; skipped on meta)."""
    check_choice("similarity", similarity, SIMILARITIES)
    for name, t in (("q", q), ("d", d)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of embeddings; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of embeddings; got dtype {t.dtype}")
    if q.dtype != d.dtype:
        raise TypeError(f"q and d must have the same dtype; got {q.dtype} and {d.dtype}")
    if q.dim() != 2 or d.dim() != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(
            f"q and d must be (N, D) and (M, D) with the same D; got {tuple(q.shape)} and {tuple(d.shape)}"
        )
    if q.shape[0] == 0:
        raise ValueError("q must hold at least one query")
    if values and q.device.type != "meta":
        check_finite("q", q.detach())
        check_finite("d", d.detach())


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss is computed in: float64 for float64 embeddings, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(q: torch.Tensor, d: torch.Tensor, similarity: Similarity) -> tuple[torch.Tensor, torch.Tensor]:
    if similarity == "cosine":
        return nn.functional.normalize(q, dim=-1), nn.functional.normalize(d, dim=-1)
    return q, d


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    scale: float | torch.Tensor = 20.0,
    similarity: Similarity = "cosine",
    symmetric: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """Dense InfoNCE (materialises the ``N × M`` similarities; simplest, fine up to a few thousand).

    Args:
        q: ``(N, D)`` query embeddings.
        d: ``(M, D)`` document embeddings (default ``q``: each embedding against all, as with
            two dropout views concatenated — then pass targets).
        targets: ``None``, ``(N,)`` indices or ``(N, M)`` weights (see module docs).
        scale: ``1/τ``; a tensor (e.g. ``log_scale.exp()``) makes the temperature learnable.
        similarity: ``"cosine"`` or ``"dot"``.
        symmetric: average with the document → query direction.
        validate: check finiteness and target ranges (host synchronisations; ``False``: none).

    Returns:
        Scalar loss (mean over rows): float64 for float64 embeddings, else float32. It is
        computed in that dtype with autocast off (the embeddings of any floating dtype are
        upcast once), so bfloat16 embeddings lose nothing in the softmax.

    Example:
        >>> q = torch.randn(4, 8)
        >>> info_nce(q, q + 0.01 * torch.randn(4, 8), scale=20.0).shape
        torch.Size([])
    """
    d = q if d is None else d
    _validate(q, d, similarity, validate)
    acc = _accumulation(q.dtype)
    with autocast_disabled(q):  # temperature-scaled similarities in bfloat16 would be off by ~0.1 at 1/τ = 20
        qn, dn = _prepare(q.to(acc), d.to(acc), similarity)
        s = scale * (qn @ dn.T)  # (N, M)
        t = _dense_targets(targets, q.shape[0], d.shape[0], s.device, s.dtype, validate)
        # log_softmax subtracts the row maximum before adding the log-sum: a near-zero loss keeps its relative
        # precision (LSE − s would cancel at 1/τ · eps)
        rows = -(t * torch.log_softmax(s, dim=1)).sum() / q.shape[0]
        if not symmetric:
            return rows
        # columns without any target contribute 0: no boolean mask (no host sync) needed
        columns = (t.sum(0) > 0).sum().clamp_min(1)
        cols = -(t * torch.log_softmax(s, dim=0)).sum() / columns
        return (rows + cols) / 2


class _TiledInfoNCE(torch.autograd.Function):
    """Row-direction InfoNCE with index targets, computed over (tile × tile) blocks."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, d: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, tile: int
    ) -> torch.Tensor:
        n, m = q.shape[0], d.shape[0]
        lse = torch.empty(n, dtype=torch.float32 if q.dtype != torch.float64 else torch.float64, device=q.device)
        acc = lse.dtype
        for i in range(0, n, tile):
            qi = q[i : i + tile].to(acc)
            running = torch.full((qi.shape[0],), -math.inf, dtype=acc, device=q.device)
            for j in range(0, m, tile):
                block = scale.to(acc) * (qi @ d[j : j + tile].to(acc).T)  # (tile, tile)
                running = torch.logaddexp(running, torch.logsumexp(block, dim=1))
            lse[i : i + tile] = running
        positive = scale.to(acc) * (q.to(acc) * d[index].to(acc)).sum(1)
        loss = (lse - positive).sum() / n
        ctx.save_for_backward(q, d, scale, index, lse)
        ctx.tile = tile
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None, None]:
        q, d, scale, index, lse = ctx.saved_tensors
        tile, n, m = ctx.tile, q.shape[0], d.shape[0]
        acc = lse.dtype
        sc = scale.to(acc)
        g_q = torch.zeros(q.shape, dtype=acc, device=q.device)
        g_d = torch.zeros(d.shape, dtype=acc, device=d.device)
        g_scale = torch.zeros((), dtype=acc, device=q.device)
        for i in range(0, n, tile):
            qi = q[i : i + tile].to(acc)
            for j in range(0, m, tile):
                dj = d[j : j + tile].to(acc)
                raw = qi @ dj.T  # (tile, tile) unscaled similarities
                p = torch.exp(sc * raw - lse[i : i + tile, None])  # softmax probabilities of the tile
                g_q[i : i + tile] += sc * (p @ dj)
                g_d[j : j + tile] += sc * (p.T @ qi)
                g_scale += (p * raw).sum()
        # the −Σ t_ij s_ij term: one positive per row
        qd = d[index].to(acc)
        g_q -= sc * qd
        g_d.index_add_(0, index, -sc * q.to(acc))
        g_scale -= (q.to(acc) * qd).sum()
        factor = grad.to(acc) / n
        scale_grad = (g_scale * factor).reshape(scale.shape).to(scale.dtype) if ctx.needs_input_grad[2] else None
        return (g_q * factor).to(q.dtype), (g_d * factor).to(d.dtype), scale_grad, None, None


def info_nce_tiled(
    q: torch.Tensor,
    d: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    scale: float | torch.Tensor = 20.0,
    similarity: Similarity = "cosine",
    tile: int = 1024,
    validate: bool = True,
) -> torch.Tensor:
    """InfoNCE (row direction, one positive per query) without materialising ``N × M``.

    The forward streams a log-sum-exp over column tiles; the backward recomputes each
    ``tile × tile`` block from the saved log-sum-exps. Extra memory is ``O(tile² + N)``
    beyond the inputs and their gradients; values and gradients equal :func:`info_nce`
    (accumulated in float32, float64 for float64 inputs).

    Args:
        q: ``(N, D)`` query embeddings.
        d: ``(M, D)`` document embeddings (default ``q``).
        targets: ``None`` (document i is query i's positive) or ``(N,)`` indices.
        scale: ``1/τ``; a tensor (e.g. ``log_scale.exp()``) makes the temperature learnable.
        similarity: ``"cosine"`` or ``"dot"``.
        tile: block size (rows and columns).
        validate: check finiteness and target ranges (host synchronisations; ``False``: none).

    Returns:
        Scalar loss: float64 for float64 embeddings, else float32 (autocast off inside). Its value
        is ``LSE − s`` per row, with an absolute error of about ``scale · eps`` per row: relative
        precision is lost only when the loss itself is near 0 (the dense form keeps it).

    Example:
        >>> q, d = torch.randn(6, 4), torch.randn(6, 4)
        >>> torch.allclose(info_nce_tiled(q, d, tile=4), info_nce(q, d))
        True
    """
    d = q if d is None else d
    _validate(q, d, similarity, validate)
    check_int("tile", tile, 1)
    if not _is_index(targets):
        raise ValueError("info_nce_tiled takes targets=None or (N,) indices; use info_nce for dense target matrices")
    index = _index_targets(targets, q.shape[0], d.shape[0], q.device, validate)
    scale_t = (
        scale if isinstance(scale, torch.Tensor) else torch.full((), float(scale), device=q.device)
    )  # a fill, not a copy
    acc = _accumulation(q.dtype)
    with autocast_disabled(q):
        qn, dn = _prepare(q.to(acc), d.to(acc), similarity)
        return _TiledInfoNCE.apply(qn, dn, scale_t, index, tile)


class InfoNCE(nn.Module):
    """InfoNCE as a module, with a fixed or learnable temperature.

    Args:
        temperature: initial ``τ`` (scale ``1/τ``); 0.05 is SimCSE's.
        learnable: learn ``log(1/τ)`` (CLIP's parameterisation), clamped to ``max_scale``.
        similarity: ``"cosine"`` or ``"dot"``.
        symmetric: average with the document → query direction.
        tiled: use :func:`info_nce_tiled` (row direction, index targets).
        tile: its block size.
        max_scale: the clamp of ``1/τ``.
        validate: check finiteness and target ranges on every call (host synchronisations;
            ``False``: none).

    The temperature stays in float32 (float64 after ``.double()``) when the module is cast to
    bfloat16 or float16, and the loss is computed in float32 with autocast off whatever the
    embeddings' dtype; it follows the module to its device.

    Example:
        >>> loss_fn = InfoNCE(temperature=0.05)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    """

    log_scale: torch.Tensor  # log(1/τ): a Parameter with ``learnable``, else a buffer

    def __init__(
        self,
        *,
        temperature: float = 0.05,
        learnable: bool = False,
        similarity: Similarity = "cosine",
        symmetric: bool = False,
        tiled: bool = False,
        tile: int = 1024,
        max_scale: float = 100.0,
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_number("temperature", temperature, above=0)
        self.similarity: Similarity = check_choice("similarity", similarity, SIMILARITIES)
        if tiled and symmetric:
            raise ValueError("tiled=True supports the row direction only; use symmetric=False or tiled=False")
        self.symmetric, self.tiled, self.tile, self.max_scale = symmetric, tiled, tile, max_scale
        self.validate = validate
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        """``1/τ``: ``exp(log_scale)`` clamped to ``max_scale`` (a 0-dim tensor)."""
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    def forward(
        self, q: torch.Tensor, d: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``q`` against ``d`` at this module's temperature (see :func:`info_nce`).

        Args:
            q: ``(N, D)`` query embeddings.
            d: ``(M, D)`` document embeddings (default ``q``).
            targets: ``None``, ``(N,)`` indices or ``(N, M)`` weights (``tiled``: not weights).

        Returns:
            The scalar loss (float32; float64 for float64 embeddings).
        """
        if not isinstance(q, torch.Tensor) or not q.is_floating_point():
            raise TypeError(
                f"q must be a floating-point torch.Tensor of embeddings; got {getattr(q, 'dtype', type(q).__name__)}"
            )
        scale = self.scale.to(_accumulation(q.dtype))
        if self.tiled:
            return info_nce_tiled(
                q, d, targets, scale=scale, similarity=self.similarity, tile=self.tile, validate=self.validate
            )
        return info_nce(
            q, d, targets, scale=scale, similarity=self.similarity, symmetric=self.symmetric, validate=self.validate
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> InfoNCE:
        """Follow ``.to()``/``.cuda()``/``.double()``, but keep the temperature in at least float32:
        ``model.bfloat16()`` would otherwise round ``log(1/τ)`` (1/0.07 becomes 14.25)."""
        before = self.log_scale.detach().clone()
        super()._apply(fn, recurse)
        after = self.log_scale
        if after.dtype in (torch.float16, torch.bfloat16) and before.dtype not in (torch.float16, torch.bfloat16):
            kept = (
                after.float()
                if before.device.type == "meta" or after.device.type == "meta"
                else before.to(after.device, torch.float32)
            )
            if isinstance(after, nn.Parameter):
                after.data = kept
            else:
                self.log_scale = kept
        return self
