"""Repetition in decoding: the exact measure of a bigram decoder, its bounds, rebalanced
vocabularies, repetition metrics and ``generate`` hooks (kexue.fm/archives/8128).

* :mod:`~kexue.repetition.transition`: ``P`` from a corpus (:func:`transition_matrix`) or a model,
  decoding rules applied to ``P``.
* :mod:`~kexue.repetition.measure`: exact R, series, eigenvalues, bounds, the estimate with its
  error (strongly connected blocks, exact low powers, Hutch++), per-token inflow.
* :mod:`~kexue.repetition.analysis`: R per rule (DRY included), simulated decoding, rebalanced encoding.
* :mod:`~kexue.repetition.metrics`: rep-n, seq-rep-n, distinct-n, rep/l, wrep/l, uniq, loops.
* :mod:`~kexue.repetition.hf`: ``LoopStoppingCriteria`` (article's or vLLM's rule, loop budget),
  ``LoopBreakingProcessor``, ``PromptExcludedRepetitionPenalty`` for ``model.generate``.
* :mod:`~kexue.repetition.dry`: ``DRYLogitsProcessor``, llama.cpp's DRY for ``model.generate``.
"""

from kexue._shared import deprecated_alias
from kexue.repetition.measure import bounds, estimate_r, exact_r, inflow
from kexue.repetition.metrics import find_loops, seq_rep_n, summary
from kexue.repetition.transition import apply_decoding, parse_decodings, transition_matrix

__all__ = [
    "apply_decoding",
    "bounds",
    "estimate_r",
    "exact_r",
    "find_loops",
    "inflow",
    "parse_decodings",
    "seq_rep_n",
    "summary",
    "transition_matrix",
]

# renamed in 0.2: ``estimate`` built a transition matrix, not an estimate of R
__getattr__ = deprecated_alias(__name__, {"estimate": ("transition_matrix", transition_matrix)})
