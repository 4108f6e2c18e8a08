"""Device helpers shared by the techniques: which devices some objects live on, their random generators,
autocast's device type, and the device a collective needs.

Small and generic on purpose: nothing here knows about a technique.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "RngState",
    "autocast_device_type",
    "autocast_disabled",
    "collective_device",
    "devices_of",
    "load_rng_state_dict",
    "rng_devices",
    "rng_state_dict",
]

# devices that hold no values: nothing random to save, no autocast of their own
_NO_GENERATOR = frozenset({"cpu", "meta"})


def devices_of(*objects: Any) -> list[torch.device]:
    """Every device the tensors of ``objects`` live on, sorted (CPU first, then by type and index).

    Modules contribute their parameters and buffers; tensors themselves; mappings, lists and
    tuples are searched recursively; anything else (strings, callables) contributes nothing.

    Args:
        *objects: modules, tensors, and mappings or sequences of them.

    Returns:
        The distinct devices, sorted.
    """
    found: set[torch.device] = set()
    for obj in objects:
        _collect(obj, found)
    return sorted(found, key=_device_key)


def _collect(obj: Any, found: set[torch.device]) -> None:
    if isinstance(obj, torch.Tensor):
        found.add(obj.device)
    elif isinstance(obj, nn.Module):
        found.update(t.device for t in obj.parameters())
        found.update(t.device for t in obj.buffers())
    elif isinstance(obj, Mapping):
        for value in obj.values():
            _collect(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect(value, found)


def _device_key(device: torch.device) -> tuple[int, str, int]:
    return (device.type != "cpu", device.type, -1 if device.index is None else device.index)


def _indexed(device: torch.device | str | int) -> torch.device:
    """``device`` with its index filled in (``"cuda"`` → ``cuda:<current>``; an int is a CUDA index)."""
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type in _NO_GENERATOR or device.index is not None:
        return device
    module = torch.get_device_module(device.type)
    return torch.device(device.type, module.current_device())


def rng_devices(devices: Iterable[torch.device | str | int]) -> list[torch.device]:
    """The devices among ``devices`` with a random generator of their own (not the CPU, not meta), indexed.

    Args:
        devices: devices, device strings, or CUDA indices.

    Returns:
        The distinct accelerator devices with their index filled in, sorted.
    """
    unique = {_indexed(d) for d in devices}
    return sorted((d for d in unique if d.type not in _NO_GENERATOR), key=_device_key)


class RngState:
    """The CPU generator's state and that of every given accelerator device, captured at construction.

    :meth:`restore` puts every generator back, so that code run after it draws the same random
    numbers (dropout masks) as code run after the capture, on every device.

    Args:
        devices: devices whose generators are saved besides the CPU's (CPU and meta devices in it
            are ignored); e.g. :func:`devices_of` a model and its batch.
    """

    def __init__(self, devices: Iterable[torch.device | str | int] = ()) -> None:
        self.cpu = torch.get_rng_state()
        self.devices = [
            (device, torch.get_device_module(device.type).get_rng_state(device)) for device in rng_devices(devices)
        ]

    def restore(self) -> None:
        """Set the CPU generator and every saved device generator back to the captured states."""
        torch.set_rng_state(self.cpu)
        for device, state in self.devices:
            torch.get_device_module(device.type).set_rng_state(state, device)


def autocast_device_type(devices: Iterable[torch.device | str]) -> str:
    """The ``torch.autocast`` device type for code running on ``devices``.

    The accelerator's type when one is among them (``"cuda"``), else ``"cpu"`` (the meta device
    autocasts as the CPU does).

    Args:
        devices: the devices the code runs on.

    Returns:
        The device type (``"cpu"``, ``"cuda"``, ...).

    Raises:
        ValueError: when ``devices`` span two accelerator types (one autocast cannot cover both).
    """
    types = sorted({torch.device(d).type for d in devices} - _NO_GENERATOR)
    if len(types) > 1:
        raise ValueError(
            f"devices span the accelerator types {types}; one autocast region covers one device type: "
            "run the model on one of them"
        )
    return types[0] if types else "cpu"


def collective_device(group: Any = None) -> torch.device:
    """The device a ``torch.distributed`` collective of ``group``'s backend takes its tensors on.

    NCCL takes CUDA tensors only (on the current device); gloo and the others take CPU tensors.

    Args:
        group: the process group (default: the default group).

    Returns:
        The device its collectives take tensors on.
    """
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _accelerator_rng(device_type: str) -> Sequence[torch.Tensor]:
    module = torch.get_device_module(device_type)
    return [module.get_rng_state(torch.device(device_type, i)) for i in range(module.device_count())]


def rng_state_dict() -> dict[str, Any]:
    """Every generator's state (the CPU's, and each device's of the current accelerator) as tensors.

    The result holds tensors, lists and strings only, so it saves with ``torch.save`` and loads
    with ``torch.load(..., weights_only=True)``.

    Returns:
        ``{"cpu": state}``, plus ``"accelerator"`` (its type) and ``"devices"`` (a state per device) where there is one.
    """
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None:
        state["accelerator"] = accelerator.type
        state["devices"] = list(_accelerator_rng(accelerator.type))
    return state


def load_rng_state_dict(state: Mapping[str, Any] | torch.Tensor) -> list[str]:
    """Restore the generators saved by :func:`rng_state_dict` (a bare tensor: the CPU's only).

    Devices present in ``state`` but not here (resuming on a smaller machine) are skipped.

    Args:
        state: what :func:`rng_state_dict` returned, or the CPU generator's state tensor.

    Returns:
        Notes on what could not be restored (empty when everything was).
    """
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return []
    torch.set_rng_state(state["cpu"])
    saved = list(state.get("devices", []))
    if not saved:
        return []
    device_type = state["accelerator"]
    here = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if here is None or here.type != device_type:
        return [f"the {device_type} generators of {len(saved)} device(s) were saved but there is no {device_type} here"]
    module = torch.get_device_module(device_type)
    count = module.device_count()
    for index, device_state in enumerate(saved[:count]):
        module.set_rng_state(device_state, torch.device(device_type, index))
    return (
        [f"{len(saved) - count} of {len(saved)} saved {device_type} generators have no device here"]
        if len(saved) > count
        else []
    )


def autocast_disabled(*tensors: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """A context that turns autocast off for ``tensors``' device type (a null context where none exists).

    For computations whose precision is the point (a softmax over temperature-scaled similarities,
    rotary angles), which autocast would otherwise run in bfloat16.

    Args:
        *tensors: the tensors whose device type is covered.

    Returns:
        The context manager.
    """
    device_type = autocast_device_type(t.device for t in tensors)
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
