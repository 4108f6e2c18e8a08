"""Lossless ("function-preserving") growth of HuggingFace Transformers (kexue.fm/archives/8444).

* :mod:`kexue.growth.widen`: :func:`widen` by an integer factor (the article's scheme, or by
  copying heads), BERT, GPT-2, LLaMA, Qwen2, Mistral.
"""

from kexue.growth.widen import SUPPORTED, widen, widen_ffn

__all__ = ["SUPPORTED", "widen", "widen_ffn"]
