"""Output helpers: atomic writes, a checked output directory, and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import torch

from kexue import __version__

__all__ = ["atomic_write", "machine_info", "prepare_out_dir", "publish", "write_json"]


def prepare_out_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and prove it is writable, before any work is done.

    Args:
        path: the output folder (the CLI's ``--out``).

    Returns:
        The folder.

    Raises:
        ValueError: naming the directory and the reason when it cannot be used.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".kexue-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"--out {str(out)!r} is not a writable directory: {reason}") from None
    return out


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Rename the finished file ``tmp`` to ``path`` (atomic), with the mode a plain write gets.

    Temporary files are created private (0600); a plain ``open(path, "w")`` gives ``0666 & ~umask``
    (usually 0644), which is what a model folder shared with a serving account needs.

    Args:
        tmp: the finished temporary file.
        path: its final name.

    Returns:
        ``path``.
    """
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return Path(path)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    Readers never see a half-written file, and a failure leaves any previous file intact.

    Args:
        path: the file to write.
        data: its contents (text is written as UTF-8).

    Returns:
        ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _write_and_sync(fd, data)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_and_sync(fd: int, data: str | bytes) -> None:
    """Write ``data`` to the open file ``fd`` (text as UTF-8), flush it to disk and close it."""
    if isinstance(data, bytes):
        with os.fdopen(fd, "wb") as binary:
            binary.write(data)
            binary.flush()
            os.fsync(binary.fileno())
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as text:
            text.write(data)
            text.flush()
            os.fsync(text.fileno())


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Atomically write ``payload`` as indented, strict JSON (no NaN/inf literals).

    Args:
        path: the file to write.
        payload: JSON-able data.

    Returns:
        ``path``.

    Raises:
        ValueError: ``payload`` holds NaN or infinity.
    """
    return atomic_write(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _transparent_hugepages() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def machine_info(*, device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to interpret timings: hardware, libraries, threads, settings.

    Args:
        device: the torch device the run used (a CUDA one adds the GPU's name and CUDA's version).

    Returns:
        A JSON-able mapping.
    """
    info: dict[str, Any] = {
        "kexue_version": __version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "transparent_hugepages": _transparent_hugepages(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "KEXUE_HUGEPAGES": os.environ.get("KEXUE_HUGEPAGES", "1"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
