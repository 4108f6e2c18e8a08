"""The device and precision contract, as data the tests and the docs table share.

Each technique lists its public entry points in ``tests/<technique>/device_cases.py`` as ``ENTRIES``, a list
of :class:`Entry`. ``tests/test_device_matrix.py`` runs every entry in every :class:`Setting` it claims
(dtype x built-or-cast x autocast x device) against the entry's float64 reference, and
``tools/precision_table.py`` writes the measured errors into ``docs/precision.md``.

The bound follows the style guide's two-times rule (flash-attention's): the error of an entry against the
float64 reference must not exceed twice the error of the plain formula evaluated in the same dtype
(``Entry.plain``), with a floor of a few units in the last place of that dtype.

:func:`count_host_syncs` counts what would stall a GPU stream: ``.item()``, ``.tolist()``, ``bool()``/
``int()``/``float()``/``__index__`` of a tensor, ``.cpu()`` (``.numpy()`` needs a CPU tensor, so a CPU-only
NumPy path is not counted), and the operations whose output shape depends
on values (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, ``torch.equal``...). It runs on
CPU tensors, so the tests here find host syncs that only a GPU would feel.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode

Mode = Literal["built", "cast"]
LOW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# functions and methods whose result reaches the host (or whose output size does)
_SYNCING = frozenset(
    {
        "item",
        "tolist",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__len__",
        "cpu",
        "nonzero",
        "argwhere",
        "unique",
        "unique_consecutive",
        "masked_select",
        "equal",
        "allclose",
        "bincount",
        "any_",
        "_local_scalar_dense",
    }
)


class _SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _SYNCING or (name == "__getitem__" and _boolean_index(args)):
            self.calls.append(name if name != "__getitem__" else "boolean-mask indexing")
        if (
            name == "repeat_interleave"
            and "output_size" not in (kwargs or {})
            and isinstance(args[1:2] and args[1], torch.Tensor)
        ):
            self.calls.append("repeat_interleave without output_size")
        return func(*args, **(kwargs or {}))


def _boolean_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@contextmanager
def count_host_syncs() -> Iterator[list[str]]:
    """``with count_host_syncs() as syncs: ...``; afterwards ``syncs`` names every host sync inside."""
    mode = _SyncCounter()
    with mode:
        yield mode.calls


@contextmanager
def cuda_sync_errors(enabled: bool = True) -> Iterator[None]:
    """Make any synchronising CUDA call inside raise (``torch.cuda.set_sync_debug_mode("error")``), then restore."""
    if not enabled:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@dataclass(frozen=True)
class Setting:
    """Where and how an entry point runs: its dtype, whether its module or inputs were built in that dtype
    or built in float32 and cast with ``.to(dtype)``, whether CPU/CUDA autocast to bfloat16 is on, and the device."""

    dtype: torch.dtype
    mode: Mode = "built"
    autocast: bool = False
    device: str = "cpu"

    @property
    def id(self) -> str:
        return f"{DTYPE_NAMES[self.dtype]}-{self.mode}-{'autocast' if self.autocast else 'plain'}-{self.device}"

    def autocast_context(self) -> Any:
        """``torch.autocast`` for the setting's device (bfloat16), or a null context."""
        device_type = "cpu" if self.device == "meta" else self.device
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast)


@dataclass(frozen=True)
class Entry:
    """One public entry point and its contract.

    ``prepare(setting)`` builds the module and inputs on ``setting.device`` in ``setting.dtype`` (built that
    way, or cast, per ``setting.mode``) and returns the hot call: a function of no arguments returning a tensor.
    The matrix runs the call under ``setting.autocast_context()`` and counts host syncs inside it when
    ``no_host_sync``. ``reference(dtype)`` is the float64 reference on the CPU, computed from the same
    inputs as rounded to ``dtype`` (so the error measures the computation, not the rounding of the inputs);
    ``plain(dtype)`` evaluates the same formula naively in ``dtype`` (the two-times rule's yardstick); where
    there is none, ``tolerance`` gives the bound per dtype, with the reason in ``why``.
    """

    name: str
    prepare: Callable[[Setting], Callable[[], torch.Tensor]]
    reference: Callable[[torch.dtype], torch.Tensor]
    accepts: str
    computes: str
    returns: str
    plain: Callable[[torch.dtype], torch.Tensor] | None = None
    tolerance: dict[torch.dtype, float] = field(default_factory=dict)
    why: str = ""
    dtypes: tuple[torch.dtype, ...] = LOW_DTYPES
    modes: tuple[Mode, ...] = ("built", "cast")
    autocast: tuple[bool, ...] = (False, True)
    devices: tuple[str, ...] = ("cpu", "cuda", "meta")
    # the dtype the output must have in a setting (default: the setting's dtype)
    out_dtype: Callable[[Setting], torch.dtype] | None = None
    # under autocast, does the entry compute in bfloat16 (so the bfloat16 bound applies)?
    follows_autocast: bool = False
    no_host_sync: bool = True
    metric: Literal["relative", "absolute"] = "relative"

    def settings(self, devices: tuple[str, ...] = ("cpu", "meta")) -> list[Setting]:
        return [
            Setting(dtype, mode, ac, device)
            for device, dtype, mode, ac in itertools.product(devices, self.dtypes, self.modes, self.autocast)
            if device in self.devices
        ]

    def expected_dtype(self, setting: Setting) -> torch.dtype:
        return self.out_dtype(setting) if self.out_dtype is not None else setting.dtype

    def bound(self, setting: Setting) -> float:
        """The largest error the setting may show against the float64 reference."""
        dtype = setting.dtype
        if setting.autocast and self.follows_autocast and _eps(torch.bfloat16) > _eps(dtype):
            dtype = torch.bfloat16
        if dtype in self.tolerance:
            return self.tolerance[dtype]
        if self.plain is None:
            raise AssertionError(f"{self.name}: no plain {DTYPE_NAMES[dtype]} yardstick and no tolerance for it")
        return max(2.0 * error(self.plain(dtype), self.reference(dtype), self.metric), 4.0 * _eps(dtype))


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def error(out: torch.Tensor, reference: torch.Tensor, metric: str = "relative") -> float:
    """Largest absolute difference from the float64 reference; relative to its largest magnitude by default."""
    diff = (out.detach().to("cpu", torch.float64) - reference.to(torch.float64)).abs().max().item()
    if metric == "absolute":
        return diff
    return diff / max(reference.abs().max().item(), 1e-300)


@dataclass
class Outcome:
    entry: Entry
    setting: Setting
    error: float | None  # None on the meta device
    bound: float | None
    syncs: list[str]


def evaluate(entry: Entry, setting: Setting) -> Outcome:
    """Run ``entry`` in ``setting`` and check its contract: device, dtype, shape, value, host syncs."""
    call = entry.prepare(setting)
    with setting.autocast_context(), count_host_syncs() as syncs:
        out = call()
    reference = entry.reference(setting.dtype)
    where = f"{entry.name} [{setting.id}]"
    assert isinstance(out, torch.Tensor), f"{where}: returned {type(out).__name__}, not a tensor"
    assert out.device.type == setting.device, f"{where}: output on {out.device}, not {setting.device}"
    assert out.dtype == entry.expected_dtype(setting), (
        f"{where}: output {out.dtype}, contract {entry.expected_dtype(setting)}"
    )
    assert tuple(out.shape) == tuple(reference.shape), (
        f"{where}: shape {tuple(out.shape)}, reference {tuple(reference.shape)}"
    )
    if setting.device == "meta":
        return Outcome(entry, setting, None, None, list(syncs))
    measured, bound = error(out, reference, entry.metric), entry.bound(setting)
    return Outcome(entry, setting, measured, bound, list(syncs))


def load_entries(root: Path | None = None) -> list[Entry]:
    """Every ``ENTRIES`` of ``tests/*/device_cases.py``, in technique order."""
    root = root or Path(__file__).resolve().parent
    entries: list[Entry] = []
    for path in sorted(root.glob("*/device_cases.py")):
        spec = importlib.util.spec_from_file_location(f"device_cases_{path.parent.name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries.extend(module.ENTRIES)
    return entries


def build(setting: Setting, make: Callable[[torch.dtype, str], Any]) -> Any:
    """``make(dtype, device)`` in the setting's dtype: directly (``built``), or in float32 (float64 when the
    setting is float32) then cast with ``.to(dtype)`` (``cast``; a module or a tensor, or a tuple of them), as
    ``model.bfloat16()`` or ``model.float()`` would."""
    if setting.mode == "built":
        return make(setting.dtype, setting.device)
    made = make(torch.float64 if setting.dtype == torch.float32 else torch.float32, setting.device)
    if isinstance(made, tuple):
        return tuple(m.to(setting.dtype) if _castable(m) else m for m in made)
    return made.to(setting.dtype)


def _castable(value: Any) -> bool:
    return isinstance(value, torch.nn.Module) or (isinstance(value, torch.Tensor) and value.is_floating_point())
