"""Lossless ("function-preserving") growth of HuggingFace Transformers (kexue.fm/archives/8444).

* :func:`widen`: hidden size × k (the article's scheme, or by copying heads), for the families
  in ``SUPPORTED`` (BERT, GPT-2, LLaMA, Qwen2, Mistral, Qwen3, OLMo 2, Phi-3, GPT-NeoX, Gemma
  1-3, OPT, Mixtral, Qwen3-MoE); :func:`widen_ffn`: the feed-forward alone (every expert), any size.
* :func:`deepen`: identity blocks (pre-norm families, ``PRE_NORM``).
* :func:`add_experts`: every expert copied, experts per token multiplied (Mixtral, Qwen3-MoE).
* :class:`~kexue.growth.callback.GrowthCallback`: grow inside one ``Trainer.train()`` run.
* :mod:`kexue.growth.zoo`: a tiny model of every supported family and variant.
* :func:`transfer_adam_state`: carry Adam's moments through any of these.
* Devices: every operator works where the model is (CPU, CUDA, and the meta device for planning
  a growth of a model too large to load) and keeps its dtype.
* :mod:`kexue.growth.parity`: the checks; :mod:`kexue.growth.experiment`: the compute-saving run.
"""

from kexue._optional import require_extra

require_extra("kexue.growth", "transformers")

from kexue.growth.depth import PRE_NORM, deepen
from kexue.growth.moe import MOE, add_experts
from kexue.growth.optim import transfer_adam_state
from kexue.growth.widen import SUPPORTED, widen, widen_ffn

__all__ = ["MOE", "PRE_NORM", "SUPPORTED", "add_experts", "deepen", "transfer_adam_state", "widen", "widen_ffn"]
