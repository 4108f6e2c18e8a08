"""Orthogonal maps sending unit vector ``a`` to unit vector ``b`` (Householder, rotation, symmetric).

Formed as a matrix with :func:`orthogonal_map`, or applied to many vectors in O(d) each with
:func:`apply_orthogonal_map`. :mod:`kexue.orthogonal.reference` holds the article's formulas
as the float64 oracle.

Reference: Su Jianlin, https://kexue.fm/archives/8453
"""

from kexue.orthogonal.maps import (
    DEGENERATES,
    KINDS,
    Degenerate,
    Kind,
    LowRank,
    apply_orthogonal_map,
    low_rank_factors,
    orthogonal_map,
)

__all__ = [
    "DEGENERATES",
    "KINDS",
    "Degenerate",
    "Kind",
    "LowRank",
    "apply_orthogonal_map",
    "low_rank_factors",
    "orthogonal_map",
]
