"""Sentence-embedding whitening (kexue.fm/archives/8069), fitted by streaming.

* :mod:`kexue.whitening.whitening`: :class:`Whitening` (scikit-learn contract, float64
  statistics with exact merges, ``all_reduce`` over processes, save/load).
* :mod:`kexue.whitening.layer`: :class:`WhiteningLayer`, the fitted map as a torch module whose
  float64 map survives ``.bfloat16()``/``.half()``/``.to(dtype)`` and follows it to its device (the
  per-batch GPU path: no host sync; the meta device for shapes).
* :mod:`kexue.whitening.reference`: float64 NumPy oracles of the article's formulas.
"""

from kexue._optional import require_extra

require_extra("kexue.whitening", "sklearn")

from kexue.whitening.layer import WhiteningLayer
from kexue.whitening.whitening import RankDeficientWarning, Whitening

__all__ = ["RankDeficientWarning", "Whitening", "WhiteningLayer"]
