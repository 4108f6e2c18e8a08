"""Whitening inside a ``SentenceTransformer``, as sentence-transformers' own ``Dense`` module.

A fitted whitening is an affine map, ``x ↦ (x − βμ) W = x W − βμ W``: :func:`add_whitening`
appends it to a model as a built-in ``Dense`` layer (weight ``Wᵀ``, bias ``−βμW``, identity
activation), followed by a ``Normalize`` where the model ended with one. The whitened model is
then an ordinary sentence-transformers pipeline: ``model.save(path)`` writes it, and
``SentenceTransformer(path)`` loads it anywhere sentence-transformers is installed, without
``trust_remote_code`` and without kexue.

The whitening must have been fitted on what the pipeline outputs where it is appended (e.g.
``model.encode(corpus)``: after the model's own ``Normalize``, if it has one).

:class:`WhiteningModule` (kexue's own module class, which needs kexue and
``trust_remote_code=True`` to load) is kept only so that models saved by kexue 0.1 still load.
It offers nothing the ``Dense`` layer does not: the fitted estimator itself (eigenvalues, raw
statistics, for refitting with other ``n_components``/``beta``/``gamma``) is saved with
:meth:`Whitening.save`, next to the model if you want it there.

Example (needs the ``nlp`` extra and a model, so it is not run as a doctest)::

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path)
    w = Whitening(n_components=256).fit(model.encode(corpus))
    add_whitening(model, w)
    model.save("minilm-whitened")
    SentenceTransformer("minilm-whitened").encode(["a query"])  # no trust_remote_code
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from kexue._optional import require_extra
from kexue.whitening.layer import _HoldsMap, whiten
from kexue.whitening.whitening import Whitening

require_extra("kexue.whitening.st_module (the sentence-transformers module)", "transformers")

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["WhiteningModule", "add_whitening", "whitening_dense"]

_FILE = "whitening.safetensors"
ModelT = TypeVar("ModelT", bound="SentenceTransformer")


class WhiteningModule(_HoldsMap):
    """``features["sentence_embedding"] <- (x - βμ) W``, the map kept in float64 (float32 on MPS).

    Kept so that models saved by kexue 0.1 load (with ``trust_remote_code=True``); new models get
    a built-in ``Dense`` (:func:`add_whitening`). The kernel and bias buffers keep their precision
    through ``model.bfloat16()``, ``.half()``, ``.to(dtype)`` and ``.double()`` and follow the model
    to its device; ``forward`` computes in float32 (float64 for float64 embeddings) with autocast
    off and returns the embeddings' dtype, without reading anything back to the host.

    Args:
        whitening: a fitted :class:`Whitening` of the model's embedding width.
    """

    def __init__(self, whitening: Whitening) -> None:
        super().__init__()
        self.whitening = whitening
        self._register_map(whitening)

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        """Whiten ``features["sentence_embedding"]`` in place of the raw embedding.

        Args:
            features: sentence-transformers' features dict.

        Returns:
            The same dict, its ``"sentence_embedding"`` whitened.
        """
        features["sentence_embedding"] = whiten(features["sentence_embedding"], self.kernel, self.bias)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        """The whitened width ``k``.

        Returns:
            ``k``.
        """
        return int(self.kernel.shape[1])

    get_embedding_dimension = get_sentence_embedding_dimension  # the name in sentence-transformers >= 6

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Write the whitening into ``output_path`` (sentence-transformers' module protocol).

        Args:
            output_path: the module's folder.
            *args: ignored (sentence-transformers' signature).
            **kwargs: ignored (sentence-transformers' signature).
        """
        Path(output_path).mkdir(parents=True, exist_ok=True)
        self.whitening.save(Path(output_path) / _FILE)

    @classmethod
    def load(cls, model_name_or_path: str = "", *args: Any, subfolder: str = "", **kwargs: Any) -> WhiteningModule:
        """Read the module saved in a folder (sentence-transformers' module protocol).

        Args:
            model_name_or_path: the model's folder.
            *args: ignored (sentence-transformers' signature).
            subfolder: the module's folder inside it.
            **kwargs: ignored (sentence-transformers' signature).

        Returns:
            The module.
        """
        folder = Path(model_name_or_path) / subfolder if subfolder else Path(model_name_or_path)
        return cls(Whitening.load(folder / _FILE))


def _modules() -> tuple[type[nn.Module], type[nn.Module]]:
    """sentence-transformers' ``Dense`` and ``Normalize`` classes (their module moved in version 6)."""
    try:
        # optional extra: nlp (sentence-transformers >= 6)
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize

        return Dense, Normalize
    except ImportError:
        # optional extra: nlp (sentence-transformers < 6 keeps them in sentence_transformers.models; by name,
        # so that the type check of the installed version >= 6, which has no such module, still passes)
        legacy = importlib.import_module("sentence_transformers.models")
        return legacy.Dense, legacy.Normalize


def whitening_dense(whitening: Whitening) -> nn.Module:
    """sentence-transformers' ``Dense`` computing ``(x − βμ) W``: weight ``Wᵀ``, bias ``−βμW``
    (computed in float64, stored in float32), identity activation.

    Args:
        whitening: a fitted :class:`Whitening`.

    Returns:
        The ``Dense`` module, ``d`` inputs to ``k`` outputs.
    """
    Dense, _ = _modules()
    kernel = torch.from_numpy(whitening.kernel_)  # (d, k) float64
    bias = -(torch.from_numpy(whitening.bias_) @ kernel)  # (k,)
    d, k = kernel.shape
    return Dense(
        d,
        k,
        bias=True,
        activation_function=nn.Identity(),
        init_weight=kernel.T.contiguous().float(),
        init_bias=bias.float(),
    )


def add_whitening(model: ModelT, whitening: Whitening, *, normalize: bool | None = None) -> ModelT:
    """Append the whitening to a ``SentenceTransformer`` as a built-in ``Dense``; returns the model.

    Args:
        model: the model whose outputs ``whitening`` was fitted on.
        whitening: a fitted :class:`Whitening` of the model's embedding width.
        normalize: append a ``Normalize`` after it; default: when the model ends with one (its
            users expect unit vectors; whitened cosines are unchanged by it).

    Returns:
        ``model`` itself, with the ``Dense`` (and ``Normalize``) appended.

    Raises:
        ValueError: the whitening's input width differs from the model's embedding width.
    """
    _, Normalize = _modules()
    width = whitening.kernel_.shape[0]
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    if dimension() not in (None, width):
        raise ValueError(
            f"the whitening was fitted on {width}-d vectors but the model outputs {dimension()}-d embeddings"
        )
    if normalize is None:
        normalize = len(model._modules) > 0 and isinstance(model[len(model._modules) - 1], Normalize)
    model.add_module(str(len(model._modules)), whitening_dense(whitening))
    if normalize:
        model.add_module(str(len(model._modules)), Normalize())
    return model
