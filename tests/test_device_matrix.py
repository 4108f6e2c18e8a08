"""The device and precision matrix: every public entry point of ``tests/*/device_cases.py`` in every setting it
claims, against its float64 reference under the two-times rule, with no host sync in its hot call.

CPU and meta run everywhere; the CUDA column is ``gpu``-marked (``make gpu-check``)."""

from __future__ import annotations

import pytest
import torch

from device_contract import Entry, Setting, count_host_syncs, cuda_sync_errors, evaluate, load_entries

ENTRIES = load_entries()


def _cases(devices: tuple[str, ...]) -> list:
    cases = []
    for entry in ENTRIES:
        for setting in entry.settings(devices):
            marks = [pytest.mark.gpu] if setting.device == "cuda" else []
            cases.append(pytest.param(entry, setting, id=f"{entry.name}-{setting.id}", marks=marks))
    return cases


def _check(entry: Entry, setting: Setting) -> None:
    outcome = evaluate(entry, setting)
    if entry.no_host_sync:
        assert not outcome.syncs, f"{entry.name} [{setting.id}]: host syncs in the hot call: {outcome.syncs}"
    if outcome.error is not None:
        assert outcome.error <= outcome.bound, (
            f"{entry.name} [{setting.id}]: error {outcome.error:.3g} against float64 > bound {outcome.bound:.3g}"
        )


@pytest.mark.parametrize(("entry", "setting"), _cases(("cpu", "meta")))
def test_contract(entry: Entry, setting: Setting) -> None:
    _check(entry, setting)


@pytest.mark.parametrize(("entry", "setting"), _cases(("cuda",)))
def test_contract_cuda(entry: Entry, setting: Setting) -> None:
    with cuda_sync_errors(entry.no_host_sync):
        _check(entry, setting)


def test_matrix_covers_every_technique() -> None:
    """Every technique contributes entries (a missing device_cases.py would silently shrink the matrix)."""
    techniques = {entry.name.split(".")[1] for entry in ENTRIES}
    assert techniques >= {"positional", "contrastive", "whitening", "growth", "mitchell", "repetition", "orthogonal"}


def test_host_sync_counter_sees_syncs() -> None:
    """The counter the matrix relies on catches each kind of host sync (and nothing in plain arithmetic)."""
    x = torch.arange(4.0)
    with count_host_syncs() as syncs:
        _ = x * 2 + 1
    assert syncs == []
    with count_host_syncs() as syncs:
        x[0].item(), x.tolist(), bool(x[1]), int(x[1]), float(x[1]), x.nonzero(), x[x > 1], x.cpu()
    assert syncs == ["item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "boolean-mask indexing", "cpu"]
