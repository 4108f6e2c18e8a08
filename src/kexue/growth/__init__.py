"""Lossless ("function-preserving") growth of HuggingFace Transformers (kexue.fm/archives/8444).

* :func:`widen`: hidden size × k (the article's scheme, or by copying heads), BERT, GPT-2,
  LLaMA, Qwen2, Mistral; :func:`widen_ffn`: the feed-forward alone, any size.
* :func:`deepen`: identity blocks (pre-norm families).
* :func:`transfer_adam_state`: carry Adam's moments through any of these.
* :mod:`kexue.growth.parity`: the checks; :mod:`kexue.growth.experiment`: the compute-saving run.
"""

from kexue._optional import require_extra

require_extra("kexue.growth", "transformers")

from kexue.growth.depth import PRE_NORM, deepen
from kexue.growth.optim import transfer_adam_state
from kexue.growth.widen import SUPPORTED, widen, widen_ffn

__all__ = ["PRE_NORM", "SUPPORTED", "deepen", "transfer_adam_state", "widen", "widen_ffn"]
