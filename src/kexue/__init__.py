"""kexue: the techniques of Su Jianlin's Scientific Spaces (kexue.fm) articles, at production quality.

Each technique lives in its own subpackage (``kexue.orthogonal``, ...), with a float64
``reference`` module, its fast path, the article's ``claims`` (run by ``kexue reproduce``)
and its ``benchmark`` (run by ``kexue bench``).

``import kexue`` imports neither torch nor any technique; ``kexue.orthogonal_map`` and
``kexue.apply_orthogonal_map`` load :mod:`kexue.orthogonal` on first use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kexue")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "apply_orthogonal_map", "orthogonal_map"]

_LAZY = {"apply_orthogonal_map": "kexue.orthogonal", "orthogonal_map": "kexue.orthogonal"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kexue' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
