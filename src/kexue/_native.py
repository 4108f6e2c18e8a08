"""Build and load the project's small C kernels (plain C + OpenMP, no torch headers).

A kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``) into a cache
directory and loaded with :mod:`ctypes`. The shared object is keyed by a hash of the source,
the flags and the CPU model, because ``-march=native`` code must not be loaded on another CPU.
Compilation takes well under a second per kernel.

Environment:
    KEXUE_CACHE_DIR: where compiled kernels are kept (default ``~/.cache/kexue``).
    KEXUE_NATIVE=0: never compile or load a kernel (the torch paths are used).
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

__all__ = ["NativeLibrary", "NativeUnavailable"]

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]


class NativeUnavailable(RuntimeError):
    """A kernel could not be built or loaded on this machine (the reason is the message)."""


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


class NativeLibrary:
    """One C source file, compiled once per machine and loaded lazily (thread-safe)."""

    def __init__(self, name: str, source: Path, symbols: list[str], flags: list[str] | None = None) -> None:
        self.name, self.source, self.symbols = name, source, symbols
        self.flags = flags or FLAGS
        self._lock = threading.Lock()
        self._library: ctypes.CDLL | None = None
        self._error: str | None = None
        self.compile_seconds = 0.0  # spent in this process (0 when the cached object was reused)

    def _compile(self, compiler: str, output: Path) -> None:
        proc = subprocess.run([compiler, *self.flags, "-o", str(output), str(self.source)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise NativeUnavailable(f"compiling the {self.name} kernel with {compiler!r} failed: {first}")

    def _build(self) -> ctypes.CDLL:
        compiler = _compiler()
        key = hashlib.sha256(self.source.read_bytes() + " ".join([compiler, *self.flags, _cpu_model()]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"{self.name}-{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                self._compile(compiler, built)
                os.replace(built, target)  # atomic: a concurrent build just replaces an identical file
            self.compile_seconds = time.perf_counter() - start
        try:
            library = ctypes.CDLL(str(target))
        except OSError as exc:
            raise NativeUnavailable(f"loading {target} failed: {exc}") from exc
        for symbol in self.symbols:
            function = getattr(library, symbol, None)
            if function is not None:
                function.restype = ctypes.c_int
        return library

    def load(self) -> ctypes.CDLL:
        """The loaded library, building it on first use; NativeUnavailable says why not."""
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
            if self._library is None:
                raise NativeUnavailable(self._error)
            return self._library

    def available(self) -> bool:
        try:
            self.load()
        except NativeUnavailable:
            return False
        return True

    def fresh_compile_seconds(self) -> float:
        """Compile into a throw-away directory and return the seconds it took (for benchmarks)."""
        compiler = _compiler()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            self._compile(compiler, Path(tmp) / "kernel.so")
            return time.perf_counter() - start
