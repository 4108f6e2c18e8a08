"""Following a ``generate`` run from call to call on the device, without reading ids on the host."""

from __future__ import annotations

import torch

__all__ = ["RowTracker", "extends"]


def extends(ids: torch.Tensor, prev: torch.Tensor | None) -> bool:
    """Whether ``ids`` has the shape of the next step after ``prev`` (same device and batch, one more
    token): decided from shapes only, so no value reaches the host."""
    return (
        prev is not None
        and prev.device == ids.device
        and ids.shape[0] == prev.shape[0]
        and ids.shape[1] == prev.shape[1] + 1
    )


def _position_weights(length: int, device: torch.device) -> torch.Tensor:
    """Pseudo-random int64 weights per position (a splitmix64-style mix of the index, wrapping)."""
    z = torch.arange(length, device=device, dtype=torch.int64) * -7046029254386353131 + 1
    z = (z ^ (z >> 30)) * -4658895280553007687
    return (z ^ (z >> 27)) * -7723592293110705685 | 1


class RowTracker:
    """Which previous row each row of a step continues, found on the device.

    Rows are matched by a 64-bit fingerprint, ``Σ id_t · w_t`` wrapping in int64 with pseudo-random
    position weights ``w_t`` (kept on the device, grown by doubling): a row that continues itself (plain
    decoding, sampling) always matches its own index; after beam search's reordering each row matches its
    parent beam (two different prefixes share a fingerprint with probability about 2^-60). A row extending
    no previous row (a new run of the same shape) keeps its own index: call ``reset()`` on the processor
    first. The previous step's fingerprints are kept, so a step costs one pass over the ids."""

    def __init__(self) -> None:
        self.weights = torch.zeros(0, dtype=torch.int64)
        self.own = torch.zeros(0, dtype=torch.int64)
        self.last: torch.Tensor | None = None  # fingerprints of the previous call's rows

    def _tables(self, length: int, batch: int, device: torch.device) -> None:
        if self.weights.device != device or self.weights.shape[0] < length:
            self.weights = _position_weights(2 * length + 16, device)
        if self.own.device != device or self.own.shape[0] != batch:
            self.own = torch.arange(batch, device=device)

    def start(self, ids: torch.Tensor) -> None:
        """A run starts at ``ids``: remember its fingerprints."""
        self._tables(ids.shape[1], ids.shape[0], ids.device)
        self.last = (ids * self.weights[: ids.shape[1]]).sum(dim=1)

    def sources(self, ids: torch.Tensor) -> torch.Tensor:
        """For the rows of ``ids``, one token longer than the previous call's, the rows they continue."""
        T = ids.shape[1]
        self._tables(T, ids.shape[0], ids.device)
        w = self.weights[:T]
        head = (ids[:, :-1] * w[:-1]).sum(dim=1)
        if self.last is None:
            raise RuntimeError("RowTracker.sources before start: call start(ids) at the first step of a run")
        match = head[:, None] == self.last[None, :]
        self.last = head + ids[:, -1] * w[-1]
        return torch.where(match.diagonal(), self.own, match.int().argmax(dim=1))
