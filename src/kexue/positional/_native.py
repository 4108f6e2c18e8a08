"""Build and call the fused CPU rotary kernel (``_rope_kernel.c``).

The kernel is plain C with OpenMP, compiled on first use with the system C compiler
(``$CC``, else ``cc``) into a cache directory and loaded with :mod:`ctypes`. It does not
include any torch header, so compiling it takes well under a second. The shared object is
keyed by a hash of the source, the flags and the CPU model, because ``-march=native``
code must not be loaded on another CPU.

Environment:
    KEXUE_CACHE_DIR: where compiled kernels are kept (default ``~/.cache/kexue``).
    KEXUE_NATIVE=0: never compile or load the kernel (``backend="auto"`` then uses torch).
    CC: the C compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

__all__ = ["NativeUnavailable", "available", "compile_seconds", "fresh_compile_seconds", "require", "rotate", "supports"]

_SOURCE = Path(__file__).with_name("_rope_kernel.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]
_MAXDIM = 8
_SYMBOLS = {
    torch.float32: "kx_rope_float32",
    torch.float64: "kx_rope_float64",
    torch.bfloat16: "kx_rope_bfloat16",
    torch.float16: "kx_rope_float16",
}


class NativeUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded on this machine (the reason is the message)."""


class _Layout(ctypes.Structure):
    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("shape", ctypes.c_int64 * _MAXDIM),
        ("x_stride", ctypes.c_int64 * _MAXDIM),
        ("out_stride", ctypes.c_int64 * _MAXDIM),
        ("cs_stride", ctypes.c_int64 * _MAXDIM),
    ]


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None
_compile_seconds: float = 0.0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("KEXUE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kexue")
    return Path(root) / "native"


def _compiler() -> str:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C compiler found (looked for {compiler!r}; set CC)")
    return compiler


def _compile(compiler: str, output: Path) -> None:
    """Compile ``_rope_kernel.c`` into the shared object ``output``."""
    proc = subprocess.run([compiler, *_FLAGS, "-o", str(output), str(_SOURCE)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise NativeUnavailable(f"compiling the rotary kernel with {compiler!r} failed: {first}")


def _build() -> ctypes.CDLL:
    global _compile_seconds
    compiler = _compiler()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS, _cpu_model()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"rope-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            _compile(compiler, built)
            os.replace(built, target)  # atomic: a concurrent build just replaces an identical file
        _compile_seconds = time.perf_counter() - start
    try:
        library = ctypes.CDLL(str(target))
    except OSError as exc:
        raise NativeUnavailable(f"loading {target} failed: {exc}") from exc
    for symbol in _SYMBOLS.values():
        function = getattr(library, symbol, None)
        if function is not None:
            function.restype = ctypes.c_int
    return library


def _load() -> ctypes.CDLL:
    global _library, _error
    if _library is not None:  # the per-call path: no lock once loaded
        return _library
    with _lock:
        if _library is None and _error is None:
            if os.environ.get("KEXUE_NATIVE", "1") == "0":
                _error = "disabled by KEXUE_NATIVE=0"
            else:
                try:
                    _library = _build()
                except NativeUnavailable as exc:
                    _error = str(exc)
        if _library is None:
            raise NativeUnavailable(_error)
        return _library


def available() -> bool:
    """Whether the fused CPU kernel is built (building it now if needed) and loadable."""
    try:
        _load()
    except NativeUnavailable:
        return False
    return True


def require() -> None:
    """Build and load the kernel, or raise RuntimeError saying why it is unavailable here."""
    try:
        _load()
    except NativeUnavailable as exc:
        raise RuntimeError(f"backend='native' is unavailable: {exc}; use backend='torch' or 'auto'") from exc


def fresh_compile_seconds() -> float:
    """Compile the kernel into a throw-away directory and return the seconds it took (for benchmarks)."""
    compiler = _compiler()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _compile(compiler, Path(tmp) / "kernel.so")
        return time.perf_counter() - start


def compile_seconds() -> float:
    """Seconds spent compiling in this process (0 when the cached kernel was reused)."""
    return _compile_seconds


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` (CPU, a float dtype, at most 8 leading dimensions); does not build it."""
    return x.device.type == "cpu" and x.dtype in _SYMBOLS and 1 <= x.dim() <= _MAXDIM + 1


def rotate(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    *,
    interleaved: bool,
    transpose: bool,
) -> torch.Tensor:
    """Run the kernel: ``out = R x`` (or ``Rᵀ x``) with one (cos, sin) per pair.

    ``cos``/``sin`` must already be broadcast to ``x.shape[:-1] + (R/2,)`` (stride-0 views are
    fine) with a contiguous last dimension; ``out`` has ``x``'s shape and dtype and a contiguous
    last dimension. ``out`` may be ``x`` itself (in place). Entries past ``R`` are copied
    unless ``out`` is ``x``.
    """
    if cos.stride() != sin.stride() or cos.stride(-1) != 1 or x.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("rotate needs contiguous last dimensions and cos/sin with equal strides")
    library = _load()
    if x.numel() == 0:
        return out
    function = getattr(library, _SYMBOLS[x.dtype], None)
    if function is None:
        raise NativeUnavailable(f"the compiler has no {x.dtype} support")
    lead = x.shape[:-1]
    layout = _Layout()
    layout.ndim = len(lead)
    for k, size in enumerate(lead):
        layout.shape[k] = size
        layout.x_stride[k] = x.stride(k)
        layout.out_stride[k] = out.stride(k)
        layout.cs_stride[k] = cos.stride(k)
    status = function(
        ctypes.c_void_p(x.data_ptr()),
        ctypes.c_void_p(out.data_ptr()),
        ctypes.c_void_p(cos.data_ptr()),
        ctypes.c_void_p(sin.data_ptr()),
        ctypes.byref(layout),
        ctypes.c_int64(x.shape[-1]),
        ctypes.c_int64(2 * cos.shape[-1]),
        ctypes.c_int(int(interleaved)),
        ctypes.c_int(int(transpose)),
        ctypes.c_int(int(out.data_ptr() != x.data_ptr())),
        ctypes.c_int(max(1, torch.get_num_threads())),
    )
    if status != 0:
        raise NativeUnavailable(f"rotary kernel rejected its arguments (status {status})")
    return out
