"""Contrastive learning with exact large-batch gradients at micro-batch memory (kexue.fm).

* :mod:`kexue.contrastive.losses`: ``info_nce`` (general targets, symmetric, cosine/dot,
  learnable temperature), ``info_nce_tiled`` (never materialises the similarity matrix),
  the ``InfoNCE`` module.
* :mod:`kexue.contrastive.cached`: ``cached_backward``, the article's procedure with RNG
  replay so dropout stays on.
* :mod:`kexue.contrastive.reference`: float64 oracles.
"""

from kexue.contrastive.cached import CachedStep, cached_backward, naive_accumulation_backward
from kexue.contrastive.losses import InfoNCE, info_nce, info_nce_tiled

__all__ = ["CachedStep", "InfoNCE", "cached_backward", "info_nce", "info_nce_tiled", "naive_accumulation_backward"]
