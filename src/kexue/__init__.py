"""kexue: the techniques of Su Jianlin's Scientific Spaces (kexue.fm) articles, at production quality.

Each technique lives in its own subpackage, with a float64 ``reference`` module, its fast path,
the article's ``claims`` (run by ``kexue reproduce``) and its ``benchmark`` (run by ``kexue bench``):
:mod:`kexue.orthogonal`, :mod:`kexue.positional`, :mod:`kexue.contrastive`, :mod:`kexue.whitening`,
:mod:`kexue.growth`, :mod:`kexue.mitchell` and :mod:`kexue.repetition`.

``import kexue`` imports neither torch nor any technique: each subpackage loads on first use, so
``kexue.mitchell.matmul`` works after a bare ``import kexue``. A subpackage that needs an optional
extra (``growth`` and ``whitening``) raises an ImportError naming the extra when it is missing.

Example:
    >>> import kexue
    >>> kexue.__version__ != ""
    True
    >>> "mitchell" in dir(kexue) and "mitchell" in kexue.__all__
    True
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: at run time each subpackage loads on first use
    from kexue import contrastive, growth, mitchell, orthogonal, positional, repetition, whitening

try:
    __version__ = version("kexue")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# the techniques' subpackages, loaded on first attribute access
_SUBPACKAGES = ("contrastive", "growth", "mitchell", "orthogonal", "positional", "repetition", "whitening")

# renamed names served for one more release: old name -> (the new name under kexue, its module, its name there)
_DEPRECATED = {
    "apply_orthogonal_map": ("orthogonal.apply_orthogonal_map", "kexue.orthogonal", "apply_orthogonal_map"),
    "orthogonal_map": ("orthogonal.orthogonal_map", "kexue.orthogonal", "orthogonal_map"),
}

__all__ = [
    "__version__",
    "contrastive",
    "growth",
    "mitchell",
    "orthogonal",
    "positional",
    "repetition",
    "whitening",
]


def __getattr__(name: str) -> ModuleType | Any:
    """Load a technique's subpackage on first use; serve a deprecated name with a DeprecationWarning.

    Args:
        name: the attribute asked for.

    Returns:
        The subpackage ``kexue.<name>``, or the object a deprecated name stands for.

    Raises:
        AttributeError: ``name`` is neither a subpackage nor a deprecated name.
    """
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kexue.{name}")
    if name in _DEPRECATED:
        new, module, attribute = _DEPRECATED[name]
        warnings.warn(
            f"kexue.{name} is deprecated and will be removed in the next release; use kexue.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'kexue' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and its technique subpackages (loaded or not)."""
    return sorted({*globals(), *_SUBPACKAGES})
