"""Devices beyond the CPU, checked on the CPU: which devices are seen, every device's generator saved and
restored (a fake accelerator stands in for CUDA), autocast's device type, the device of collectives, and
no host synchronisation per micro-batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from device_contract import count_host_syncs
from kexue import _device
from kexue.contrastive import distributed
from kexue.contrastive.cached import _autocast, cached_backward, encoder_devices, replayed_devices
from kexue.contrastive.losses import InfoNCE, info_nce


class FakeAccelerator:
    """A device module with one counter-based generator per index (what ``torch.cuda`` offers the replay)."""

    def __init__(self, count: int = 2) -> None:
        self.counters = dict.fromkeys(range(count), 0)
        self.saved: list[int] = []
        self.restored: list[int] = []

    def draw(self, index: int) -> float:
        self.counters[index] += 1
        return float(self.counters[index])

    def device_count(self) -> int:
        return len(self.counters)

    def current_device(self) -> int:
        return 0

    def get_rng_state(self, device: torch.device) -> torch.Tensor:
        self.saved.append(device.index)
        return torch.tensor([self.counters[device.index]])

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        self.restored.append(device.index)
        self.counters[device.index] = int(state[0])


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeAccelerator:
    fake = FakeAccelerator()
    original = torch.get_device_module
    monkeypatch.setattr(torch, "get_device_module", lambda kind=None: fake if str(kind) == "cuda" else original(kind))
    return fake


def test_devices_of_finds_modules_tensors_and_nested_batches() -> None:
    module = nn.Linear(3, 4, device="meta")
    found = _device.devices_of(module, {"ids": [torch.zeros(2)], "text": "not a tensor"}, "words", 3)
    assert found == [torch.device("cpu"), torch.device("meta")]
    assert _device.rng_devices([*found, torch.device("cuda", 1)]) == [torch.device("cuda", 1)]  # CPU and meta have none


def test_the_replay_saves_and_restores_the_accelerator_generator(fake_cuda: FakeAccelerator) -> None:
    """A plain-function encoder whose noise comes from the device generator (as CUDA dropout does): exact only
    when that generator is replayed; the CPU generator alone is not enough."""
    torch.manual_seed(0)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(9, 5, dtype=torch.float64)

    def encoder(batch: torch.Tensor) -> torch.Tensor:
        return (batch @ weight) * fake_cuda.draw(1)  # noise from cuda:1's generator

    loss_fn = InfoNCE(temperature=0.5, similarity="dot").double()
    fake_cuda.counters[1] = 0
    loss_fn(*[torch.cat([encoder(x[i : i + 4]) for i in range(0, 9, 4)]) for _ in range(2)]).backward()
    reference, weight.grad = weight.grad.clone(), None

    fake_cuda.counters[1] = 0
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=4, devices=["cuda:1"])
    assert torch.allclose(weight.grad, reference, rtol=1e-12, atol=0)
    assert fake_cuda.counters[1] == 6  # the generator continues where the no-grad pass left it
    assert set(fake_cuda.saved) == {1} and len(fake_cuda.restored) == 6 + 1  # each micro-batch, then the end

    weight.grad = None
    fake_cuda.counters[1] = 0
    cached_backward(encoder, [x, x], loss_fn, micro_batch_size=4, devices=["cpu"])  # cuda:1 not replayed
    assert not torch.allclose(weight.grad, reference, rtol=1e-3, atol=0)


def test_devices_come_from_parameters_and_batch_or_every_cuda_device_for_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = nn.Linear(3, 3, device="meta")
    assert encoder_devices([module], [torch.zeros(2, 3)]) == [torch.device("cpu"), torch.device("meta")]
    assert encoder_devices([len], [["a", "b"]]) == []
    assert encoder_devices([len], [["a"]], devices=[0, "cpu"]) == [torch.device("cuda", 0), torch.device("cpu")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # a plain function shows no device: every initialised CUDA generator is replayed
    assert replayed_devices([len], []) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert replayed_devices([module], [torch.device("meta")]) == [torch.device("meta")]


@pytest.mark.parametrize(
    ("devices", "match"), [("cuda", "list of devices"), ([1.5], "torch.device, str or int"), (["gpu7"], "not a device")]
)
def test_devices_argument_errors(devices: object, match: str) -> None:
    x = torch.randn(4, 3)
    with pytest.raises((TypeError, ValueError), match=match):
        cached_backward(nn.Identity(), [x, x], InfoNCE(temperature=0.1), micro_batch_size=2, devices=devices)


def test_autocast_takes_the_device_type_of_the_model() -> None:
    assert _device.autocast_device_type([torch.device("cpu"), torch.device("cuda", 0)]) == "cuda"
    assert _device.autocast_device_type([torch.device("meta")]) == "cpu"
    assert _device.autocast_device_type([]) == "cpu"
    with pytest.raises(ValueError, match="accelerator types"):
        _device.autocast_device_type(["cuda:0", "xpu:0"])
    with pytest.warns(UserWarning):  # noqa: PT030 -- torch's text varies by version; this machine has no CUDA: torch.autocast says so, and keeps the type
        assert _autocast(torch.bfloat16, [torch.device("cuda", 0)]).device == "cuda"
    with pytest.raises(ValueError, match="autocast must be"):
        _autocast(torch.float64, [])


def test_collective_device_follows_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _device.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert _device.collective_device() == torch.device("cpu")


class _Sent(Exception):
    pass


def test_fsdp_counts_and_row_counts_travel_on_the_collective_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.device] = []

    def all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor, group: object = None) -> None:
        seen.extend([tensor.device, *(o.device for o in outputs)])
        raise _Sent

    monkeypatch.setattr(distributed, "collective_device", lambda group=None: torch.device("meta"))
    monkeypatch.setattr(distributed, "_is_fsdp", lambda module: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    with pytest.raises(_Sent):
        distributed.check_fsdp_counts([nn.Linear(2, 2)], 3)
    with pytest.raises(_Sent):
        distributed.gather_rows(torch.zeros(4, 2))
    assert seen and all(device.type == "meta" for device in seen)


def test_rng_state_dict_round_trips_every_device(monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeAccelerator) -> None:
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda", 0))
    torch.manual_seed(1)
    fake_cuda.counters.update({0: 5, 1: 7})
    state = _device.rng_state_dict()
    expected = torch.rand(3)
    fake_cuda.draw(0), fake_cuda.draw(1)
    assert _device.load_rng_state_dict(state) == []
    assert torch.equal(torch.rand(3), expected) and fake_cuda.counters == {0: 5, 1: 7}
    fake_cuda.counters = {0: 0}  # resumed on a machine with one device
    assert "1 of 2" in _device.load_rng_state_dict(state)[0]
    assert fake_cuda.counters == {0: 5}


def test_rng_state_dict_is_plain_tensors_and_the_old_format_loads(tmp_path) -> None:
    torch.manual_seed(2)
    torch.save({"rng": _device.rng_state_dict()}, tmp_path / "state.pt")
    expected = torch.rand(2)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert _device.load_rng_state_dict(state["rng"]) == [] and torch.equal(torch.rand(2), expected)
    torch.manual_seed(3)
    old = torch.get_rng_state()  # checkpoints written before every device was saved: the CPU's alone
    expected = torch.rand(2)
    assert _device.load_rng_state_dict(old) == [] and torch.equal(torch.rand(2), expected)


def _step(micro: int, validate: bool) -> list[str]:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 8))
    x = torch.randn(24, 6)
    with count_host_syncs() as syncs:
        cached_backward(
            encoder,
            [x, x + 0.1],
            InfoNCE(temperature=0.1, validate=validate),
            micro_batch_size=micro,
            validate=validate,
        )
    return list(syncs)


def test_no_host_sync_per_micro_batch() -> None:
    assert _step(4, validate=False) == []  # 12 micro-batches, nothing waits for the device
    # validation syncs a fixed number of times per call, however many micro-batches
    assert _step(12, validate=True) == _step(3, validate=True) != []


def test_info_nce_has_no_host_sync_without_validation() -> None:
    q, d = torch.randn(6, 4), torch.randn(9, 4)
    targets = torch.tensor([0, 2, 1, 4, 3, 5])
    with count_host_syncs() as syncs:
        info_nce(q, d, targets, symmetric=True, validate=False)
    assert syncs == []
