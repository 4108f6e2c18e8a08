"""Mitchell arithmetic wherever it runs: no host sync in the hot paths, every value handled by the kernel,
autocast followed as ``nn.Linear`` follows it, and (``gpu``) CUDA bit-identical to the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from device_contract import count_host_syncs, cuda_sync_errors
from kexue import mitchell
from kexue.mitchell import _native, mitchellize
from kexue.mitchell import reference as ref
from kexue.mitchell.nn import MitchellConv2d, MitchellLinear
from kexue.mitchell.transformer import MitchellGatedMLP, MitchellLayerNorm, MitchellRMSNorm

native = pytest.mark.skipif(not _native.available(), reason="no C compiler: the native kernel is not built")


def _special(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Operands with every kind of value: normal, zero, subnormal, huge, inf, NaN."""
    tiny = torch.finfo(dtype).tiny
    a = torch.tensor([[1.5, -0.0, tiny / 4, 3e4, float("inf"), 2.0], [0.0, 7.0, -1.25, float("nan"), 0.5, tiny]])
    b = torch.tensor([[0.75, 2.0, -3.0, 1e4, 0.0, tiny / 2], [float("-inf"), 1.0, 0.0, 5.0, 4.0, -2.5]])
    return a.to(dtype), b.to(dtype)


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit-identical, NaN equal to NaN."""
    return bool(((x == y) & (torch.signbit(x) == torch.signbit(y)) | (torch.isnan(x) & torch.isnan(y))).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_element_wise_ops_do_not_sync(dtype: torch.dtype, backend: str) -> None:
    a, b = _special(dtype)
    with count_host_syncs() as syncs:
        for correction in (None, "constant", "piecewise", "lmul"):
            mitchell.mul(a, b, correction=correction, backend=backend)
        mitchell.div(a, b), mitchell.log2(a.abs()), mitchell.exp2(b)
    assert syncs == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matrix_products_do_not_sync_even_with_non_finite_inputs(dtype: torch.dtype, backend: str) -> None:
    a, b = _special(dtype)
    with count_host_syncs() as syncs:
        mitchell.matmul(a, b.T.contiguous(), backend=backend)
        mitchell.bmm(a[None], b.T[None].contiguous(), correction="piecewise", backend=backend)
    assert syncs == []


@native
@pytest.mark.parametrize("correction", [None, "constant", "piecewise"])
def test_the_kernel_takes_infinities_and_nan_bit_for_bit(correction: str | None) -> None:
    """The kernel used to refuse non-finite inputs (a host-side check); it now computes them, zeros of a
    against a row of b holding inf or NaN included (0 ⊗ inf is NaN: that zero cannot be skipped)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 40, generator=g), torch.randn(40, 70, generator=g)
    a[:, 3] = 0.0
    b[3, 5], b[7, 9], a[2, 7], a[4, 11] = float("inf"), float("nan"), float("-inf"), float("nan")
    for x, y in ((a, b), (a.repeat(2, 2), b.repeat(2, 2)[:, :130])):  # small (generic path) and tiled
        got = mitchell.matmul(x, y, backend="native", correction=correction)
        assert _same(got, mitchell.matmul(x, y, backend="torch", correction=correction))
        assert torch.isnan(got[:, 5]).all() and torch.isnan(got[4]).all()
        batch = mitchell.bmm(x[None].expand(2, -1, -1), y[None], backend="native", correction=correction)
        assert _same(batch[1], got)


def test_layers_norms_gates_and_attention_do_not_sync() -> None:
    torch.manual_seed(0)
    linear, conv = MitchellLinear(8, 6), MitchellConv2d(2, 3, 3, padding=1)
    norm, layer_norm = MitchellRMSNorm(nn.Parameter(torch.ones(8)), 1e-6), MitchellLayerNorm(nn.LayerNorm(8))
    mlp = nn.Module()
    mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn = (
        nn.Linear(8, 12),
        nn.Linear(8, 12),
        nn.Linear(12, 8),
        nn.SiLU(),
    )
    gated = MitchellGatedMLP(mitchellize(mlp))
    x, image = torch.randn(2, 5, 8), torch.randn(1, 2, 6, 6)
    q, k, v = torch.randn(3, 2, 5, 4).unbind(0)
    mask = torch.triu(torch.full((5, 5), -1e9), 1)
    with count_host_syncs() as syncs:
        linear(x).sum().backward()
        conv(image), norm(x), layer_norm(x), gated(x)
        mitchell.attention(q, k, v, mask=mask)
    assert syncs == []


def _reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fmt: str) -> torch.Tensor:
    """The float64 reference of the same arithmetic: scalar Mitchell products in ``fmt`` (struct, Python
    integers), summed exactly in float64, plus the bias."""
    x, weight, bias = x.detach(), weight.detach(), bias.detach()
    out = torch.zeros(x.shape[0], weight.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        for j in range(weight.shape[0]):
            out[i, j] = sum(ref.mul(float(x[i, k]), float(weight[j, k]), fmt) for k in range(x.shape[1])) + float(
                bias[j]
            )
    return out


def test_a_partly_mitchellized_model_follows_autocast_like_nn_linear() -> None:
    """Regression (issue 27): this raised TypeError (a bfloat16 activation met a float32 Mitchell weight)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    mitchellize(model, skip=("0",))
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model[1](model[0](x))
        out = model(x)
    assert hidden.dtype == out.dtype == torch.bfloat16
    layer = model[2]
    want = _reference_linear(hidden, layer.weight.to(torch.bfloat16), layer.bias.to(torch.bfloat16), "bfloat16")
    # Mitchell products of bfloat16 operands, summed in float32, rounded once to bfloat16 (+ the bias)
    assert (out.double() - want).abs().max() <= 2 * torch.finfo(torch.bfloat16).eps * want.abs().max()
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32  # the float32 master weight gets its gradient through the cast
    with pytest.raises(TypeError, match=r"x has dtype torch\.bfloat16"):
        model[2](hidden.detach())  # outside autocast a dtype mismatch is still an error, not a silent cast


def test_autocast_is_taken_from_the_tensors_device() -> None:
    """CUDA autocast does not touch CPU layers; CPU autocast does not touch meta ones (as for nn.Linear)."""
    layer = MitchellLinear(4, 3)
    x = torch.randn(2, 4)
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.cuda.is_available()):
        assert layer(x).dtype == torch.float32
    meta = MitchellLinear(4, 3, device="meta")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (
            meta(torch.randn(2, 4, device="meta")).dtype
            == nn.Linear(4, 3, device="meta")(torch.randn(2, 4, device="meta")).dtype
        )
        assert MitchellConv2d(2, 3, 3)(torch.randn(1, 2, 5, 5)).dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_is_bit_identical_to_the_cpu_without_a_sync(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 17, 33, generator=g).to(dtype), torch.randn(3, 33, 9, generator=g).to(dtype)
    a[0, 0, :4], b[1, 2, 0] = 0.0, float("inf")
    x, y = _special(dtype)
    ca, cb, cx, cy = (t.cuda() for t in (a, b, x, y))
    torch.cuda.synchronize()
    with cuda_sync_errors():
        outs = [mitchell.mul(cx, cy, correction=c) for c in (None, "constant", "piecewise")]
        outs += [mitchell.matmul(ca[0], cb[0]), mitchell.bmm(ca, cb), mitchell.bmm(ca, cb, correction="piecewise")]
    cpu = [mitchell.mul(x, y, correction=c) for c in (None, "constant", "piecewise")]
    cpu += [mitchell.matmul(a[0], b[0]), mitchell.bmm(a, b), mitchell.bmm(a, b, correction="piecewise")]
    for got, want in zip(outs, cpu, strict=True):
        assert got.device.type == "cuda" and _same(got.cpu(), want)


@pytest.mark.gpu
def test_cuda_layer_under_autocast_without_a_sync() -> None:
    layer = MitchellLinear(16, 8).cuda()
    x = torch.randn(4, 16, device="cuda")
    with cuda_sync_errors(), torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = layer.cpu()(x.cpu())
    assert torch.equal(y.cpu(), want)
