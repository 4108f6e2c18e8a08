"""kexue: the techniques of Su Jianlin's Scientific Spaces (kexue.fm) articles, at production quality.

Each technique lives in its own subpackage (``kexue.orthogonal``, ...), with a float64
``reference`` module, its fast path, the article's ``claims`` (run by ``kexue reproduce``)
and its ``benchmark`` (run by ``kexue bench``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kexue")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from kexue.orthogonal import apply_orthogonal_map, orthogonal_map

__all__ = ["__version__", "apply_orthogonal_map", "orthogonal_map"]
