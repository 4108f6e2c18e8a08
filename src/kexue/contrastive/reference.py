"""Float64 oracles for contrastive losses and the article's gradient identity.

* ``info_nce_reference``: the loss written out with dense matrices,
  ``L = −(1/N) Σ_ij t_ij log p_ij`` with ``p = softmax_j(s_ij)``.
* ``embedding_gradient_reference``: the article's closed form for symmetric self-similarity
  ``s_ij = ⟨h_i, h_j⟩``: ``∂L/∂h_i = Σ_j (p_ij + p_ji − 2 t_ij) h_j`` (with the ``1/N`` of the
  mean), i.e. ``g_i = 2 Σ_j (p̄_ij − t_ij) h_j`` when ``t`` is symmetric.

Reference: Su Jianlin, "Can contrastive learning use gradient accumulation?",
https://kexue.fm/archives/8471.
"""

from __future__ import annotations

import torch

from kexue.contrastive.losses import Similarity

__all__ = ["embedding_gradient_reference", "info_nce_reference"]


def info_nce_reference(
    q: torch.Tensor,
    d: torch.Tensor,
    targets: torch.Tensor,
    *,
    scale: float = 1.0,
    similarity: Similarity = "dot",
    symmetric: bool = False,
) -> torch.Tensor:
    """``−(1/N) Σ_ij t_ij log softmax_j(scale · sim(q_i, d_j))`` in float64, by the definition.

    With ``symmetric=True``, the mean of that and the same loss over columns
    (``softmax_i``, targets ``tᵀ``, columns with no target excluded).

    Args:
        q: ``(N, D)`` queries.
        d: ``(M, D)`` documents.
        targets: the dense ``(N, M)`` target matrix.
        scale: ``1/τ``.
        similarity: ``"cosine"`` or ``"dot"``.
        symmetric: average with the column direction.

    Returns:
        The float64 scalar loss.

    Example:
        >>> q = torch.eye(3)
        >>> round(float(info_nce_reference(q, q, torch.eye(3), scale=10.0)), 6)
        9.1e-05
    """
    q, d, t = q.double(), d.double(), targets.double()
    if similarity == "cosine":
        q = q / q.norm(dim=-1, keepdim=True)
        d = d / d.norm(dim=-1, keepdim=True)
    s = scale * (q @ d.T)
    rows = -(t * torch.log_softmax(s, dim=1)).sum() / t.shape[0]
    if not symmetric:
        return rows
    has = t.sum(0) > 0
    cols = -(t[:, has] * torch.log_softmax(s[:, has], dim=0)).sum() / int(has.sum())
    return (rows + cols) / 2


def embedding_gradient_reference(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The article's g: ``∂L/∂h_i`` for ``s = h hᵀ`` and ``L = −(1/N) Σ t_ij log p_ij`` (float64).

    ``s_ij`` depends on ``h_i`` through row ``i`` and column ``i``, so
    ``∂L/∂h_i = (1/N) Σ_j [(p_ij − t_ij) + (p_ji − t_ji)] h_j``.

    Args:
        h: ``(N, D)`` embeddings.
        targets: the dense ``(N, N)`` target matrix.

    Returns:
        ``(N, D)`` float64 gradient of the loss with respect to ``h``.
    """
    h, t = h.double(), targets.double()
    p = torch.softmax(h @ h.T, dim=1)
    coeff = (p - t) + (p - t).T
    return coeff @ h / h.shape[0]
