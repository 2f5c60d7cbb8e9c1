"""rswb.engine.device: device choice, nested batch transfer, precision rules and autocast."""

from __future__ import annotations

import contextlib
from collections import namedtuple

import pytest
import torch

from rswb.engine import device as device_mod
from rswb.engine.device import autocast, make_grad_scaler, resolve_precision, select_device, to_device

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
Pair = namedtuple("Pair", ["image", "meta"])


def _no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_select_device_default_is_cpu_without_accelerators(monkeypatch):
    _no_accelerators(monkeypatch)
    assert select_device(None) == CPU
    assert select_device("auto") == CPU
    assert select_device("cpu") == CPU
    assert select_device(torch.device("cpu")) == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_select_device_none_here_is_cpu():
    expected = "mps" if (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()) else "cpu"
    assert select_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_select_device_cuda_without_cuda(name):
    with pytest.raises(RuntimeError, match=rf"device {name}.*requested but CUDA is not available.*device=cpu"):
        select_device(name)


def test_select_device_mps_without_mps(monkeypatch):
    _no_accelerators(monkeypatch)
    with pytest.raises(RuntimeError, match="MPS is not available"):
        select_device("mps")


def test_select_device_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match=r"cuda:2 was requested but only 2 GPU\(s\) exist"):
        select_device("cuda:2")


def test_select_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert select_device(None) == torch.device("cuda", 1)
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        assert select_device(None) == torch.device("mps")


def test_select_device_bad_name():
    with pytest.raises(RuntimeError):
        select_device("gpu")


def test_to_device_nested_keeps_non_tensors():
    x = torch.arange(6.0).reshape(2, 3)
    y = torch.tensor([1, 2])
    batch = {
        "image": x,
        "label": y,
        "name": "tile_01",
        "ids": [1, 2],
        "pair": Pair(x, {"crs": "EPSG:4326", "mask": y}),
        "tuple": (x, None, 3.5),
        "nested": [{"t": y}, ("s", y)],
    }
    out = to_device(batch, CPU)
    assert isinstance(out, dict) and list(out) == list(batch)
    assert out["image"] is x  # already there: no copy
    assert out["name"] == "tile_01" and out["ids"] == [1, 2]
    assert isinstance(out["pair"], Pair) and out["pair"].image is x and out["pair"].meta["crs"] == "EPSG:4326"
    assert type(out["tuple"]) is tuple and out["tuple"][1:] == (None, 3.5)
    assert type(out["nested"]) is list and type(out["nested"][1]) is tuple
    assert out["nested"][0]["t"] is y and out["nested"][1][0] == "s"
    assert to_device(5, CPU) == 5 and to_device(None, CPU) is None


def test_to_device_converts_with_recording_tensor_to(monkeypatch):
    """Every tensor, however deep, goes through Tensor.to(device) exactly once; nothing else does."""
    calls = []
    real_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        calls.append((tuple(self.shape), args, kwargs))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    batch = {"a": torch.zeros(1), "b": [torch.zeros(2), (torch.zeros(3), "x")], "c": Pair(torch.zeros(4), 1)}
    to_device(batch, CPU)
    assert sorted(c[0] for c in calls) == [(1,), (2,), (3,), (4,)]
    # non_blocking only matters (and is only requested) for CUDA targets.
    assert all(c[1] == (CPU,) and c[2] == {"non_blocking": False} for c in calls)


@pytest.mark.gpu
@needs_cuda
def test_to_device_cuda():
    batch = {"x": torch.ones(2), "p": Pair(torch.zeros(1), "m")}
    out = to_device(batch, torch.device("cuda"))
    assert out["x"].is_cuda and out["p"].image.is_cuda and out["p"].meta == "m"
    assert select_device("cuda").type == "cuda"


def test_resolve_precision_rules(monkeypatch):
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(ValueError, match="fp16 autocast is for GPUs"):
        resolve_precision("fp16", CPU)
    for bad in ("fp64", "half", "BF16", ""):
        with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
            resolve_precision(bad, CPU)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp16", cuda) == "fp16"


def test_autocast_bf16_on_cpu_computes_in_bf16():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g), torch.randn(16, 4, generator=g)
    with autocast(CPU, "bf16"):
        out = a @ b
        lin = torch.nn.functional.linear(a, b.T)
    assert out.dtype == torch.bfloat16 and lin.dtype == torch.bfloat16
    ref = a.bfloat16().float() @ b.bfloat16().float()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)
    assert (a @ b).dtype == torch.float32  # off again after the block


def test_autocast_fp32_is_a_no_op():
    ctx = autocast(CPU, "fp32")
    assert isinstance(ctx, contextlib.nullcontext)
    a = torch.randn(3, 5)
    with ctx:
        assert (a @ a.T).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision", ["auto", "fp64", "BF16"])
def test_autocast_refuses_unresolved_precision(precision):
    with pytest.raises(ValueError, match="resolved precision"):
        autocast(CPU, precision)


def test_make_grad_scaler_only_for_fp16(monkeypatch):
    for precision in ("fp32", "bf16"):
        assert not make_grad_scaler(CPU, precision).is_enabled()
    seen = []

    class FakeScaler:
        def __init__(self, device, enabled):
            seen.append((device, enabled))

    monkeypatch.setattr(device_mod.torch.amp, "GradScaler", FakeScaler)
    make_grad_scaler(torch.device("cuda", 0), "fp16")
    make_grad_scaler(torch.device("cuda", 0), "bf16")
    assert seen == [("cuda", True), ("cuda", False)]


@pytest.mark.gpu
@needs_cuda
def test_cuda_precision_and_scaler():
    dev = select_device("cuda")
    precision = resolve_precision("auto", dev)
    assert precision in ("bf16", "fp16")
    a = torch.randn(4, 4, device=dev)
    with autocast(dev, precision):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    assert make_grad_scaler(dev, "fp16").is_enabled()
    assert not make_grad_scaler(dev, "bf16").is_enabled()
