"""A sentence-transformers module that applies a fitted :class:`Whitening`.

Appended to a ``SentenceTransformer``, it replaces ``features["sentence_embedding"]`` by
``(x - βμ) W``; the model then saves and loads with its whitening (``whitening.safetensors``
in the module's folder) through plain ``SentenceTransformer(path, trust_remote_code=True)``
(sentence-transformers 6 asks for that consent before importing a module class it does not
ship; the class is kexue's, nothing is downloaded), as long as kexue is importable.

Example:
    >>> from sentence_transformers import SentenceTransformer
    >>> model = SentenceTransformer(path)
    >>> w = Whitening(256).fit(model.encode(corpus))
    >>> add_whitening(model, w)
    >>> model.save("minilm-whitened")
    >>> SentenceTransformer("minilm-whitened", trust_remote_code=True).encode(["a query"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kexue.whitening.whitening import Whitening

from kexue._optional import require_extra

require_extra("kexue.whitening.st_module (the sentence-transformers module)", "transformers")

__all__ = ["WhiteningModule", "add_whitening"]

_FILE = "whitening.safetensors"


class WhiteningModule(nn.Module):
    """``features["sentence_embedding"] <- (x - βμ) W`` (kernel and bias as float32 buffers)."""

    def __init__(self, whitening: Whitening) -> None:
        super().__init__()
        self.whitening = whitening
        self.register_buffer("kernel", torch.from_numpy(whitening.kernel_).float())
        self.register_buffer("bias", torch.from_numpy(whitening.bias_).float())

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        x = features["sentence_embedding"]
        features["sentence_embedding"] = (x - self.bias.to(x.dtype)) @ self.kernel.to(x.dtype)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.kernel.shape[1])

    get_embedding_dimension = get_sentence_embedding_dimension  # the name in sentence-transformers >= 6

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        Path(output_path).mkdir(parents=True, exist_ok=True)
        self.whitening.save(Path(output_path) / _FILE)

    @classmethod
    def load(cls, model_name_or_path: str = "", *args: Any, subfolder: str = "", **kwargs: Any) -> WhiteningModule:
        folder = Path(model_name_or_path) / subfolder if subfolder else Path(model_name_or_path)
        return cls(Whitening.load(folder / _FILE))


def add_whitening(model, whitening: Whitening, *, normalize: bool = False):
    """Append a :class:`WhiteningModule` (and optionally a ``Normalize``) to a ``SentenceTransformer``; returns it."""
    name = str(len(model._modules))
    model.add_module(name, WhiteningModule(whitening))
    if normalize:
        try:
            from sentence_transformers.sentence_transformer.modules import Normalize
        except ImportError:  # older sentence-transformers
            from sentence_transformers.models import Normalize
        model.add_module(str(len(model._modules)), Normalize())
    return model
