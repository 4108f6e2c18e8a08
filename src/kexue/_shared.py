"""Small helpers shared by every technique: input conversion, argument errors, output allocation.

Nothing here knows about any technique. Each helper is used by at least two modules.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "as_float_tensor",
    "as_real_array",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_module",
    "check_number",
    "deprecated_alias",
    "empty_like_fast",
    "num_layers",
    "read_text",
    "restore_type",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

T = TypeVar("T")


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The contents of the UTF-8 text file ``path``.

    Args:
        path: the file.
        what: what the file is, for the error messages (e.g. ``"pairs file"``).

    Returns:
        The file's text.

    Raises:
        FileNotFoundError: no such file (or a folder), naming ``what`` and the path.
        ValueError: the file is not UTF-8, naming the first bad byte and its offset.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None


def check_module(name: str, value: T, *, hf: bool = False) -> T:
    """Return ``value`` if it is a ``torch.nn.Module`` (with a ``.config``, for ``hf=True``).

    Args:
        name: the argument's name, for the error message.
        value: the value to check.
        hf: also require a ``.config`` (a Hugging Face model).

    Returns:
        ``value`` itself.

    Raises:
        TypeError: ``value`` is not such a module, naming ``name`` and the type received.
    """
    if not isinstance(value, torch.nn.Module) or (hf and not hasattr(value, "config")):
        what = "a Hugging Face model (an nn.Module with a .config)" if hf else "a torch.nn.Module"
        raise TypeError(f"{name} must be {what}; got {type(value).__name__}")
    return value


def check_choice(name: str, value: T, choices: Iterable[str]) -> T:
    """Return ``value`` if it is one of ``choices``.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.
        choices: the accepted strings (``typing.get_args`` of the option's ``Literal`` type).

    Returns:
        ``value`` itself (so a ``Literal``-typed argument keeps its type).

    Raises:
        ValueError: ``value`` is not one of ``choices``, naming all three.

    Example:
        >>> check_choice("kind", "symmetric", ("householder", "symmetric"))
        'symmetric'
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not supported; accepted values: {accepted}")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.
        minimum: the smallest accepted value.

    Returns:
        ``value`` itself.

    Raises:
        ValueError: ``value`` is not such an int, naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name}={value!r} must be {what}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.

    Returns:
        ``value`` itself.

    Raises:
        ValueError: ``value`` is not a bool, naming ``name`` and the value.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def check_number(name: str, value: Any, *, above: float | None = None) -> float:
    """Return ``value`` as a float if it is a finite real number (``> above`` when given).

    Args:
        name: the argument's name, for the error message.
        value: the value to check (an int or a float, not a bool).
        above: if given, ``value`` must be strictly greater.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``value`` is not such a number, naming ``name`` and the value.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (above is not None and not value > above)
    ):
        raise ValueError(f"{name}={value!r} must be a finite number" + (f" > {above:g}" if above is not None else ""))
    return float(value)


def as_float_tensor(name: str, value: Any, *, like: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Convert an array-like to a floating torch tensor without copying when possible.

    Args:
        name: the argument's name, used in error messages.
        value: a ``torch.Tensor``, a NumPy array, or anything ``np.asarray`` accepts.
        like: if given, the result is moved to this tensor's device.

    Returns:
        ``(tensor, was_numpy)``: the tensor (integers become float64 for NumPy input and
        ``torch.get_default_dtype()`` for torch input) and whether the caller passed something
        other than a torch tensor (so the result should go back to NumPy).

    Raises:
        TypeError: bool, complex, object or ragged input, or a dtype other than the four float ones.
    """
    was_numpy = not isinstance(value, torch.Tensor)
    if was_numpy:
        try:
            array = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(
                f"{name} must be a torch.Tensor or array-like of numbers; got {type(value).__name__}"
            ) from exc
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers; got NumPy dtype {array.dtype}")
        if array.dtype.kind != "f":
            array = array.astype(np.float64)
        tensor = torch.from_numpy(np.asarray(array, order="C"))  # keeps 0-d (ascontiguousarray would not)
    else:
        tensor = value
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers; got dtype {tensor.dtype}")
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {tensor.dtype}; accepted: float16, bfloat16, float32, float64")
    if like is not None and tensor.device != like.device:
        tensor = tensor.to(like.device)
    return tensor, was_numpy


def as_real_array(name: str, value: Any) -> np.ndarray:
    """``value`` (array-like or tensor of real numbers) as a float64 NumPy array.

    Args:
        name: the argument's name, used in error messages.
        value: a NumPy array, a torch tensor (any device, bfloat16 included) or an array-like.

    Returns:
        The float64 array (no copy when ``value`` already is one).

    Raises:
        TypeError: bool, complex, object or ragged input, naming ``name``.

    Example:
        >>> as_real_array("x", [1, 2]).dtype
        dtype('float64')
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.double() if value.dtype == torch.bfloat16 else value).numpy()  # NumPy has no bfloat16
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be an array-like of real numbers; got {type(value).__name__}") from exc
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


@overload
def restore_type(result: torch.Tensor, to_numpy: Literal[False]) -> torch.Tensor: ...
@overload
def restore_type(result: torch.Tensor, to_numpy: Literal[True]) -> np.ndarray: ...
@overload
def restore_type(result: torch.Tensor, to_numpy: bool) -> Any: ...


def restore_type(result: torch.Tensor, to_numpy: bool) -> torch.Tensor | np.ndarray:
    """Return ``result`` as a NumPy array when the caller passed NumPy input, else unchanged.

    Args:
        result: the computed tensor.
        to_numpy: whether the caller passed NumPy (or array-like) input (from :func:`as_float_tensor`).

    Returns:
        ``result`` on the host as a NumPy array, or ``result`` itself.
    """
    if not to_numpy:
        return result
    return result.detach().cpu().numpy()


@contextmanager
def quieter(logger: str, *, level: int = logging.ERROR) -> Iterator[None]:
    """Raise ``logger``'s level for the block (a third-party notice kexue's own call causes), then restore it.

    Args:
        logger: the logger's name (e.g. ``"transformers"``).
        level: its level inside the block.
    """
    target = logging.getLogger(logger)
    before = target.level
    target.setLevel(level)
    try:
        yield
    finally:
        target.setLevel(before)


def check_process_group() -> None:
    """Raise a clear ValueError unless a default ``torch.distributed`` process group exists."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed use needs an initialised torch.distributed process group; launch with torchrun "
            "and call torch.distributed.init_process_group('gloo' or 'nccl') first"
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise a ValueError if ``tensor`` holds NaN or infinity.

    Args:
        name: the argument's name, for the error message.
        tensor: the tensor to check (reads one value back to the host).

    A finite sum proves every element finite (a NaN or an infinity makes the sum NaN or
    infinite), at a fraction of ``isfinite``'s cost and without a copy (the sum is in the
    tensor's own dtype); only a non-finite sum (possibly an overflow of finite values) or a
    dtype without a sum (float8) needs the element-wise check.

    Raises:
        ValueError: ``tensor`` holds a non-finite value, naming ``name`` and how many.
    """
    if tensor.is_floating_point() and tensor.numel():
        try:
            if bool(torch.isfinite(tensor.sum())):
                return
        except (RuntimeError, TypeError, NotImplementedError):
            pass
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); finite values are required")


# --- output allocation -------------------------------------------------------------------------

_MADV_HUGEPAGE = 14  # linux/mman.h
_HUGEPAGE_MIN_BYTES = 32 * 2**20
_PAGE = 4096


def _load_madvise() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux") or os.environ.get("KEXUE_HUGEPAGES", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def empty_like_fast(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.empty_like(x)`` (contiguous), advising Linux to back large CPU buffers with huge pages.

    Writing a fresh multi-gigabyte CPU tensor is dominated by first-touch page faults
    (one per 4 KiB page). ``madvise(MADV_HUGEPAGE)`` on the new buffer makes the kernel
    fault 2 MiB at a time, which cut the allocation-plus-write time of a 3 GB output
    by about 4x on the development machine. This only hints the kernel: the buffer's
    contents and lifetime are unchanged, and the hint is skipped on other platforms,
    for small buffers, on non-CPU devices, or with ``KEXUE_HUGEPAGES=0``.

    Args:
        x: the tensor whose shape and device the buffer takes.
        dtype: the buffer's dtype (default ``x``'s).

    Returns:
        The uninitialised buffer.
    """
    out = torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and out.device.type == "cpu" and nbytes >= _HUGEPAGE_MIN_BYTES:
        start = (out.data_ptr() + _PAGE - 1) // _PAGE * _PAGE
        end = (out.data_ptr() + nbytes) // _PAGE * _PAGE
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)  # a failed hint is harmless
    return out


def num_layers(config: Any) -> int:
    """Number of Transformer blocks of a HuggingFace config (GPT-2 calls it ``n_layer``).

    Args:
        config: a Hugging Face model config (any architecture; typed ``Any`` as each names its fields).

    Returns:
        The number of blocks.
    """
    return config.n_layer if config.model_type == "gpt2" else config.num_hidden_layers


def deprecated_alias(module: str, aliases: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves renamed names for one more release, with a DeprecationWarning.

    Args:
        module: the module's ``__name__`` (for the warning and the AttributeError).
        aliases: ``{old name: (new name, the object)}``.

    Returns:
        The ``__getattr__`` function to assign in the module.

    Example:
        >>> import warnings
        >>> getattr_ = deprecated_alias("pkg", {"old": ("new", 42)})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     value = getattr_("old")
        >>> value, str(caught[0].message)
        (42, 'pkg.old is deprecated and will be removed in the next release; use pkg.new')
    """

    def __getattr__(name: str) -> Any:
        if name in aliases:
            new, value = aliases[name]
            warnings.warn(
                f"{module}.{name} is deprecated and will be removed in the next release; use {module}.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
