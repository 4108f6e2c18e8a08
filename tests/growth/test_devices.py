"""Growth wherever users run it: the meta device (planning a model too large to load), bfloat16/float16
models, tensors created on the parameters' device, and (gpu-marked) CUDA with Adam's state carried."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from device_contract import cuda_sync_errors
from kexue.growth import add_experts, deepen, transfer_adam_state, widen, widen_ffn
from kexue.growth._build import zero_sum_noise
from kexue.growth.callback import GrowthCallback
from kexue.growth.optim import GrowthMap, parameter_sources
from kexue.growth.parity import float64_norms, max_logit_difference
from kexue.growth.zoo import randomized, tiny_model

IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
OPERATORS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "widen": lambda m: widen(m, 2, noise=0.5),
    "widen_ffn": lambda m: widen_ffn(m, 37, noise=0.5),
    "deepen": lambda m: deepen(m, [-1, 1]),
    "add_experts": lambda m: add_experts(m, 2, noise=0.5),
}
# families x operators: dense decoders, fused projections, GPT-2's Conv1D, Gemma's norms, OPT, the MoEs
CASES = [("llama-gqa-untied", op) for op in ("widen", "widen_ffn", "deepen")] + [
    ("phi3-fused-partial", "widen"),
    ("phi3-fused-partial", "widen_ffn"),
    ("gpt2", "widen"),
    ("gpt2", "deepen"),
    ("gemma-tied", "widen"),
    ("opt-pre-ln", "widen"),
    ("bert-mlm", "widen_ffn"),
    ("mixtral", "widen_ffn"),
    ("mixtral", "add_experts"),
    ("qwen3-moe-dense-layer", "deepen"),
]


def _on_meta(name: str, how: str) -> nn.Module:
    """A zoo model built without weights: under ``torch.device("meta")`` (buffers meta too) or accelerate's
    ``init_empty_weights`` (parameters meta, buffers real on the CPU)."""
    if how == "device":
        with torch.device("meta"):
            return tiny_model(name)
    from accelerate import init_empty_weights

    with init_empty_weights():
        return tiny_model(name)


def _signature(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters()}


class _DeviceMixing(TorchFunctionMode):
    """Records every torch call whose tensor arguments include a CPU tensor (other than a 0-d scalar,
    which torch broadcasts as a number) next to a tensor on another device: the calls that would
    fail on the meta device or silently copy (or fail) on a GPU. ``.to``/``copy_`` (explicit moves) pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in _flat((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        other = [t for t in tensors if t.device.type != "cpu"]
        if cpu and other and name not in ("to", "copy_"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    else:
        yield value


@contextmanager
def _no_device_mixing() -> Iterator[list[str]]:
    mode = _DeviceMixing()
    with mode:
        yield mode.calls


@pytest.mark.parametrize("how", ["device", "init_empty_weights"])
@pytest.mark.parametrize(("name", "op"), CASES)
def test_meta_growth_has_the_shapes_dtypes_and_config_of_real_growth(name: str, op: str, how: str) -> None:
    real = OPERATORS[op](tiny_model(name))
    small = _on_meta(name, how)
    with _no_device_mixing() as mixing:
        planned = OPERATORS[op](small)
    assert mixing == []
    assert _signature(planned) == _signature(real)
    assert all(p.is_meta for p in planned.parameters())
    assert planned.config.to_dict() == real.config.to_dict()
    # buffers follow the small model's: meta under torch.device("meta"), real under init_empty_weights
    assert {b.device.type for b in planned.buffers()} <= {b.device.type for b in small.buffers()}


def test_device_mixing_detector_sees_a_cpu_index_on_meta() -> None:
    """The old widen_ffn indexed meta weights with a CPU index: the mode above records exactly that."""
    w = torch.empty(4, 3, device="meta")
    with _no_device_mixing() as mixing:
        _ = w + torch.ones(3, device="meta")
        _ = w * torch.tensor(2.0)  # a 0-d CPU tensor is a number to torch
        _ = w[torch.arange(4) % 2]
    assert mixing == ["__getitem__"]


def test_meta_growth_then_loading_real_weights_computes_the_small_function() -> None:
    """Plan on meta, materialise, load the real grown weights: the same function as the small model."""
    small = randomized(tiny_model("llama-gqa-untied"))
    grown = widen(_on_meta("llama-gqa-untied", "init_empty_weights"), 2)
    grown.load_state_dict(widen(small, 2).state_dict(), assign=True)
    with float64_norms():
        assert max_logit_difference(small, grown.eval(), {"input_ids": IDS}) <= 1e-10


def test_zero_sum_noise_skips_meta_and_keeps_the_cpu_draw() -> None:
    """On meta the weight comes back as it is (no values to perturb); on the CPU the noise is the
    seeded float64 draw, bit for bit the formula of earlier versions."""
    index = torch.arange(6) // 2
    meta = torch.empty(5, 6, device="meta")
    assert zero_sum_noise(meta, index, 0.5, torch.Generator().manual_seed(0)) is meta
    w = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    z = torch.randn(w.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.zeros(5, 3, dtype=torch.float64).index_add_(-1, index, z) / 2
    expected = w + (0.5 * float(w.double().std()) * (z - mean[..., index])).to(w.dtype)
    assert torch.equal(zero_sum_noise(w, index, 0.5, torch.Generator().manual_seed(0)), expected)


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("llama-gqa-untied", "deepen"),
        ("gpt2", "widen"),
        ("mixtral", "add_experts"),
        ("phi3-fused-partial", "widen_ffn"),
    ],
)
def test_parameter_sources_on_meta_equal_the_value_probe(name: str, op: str) -> None:
    small = randomized(tiny_model(name))
    grow = {**OPERATORS, "widen_ffn": lambda m: widen_ffn(m, 37)}[op]
    gmap = GrowthMap.probe(small, grow)
    expected = {n: gmap.source(n) for n in gmap.scale}
    assert parameter_sources(_on_meta(name, "device"), grow) == expected
    if op == "deepen":
        assert None in expected.values()  # inserted layers' zeroed projections are fresh


def test_value_steps_refuse_the_meta_device() -> None:
    small = _on_meta("llama-gqa-untied", "device")
    with pytest.raises(ValueError, match="meta device"):
        GrowthMap.probe(small, lambda m: widen(m, 2))
    opt = torch.optim.AdamW(small.parameters())
    with pytest.raises(ValueError, match="meta device"):
        transfer_adam_state(opt, small, opt, small, lambda m: widen(m, 2))


def _decay_groups(model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])


def _group_names(model: nn.Module, groups: list[list[nn.Parameter]]) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group} for group in groups]


@pytest.mark.parametrize("grow", [lambda m: deepen(m, [0]), lambda m: widen(m, 2)])
def test_callback_plans_on_meta_as_on_the_cpu(grow) -> None:
    callback = GrowthCallback(grow, at_step=1)
    real = randomized(tiny_model("llama-gqa-untied"))
    opt = _decay_groups(real)
    real(input_ids=IDS, labels=IDS).loss.backward()
    opt.step()
    expected = callback.plan(real, opt)
    meta = _on_meta("llama-gqa-untied", "init_empty_weights")
    meta_opt = _decay_groups(meta)
    plan = callback.plan(meta, meta_opt)
    assert all(p.is_meta for p in plan.grown.parameters())
    assert {n: shape for n, (shape, _) in _signature(plan.grown).items()} == {
        n: shape for n, (shape, _) in _signature(expected.grown).items()
    }
    assert _group_names(plan.grown, plan.groups) == _group_names(expected.grown, expected.groups)
    assert plan.state == {} and len(expected.state) == sum(len(g) for g in expected.groups)
    callback.grow_in_place(meta, meta_opt)  # the whole step runs on meta: model and groups replaced
    assert meta.config.to_dict() == plan.grown.config.to_dict()
    assert [len(g["params"]) for g in meta_opt.param_groups] == [len(g) for g in plan.groups]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["llama-gqa-untied", "gpt2", "opt-pre-ln", "bert-mlm"])
def test_low_precision_growth_equals_float32_growth_cast(name: str, dtype: torch.dtype) -> None:
    """Every map rounds once (one copy, or one scaling by a constant, computed in float32 and rounded
    as a cast would): growing the cast model is bit for bit growing its float32 copy, then casting."""
    low = randomized(tiny_model(name), dtype=torch.float32).to(dtype)
    high = copy.deepcopy(low).float()
    ops = [lambda m: widen(m, 2), lambda m: widen(m, 3), lambda m: widen_ffn(m, 70)]
    ops += [] if name == "bert-mlm" else [lambda m: deepen(m, [0])]
    for grow in ops:
        a, b = grow(low).state_dict(), grow(high).state_dict()
        for n in a:
            assert a[n].dtype == (dtype if b[n].is_floating_point() else b[n].dtype), n
            assert torch.equal(a[n], b[n].to(a[n].dtype)), n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_two_roundings_stay_within_one_unit_in_the_last_place(dtype: torch.dtype) -> None:
    """Weights scaled twice (Qwen3's q/k projections: the head rule, then 1/√k for its q/k norms) round
    twice: within one ulp of growing in float32 then casting. Gemma's affine norm rule
    ``w' = s·rep(w) + (s − 1)`` rounds in absolute terms (within one ulp of 1)."""
    eps = torch.finfo(dtype).eps
    for name, absolute in (("qwen3-qk-norm", 0.0), ("gemma-tied", eps)):
        low = randomized(tiny_model(name), dtype=torch.float32).to(dtype)
        a, b = widen(low, 2).state_dict(), widen(copy.deepcopy(low).float(), 2).state_dict()
        for n in a:
            exact = b[n].to(dtype).float()
            assert a[n].dtype == dtype
            assert ((a[n].float() - exact).abs() <= eps * exact.abs() + absolute).all(), n


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def _grow_and_continue(device: str) -> nn.Module:
    """Three AdamW steps, widen with noise, carry Adam's state, three more steps: on ``device``."""
    grow = lambda m: widen(m, 2, noise=0.5, seed=3)  # noqa: E731
    batches = [b.to(device) for b in torch.randint(0, 64, (6, 4, 10), generator=torch.Generator().manual_seed(2))]
    small = randomized(tiny_model("llama-gqa-untied")).train().to(device)
    opt = torch.optim.AdamW(small.parameters(), lr=1e-2)
    with float64_norms():  # HF's RMSNorm would compute in float32: CPU and GPU roundings would differ
        _train(small, opt, batches[:3])
        with _no_device_mixing() as mixing:
            large = grow(small)
            large_opt = torch.optim.AdamW(large.parameters(), lr=1e-2)
            transfer_adam_state(opt, small, large_opt, large, grow)
        assert mixing == [], mixing
        assert {p.device.type for p in large.parameters()} == {device}
        assert all(s["exp_avg"].device.type == device for s in large_opt.state.values())
        with cuda_sync_errors(device == "cuda"), torch.no_grad():
            large(input_ids=batches[3])  # the grown model's forward: no host sync of growth's making
        _train(large, large_opt, batches[3:])
    return large


@pytest.mark.gpu
def test_growth_and_adam_transfer_on_cuda_match_the_cpu() -> None:
    """float64 models: the CUDA run (same seeded noise, drawn on the CPU) tracks the CPU run."""
    cpu, cuda = _grow_and_continue("cpu"), _grow_and_continue("cuda")
    for (name, p), (_, q) in zip(cpu.named_parameters(), cuda.named_parameters(), strict=True):
        assert torch.allclose(p, q.cpu(), rtol=0, atol=1e-8), name


@pytest.mark.gpu
def test_meta_planned_growth_materialises_on_cuda() -> None:
    """init_empty_weights -> widen on meta -> to_empty(cuda) -> load the real grown weights: the
    small model's function on the GPU (non-persistent RoPE buffers rebuilt from the config)."""
    small = randomized(tiny_model("llama-gqa-untied"))
    planned = widen(_on_meta("llama-gqa-untied", "init_empty_weights"), 2).to_empty(device="cuda").double()
    planned.load_state_dict(widen(small, 2).state_dict())
    planned.model.rotary_emb = type(planned.model.rotary_emb)(planned.config).cuda()  # to_empty emptied its buffers
    planned.eval()
    with torch.no_grad(), float64_norms():
        expected = small(input_ids=IDS).logits
        got = planned(input_ids=IDS.cuda()).logits
    assert got.device.type == "cuda"
    # RoPE's inverse frequencies are float32 (computed on the GPU here): parity to their rounding
    assert float((got.cpu() - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
