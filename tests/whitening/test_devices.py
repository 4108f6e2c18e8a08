"""Whitening wherever users run it: modules cast with .to()/.bfloat16(), autocast, the meta device, CUDA."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from device_contract import count_host_syncs, cuda_sync_errors
from kexue.whitening import Whitening
from kexue.whitening.layer import WhiteningLayer, statistics_dtype
from kexue.whitening.st_module import WhiteningModule


def _embeddings(n: int = 400, d: int = 32, seed: int = 0) -> torch.Tensor:
    """Anisotropic float64 "sentence vectors": a dominant mean and variances from 0.05 to 3."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.logspace(np.log10(3.0), np.log10(0.05), d, dtype=torch.float64)
    return 5.0 + (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ q.T


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.double() - reference).abs().max() / reference.abs().max())


def _bound(dtype: torch.dtype) -> float:
    """float16/bfloat16: the output's own rounding (computed in float32); float32/float64: a computation in
    that dtype, whose error grows with the conditioning of the map (here ~60: Λ^(-1/2) up to 20, mean 5)."""
    return torch.finfo(dtype).eps * (1 if dtype in (torch.float16, torch.bfloat16) else 256)


@pytest.mark.parametrize("module_class", [WhiteningLayer, WhiteningModule])
def test_bfloat16_cast_keeps_the_map_and_whitens_to_bfloat16_rounding(module_class) -> None:
    """Regression: ``.bfloat16()`` used to round the kernel and bias to bfloat16 (WhiteningModule's buffers),
    an error 10x the output's own rounding on anisotropic embeddings."""
    x = _embeddings()
    w = Whitening(n_components=24).fit(x)
    module = module_class(w).bfloat16()
    assert module.kernel.dtype == torch.float64 and module.bias.dtype == torch.float64
    xb = x.bfloat16()
    reference = torch.from_numpy(w.transform(xb.double().numpy()))
    out = module(xb) if module_class is WhiteningLayer else module({"sentence_embedding": xb})["sentence_embedding"]
    assert out.dtype == torch.bfloat16
    after = _relative_error(out, reference)
    kernel, bias = torch.from_numpy(w.kernel_).bfloat16(), torch.from_numpy(w.bias_).bfloat16()
    before = _relative_error((xb - bias) @ kernel, reference)  # what the cast buffers computed
    eps = torch.finfo(torch.bfloat16).eps
    assert after <= eps  # the output's own rounding (half an ulp at the largest magnitude)
    assert before > 5 * after


@pytest.mark.parametrize("cast", ["half", "bfloat16", "float", "double"])
def test_every_cast_keeps_the_map_in_float64_and_returns_the_input_dtype(cast: str) -> None:
    x = _embeddings(200, 16)
    w = Whitening().fit(x)
    layer = getattr(WhiteningLayer(w), cast)()
    assert layer.kernel.dtype == torch.float64 and layer.bias.dtype == torch.float64
    np.testing.assert_array_equal(layer.kernel.numpy(), w.kernel_)  # bit for bit: never rounded
    dtype = {"half": torch.float16, "bfloat16": torch.bfloat16, "float": torch.float32, "double": torch.float64}[cast]
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    reference = torch.from_numpy(w.transform(x.to(dtype).double().numpy()))
    assert _relative_error(out, reference) <= _bound(dtype)


def test_autocast_does_not_lower_the_precision() -> None:
    x = _embeddings(200, 16).float()
    layer = WhiteningLayer(Whitening().fit(x))
    plain = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = layer(x)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)


def test_meta_device_gives_the_shapes_and_the_estimator_refuses_it() -> None:
    w = Whitening(n_components=8).fit(_embeddings(100, 16))
    layer = WhiteningLayer(w).to("meta").bfloat16()
    assert layer.kernel.device.type == "meta" and layer.kernel.dtype == torch.float64
    out = layer(torch.empty(5, 16, device="meta", dtype=torch.bfloat16))
    assert out.device.type == "meta" and out.shape == (5, 8) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="meta device"):
        Whitening().fit(torch.empty(5, 16, device="meta"))
    with pytest.raises(ValueError, match="meta device"):
        w.transform(torch.empty(5, 16, device="meta"))


def test_forward_reads_nothing_back_to_the_host() -> None:
    x = _embeddings(100, 16)
    layer = WhiteningLayer(Whitening().fit(x)).bfloat16()
    module = WhiteningModule(Whitening().fit(x)).half()
    xb, xh = x.bfloat16(), x.half()
    with count_host_syncs() as syncs:
        layer(xb)
        module({"sentence_embedding": xh})
    assert syncs == []


def test_layer_input_errors_name_the_argument() -> None:
    layer = WhiteningLayer(Whitening().fit(_embeddings(100, 16)))
    with pytest.raises(ValueError, match="last dimension 16"):
        layer(torch.zeros(3, 15))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(3, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"fitted kexue.whitening.Whitening"):
        WhiteningLayer(np.eye(3))


def test_estimator_transform_computes_half_inputs_in_float32() -> None:
    x = _embeddings()
    w = Whitening(n_components=24).fit(x)
    for dtype in (torch.bfloat16, torch.float16):
        xl = x.to(dtype)
        out = w.transform(xl)
        assert out.dtype == dtype
        reference = torch.from_numpy(w.transform(xl.double().numpy()))
        assert _relative_error(out, reference) <= torch.finfo(dtype).eps


def test_streaming_fit_on_bfloat16_batches_equals_the_float64_fit_of_their_values() -> None:
    x = _embeddings().bfloat16()
    streamed = Whitening()
    for batch in x.split(64):
        streamed.partial_fit(batch)
    whole = Whitening().fit(x.double())
    np.testing.assert_allclose(streamed.mean_, whole.mean_, rtol=1e-14)
    np.testing.assert_allclose(streamed.scatter_, whole.scatter_, rtol=1e-12, atol=1e-12)


def test_all_reduce_gathers_on_the_backends_device() -> None:
    """The statistics go to the collective on the device its backend takes (NCCL: CUDA), not the CPU."""
    seen: list[torch.device] = []

    def all_gather(parts: list, tensor: torch.Tensor, group: object = None) -> None:
        seen.append(tensor.device)
        raise RuntimeError("stop after the gather's input is placed")

    w = Whitening().fit(_embeddings(50, 4))
    where = torch.device("meta")  # stands for cuda:<current>, which this machine may not have
    with (
        mock.patch("kexue.whitening.whitening.check_process_group"),
        mock.patch("kexue.whitening.whitening.collective_device", return_value=where) as device,
        mock.patch("torch.distributed.get_world_size", return_value=2),
        mock.patch("torch.distributed.all_gather", all_gather),
        pytest.raises(RuntimeError, match="stop after"),
    ):
        w.all_reduce(group="a group")
    device.assert_called_once_with("a group")
    assert seen == [where]


def test_statistics_dtype_is_float32_only_on_mps() -> None:
    assert statistics_dtype(torch.device("cpu")) == torch.float64
    assert statistics_dtype(torch.device("meta")) == torch.float64
    assert statistics_dtype(torch.device("mps")) == torch.float32


# --- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_fit_and_transform_match_the_cpu_float64_fit(dtype: torch.dtype) -> None:
    x = _embeddings().to(dtype)
    cpu = Whitening(n_components=24).fit(x.double())
    gpu = Whitening(n_components=24)
    for batch in x.cuda().split(100):
        gpu.partial_fit(batch)
    np.testing.assert_allclose(gpu.mean_, cpu.mean_, rtol=1e-12)
    np.testing.assert_allclose(gpu.scatter_, cpu.scatter_, rtol=1e-10, atol=1e-10)
    reference = torch.from_numpy(cpu.transform(x.double().numpy()))
    out = gpu.transform(x.cuda())
    assert out.device.type == "cuda" and out.dtype == dtype
    assert _relative_error(out.cpu(), reference) <= _bound(dtype)
    layer = WhiteningLayer(gpu).cuda().to(dtype)
    assert layer.kernel.device.type == "cuda" and layer.kernel.dtype == torch.float64
    xc = x.cuda()
    layer(xc)  # warm-up: kernels chosen outside the checked call
    with cuda_sync_errors():
        z = layer(xc)
    assert z.dtype == dtype and _relative_error(z.cpu(), reference) <= _bound(dtype)


def test_sts_scoring_accepts_bfloat16_tensors() -> None:
    """Regression: ``np.asarray`` of a bfloat16 tensor raised (NumPy has no bfloat16), although the encoder
    contract accepts torch tensors."""
    from kexue.data import SentencePairs
    from kexue.sts import cosine_spearman, score_task

    vectors = _embeddings(12, 8, seed=3)
    index = {f"s{i}": i for i in range(12)}
    pairs = SentencePairs("toy", [f"s{i}" for i in range(6)], [f"s{i}" for i in range(6, 12)], [0.0, 1, 2, 3, 4, 5])
    rounded = vectors.bfloat16()
    expected = cosine_spearman(lambda sentences: rounded.double().numpy()[[index[s] for s in sentences]], pairs)
    got = cosine_spearman(lambda sentences: rounded[[index[s] for s in sentences]], pairs)
    assert got == expected
    assert score_task([pairs], rounded, index) == score_task([pairs], rounded.double().numpy(), index)
