"""Build, load and choose the project's small C kernels (plain C + OpenMP, no torch headers).

A kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``) into a cache
folder and loaded with :mod:`ctypes`. The shared object is keyed by a hash of the source, the
compiler, the flags and the CPU's model name and feature flags, because ``-march=native`` code
must not be loaded on another CPU. Compilation takes well under a second per kernel.

A kernel never breaks an install. Every way it can be missing (the source is not there, no C
compiler, a compile error, a load error, an entry point the compiler could not build, such as a
float16 one without ``_Float16``) is caught once per process and per entry point:

* ``backend="auto"`` then issues one :class:`NativeFallbackWarning` saying why and runs the torch
  path, which gives the same results (the tests compare the two bit for bit);
* ``backend="native"`` raises a RuntimeError naming the cause;
* ``backend="torch"`` never touches the kernel.

:func:`use_native` is that choice, for every kernel of the package.

Concurrent first builds (several processes, one cache) are safe: each compiles into its own
temporary folder inside the cache and renames the result into place, which is atomic, so a
reader sees either no file or a complete one.

Environment:
    KEXUE_CACHE_DIR: the cache folder (default ``$XDG_CACHE_HOME/kexue``, else ``~/.cache/kexue``);
        kernels go in its ``native/`` subfolder.
    KEXUE_NATIVE=0: never compile or load a kernel (the torch paths are used, without a warning).
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
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from kexue._shared import check_choice

__all__ = [
    "BACKENDS",
    "FLAGS",
    "Backend",
    "NativeFallbackWarning",
    "NativeLibrary",
    "NativeUnavailable",
    "cache_dir",
    "use_native",
]

Backend = Literal["auto", "torch", "native"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]


class NativeUnavailable(RuntimeError):
    """A kernel (or one of its entry points) cannot be built or loaded here; the message says why."""


class NativeFallbackWarning(UserWarning):
    """``backend="auto"`` found a kernel unavailable and runs the torch path instead (once per process)."""


def cpu_signature() -> str:
    """The CPU's model name and feature flags (``/proc/cpuinfo``), which ``-march=native`` depends on.

    Returns:
        Those ``/proc/cpuinfo`` lines, or the platform's processor name where there is no such file.
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = {}
    for line in lines:
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU part") and key not in wanted:
            wanted[key] = line.strip()
    return "\n".join(wanted.values()) or (platform.processor() or platform.machine())


def cache_dir() -> Path:
    """The kexue cache folder: ``KEXUE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kexue``, else ``~/.cache/kexue``.

    Returns:
        The folder (not created here).
    """
    if os.environ.get("KEXUE_CACHE_DIR"):
        return Path(os.environ["KEXUE_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or os.path.join(os.path.expanduser("~"), ".cache")) / "kexue"


def _compiler() -> str:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C compiler found (looked for {compiler!r} on PATH; install one or set CC)")
    return compiler


class NativeLibrary:
    """One C source file, compiled once per machine and loaded lazily (thread-safe).

    Args:
        name: short name, used in the cached file's name and in messages.
        source: the ``.c`` file.
        symbols: the entry points (each returns ``int``); one that is absent from the built
            library makes only that entry point unavailable.
        flags: compiler flags (default :data:`FLAGS`).
    """

    def __init__(self, name: str, source: Path, symbols: list[str], flags: list[str] | None = None) -> None:
        self.name, self.source, self.symbols = name, Path(source), list(symbols)
        self.flags = list(flags or FLAGS)
        self._lock = threading.Lock()
        self._library: ctypes.CDLL | None = None
        self._error: str | None = None
        self._warned: set[str] = set()
        self.compile_seconds = 0.0  # spent in this process (0 when the cached object was reused)

    # --- building ---------------------------------------------------------------------------

    def _source_bytes(self) -> bytes:
        try:
            return self.source.read_bytes()
        except OSError as exc:
            raise NativeUnavailable(
                f"the {self.name} kernel's source {self.source} cannot be read ({exc.strerror or exc})"
            ) from exc

    def _compile(self, compiler: str, output: Path) -> None:
        try:
            proc = subprocess.run(
                [compiler, *self.flags, "-o", str(output), str(self.source)],
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
            )
        except OSError as exc:
            raise NativeUnavailable(f"running the C compiler {compiler!r} failed: {exc}") from exc
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise NativeUnavailable(f"compiling the {self.name} kernel with {compiler!r} failed: {first}")

    def cached_path(self, compiler: str) -> Path:
        """Where the shared object for this source, compiler, flags and CPU lives in the cache.

        Args:
            compiler: the C compiler's name or path (part of the key).

        Returns:
            The cached ``.so`` file's path (it may not exist yet).
        """
        key_text = " ".join([compiler, *self.flags]) + "\n" + cpu_signature()
        key = hashlib.sha256(self._source_bytes() + key_text.encode()).hexdigest()[:16]
        return cache_dir() / "native" / f"{self.name}-{key}.so"

    def _compile_into_cache(self, compiler: str, target: Path) -> None:
        """Compile to ``target`` through a temporary file in its folder (atomic rename)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{self.name}-") as tmp:
                built = Path(tmp) / target.name
                self._compile(compiler, built)
                os.replace(built, target)  # atomic: a concurrent build just replaces an identical file
            self.compile_seconds = time.perf_counter() - start
        except OSError as exc:
            raise NativeUnavailable(
                f"the kernel cache {target.parent} is not writable ({exc.strerror or exc}); set KEXUE_CACHE_DIR"
            ) from exc

    def _build(self) -> ctypes.CDLL:
        compiler = _compiler()
        target = self.cached_path(compiler)
        try:
            cached = target.exists()
        except OSError as exc:  # e.g. a cache folder this user may not enter
            raise NativeUnavailable(
                f"the kernel cache {target.parent} cannot be read ({exc.strerror or exc}); set KEXUE_CACHE_DIR"
            ) from exc
        if not cached:
            self._compile_into_cache(compiler, target)
        try:
            library = ctypes.CDLL(str(target))
        except OSError as exc:
            raise NativeUnavailable(f"loading {target} failed: {exc}") from exc
        for symbol in self.symbols:
            function = getattr(library, symbol, None)
            if function is not None:
                function.restype = ctypes.c_int
        return library

    # --- loading ----------------------------------------------------------------------------

    def load(self) -> ctypes.CDLL:
        """The loaded library, building it on first use.

        Returns:
            The loaded library.

        Raises:
            NativeUnavailable: it cannot be built or loaded here (decided once per process), saying why.
        """
        if self._library is not None:  # the per-call path: no lock once loaded
            return self._library
        with self._lock:
            if self._library is None and self._error is None:
                if os.environ.get("KEXUE_NATIVE", "1") == "0":
                    self._error = "disabled by KEXUE_NATIVE=0"
                else:
                    try:
                        self._library = self._build()
                    except NativeUnavailable as exc:
                        self._error = str(exc)
                    except Exception as exc:  # anything else unforeseen still only disables the kernel
                        self._error = f"building the {self.name} kernel failed: {type(exc).__name__}: {exc}"
            if self._library is None:
                raise NativeUnavailable(self._error)
            return self._library

    def function(self, symbol: str) -> Any:
        """The entry point ``symbol`` of the loaded library.

        Args:
            symbol: the entry point's name.

        Returns:
            The ctypes function (returning ``int``; typed ``Any`` as ctypes types its calls loosely).

        Raises:
            NativeUnavailable: the library or this entry point is unavailable, saying why.
        """
        library = self.load()
        function = getattr(library, symbol, None)
        if function is None:
            raise NativeUnavailable(
                f"the {self.name} kernel was built without {symbol} (the compiler lacks what it needs)"
            )
        return function

    def available(self, symbol: str | None = None) -> bool:
        """Whether the library (or its entry point ``symbol``) can be used; builds it if needed, never warns.

        Args:
            symbol: the entry point to check (default: the library as a whole).

        Returns:
            Whether it can be used.
        """
        try:
            self.function(symbol) if symbol else self.load()
        except NativeUnavailable:
            return False
        return True

    def usable(self, symbol: str) -> bool:
        """Like :meth:`available`, but a failure (not ``KEXUE_NATIVE=0``) warns once per entry point.

        Args:
            symbol: the entry point to check.

        Returns:
            Whether it can be used.
        """
        try:
            self.function(symbol)
        except NativeUnavailable as exc:
            if symbol not in self._warned and os.environ.get("KEXUE_NATIVE", "1") != "0":
                self._warned.add(symbol)
                warnings.warn(
                    f"kexue: the {self.name} kernel is unavailable ({exc}); backend='auto' uses the torch path, "
                    "which gives the same results more slowly",
                    NativeFallbackWarning,
                    stacklevel=4,
                )
            return False
        return True

    def fresh_compile_seconds(self) -> float:
        """Compile into a throw-away folder and return the seconds it took (for benchmarks).

        Returns:
            The compile's wall time in seconds.
        """
        compiler = _compiler()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            self._compile(compiler, Path(tmp) / "kernel.so")
            return time.perf_counter() - start


def _compiling() -> bool:
    """Whether torch.compile is tracing (a ctypes call would break its graph)."""
    return torch.compiler.is_compiling()


def use_native(library: NativeLibrary, backend: Backend, symbol: str, unsupported: str | None = None) -> bool:
    """Whether a call runs ``symbol`` of ``library`` (True) or the torch path (False).

    Args:
        library: the kernel.
        backend: ``"auto"`` (the kernel where it applies and works, else torch with one warning
            per process; the torch path while ``torch.compile`` traces, so graphs do not break),
            ``"torch"``, or ``"native"`` (the kernel or an error).
        symbol: the entry point the call needs.
        unsupported: None when the inputs suit the kernel, else why not (e.g. "takes float32 CPU
            tensors only; got float64 on cpu"): ``auto`` then runs torch silently, ``native`` raises.

    Returns:
        True to run the kernel, False to run the torch path.

    Raises:
        ValueError: a backend name not in :data:`BACKENDS`, or ``native`` with unsuitable inputs.
        RuntimeError: ``native`` and the kernel cannot be built or loaded (the message says why).
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "torch" or (backend == "auto" and _compiling()):
        return False
    if backend == "native":
        if unsupported:
            raise ValueError(f"backend='native' {unsupported}; use backend='auto' or 'torch'")
        try:
            library.function(symbol)
        except NativeUnavailable as exc:
            raise RuntimeError(f"backend='native' is unavailable: {exc}; use backend='torch' or 'auto'") from exc
        return True
    return unsupported is None and library.usable(symbol)
