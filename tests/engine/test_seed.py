"""rswb.engine.seed: one seeding function, and RNG states that survive a weights_only checkpoint."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch

from rswb.engine.seed import get_rng_state, seed_everything, set_rng_state


def _draws():
    """A few draws from every global generator (the numpy normal also exercises the cached gaussian)."""
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.concatenate([np.random.rand(3), np.random.randn(1), np.random.randint(0, 10**9, 2)]).tolist(),
        torch.cat([torch.rand(3), torch.randn(2), torch.randint(0, 10**9, (2,)).double()]).tolist(),
    )


@pytest.fixture
def restore_global_rng():
    """Leave the global generators (and deterministic mode) as the test found them."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    torch.use_deterministic_algorithms(det[0], warn_only=det[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = det[2], det[3]


@pytest.mark.usefixtures("restore_global_rng")
def test_seed_everything_reproducible():
    seed_everything(123)
    a = _draws()
    seed_everything(123)
    b = _draws()
    seed_everything(124)
    c = _draws()
    assert a == b
    for x, y in zip(a, c):
        assert x != y  # each generator depends on the seed
    # The same values as seeding each library directly.
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    assert _draws() == a


@pytest.mark.usefixtures("restore_global_rng")
def test_seed_everything_large_seed():
    seed_everything(2**40 + 5)  # numpy only takes 32-bit seeds
    a = _draws()
    seed_everything(2**40 + 5)
    assert _draws() == a


@pytest.mark.usefixtures("restore_global_rng")
def test_seed_everything_deterministic(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    # An existing setting is kept.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def _weights_only_round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.usefixtures("restore_global_rng")
@pytest.mark.parametrize("seed", [0, 7, 2**31 + 3])
def test_rng_state_round_trip_through_checkpoint(seed):
    seed_everything(seed)
    _draws()  # move away from the freshly seeded state
    np.random.randn(1)  # leaves a cached gaussian in numpy's legacy state (has_gauss = 1)
    state = _weights_only_round_trip({"rng": get_rng_state()})["rng"]
    expected = _draws()
    # Scramble everything, then restore.
    seed_everything(seed + 1)
    _draws()
    assert _draws() != expected
    set_rng_state(state)
    assert _draws() == expected
    # Restoring twice gives the same draws again (the state is not consumed).
    set_rng_state(state)
    assert _draws() == expected


@pytest.mark.usefixtures("restore_global_rng")
def test_rng_state_contents():
    seed_everything(3)
    state = get_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert state["numpy"]["kind"] == "MT19937"
    assert state["numpy"]["keys"].dtype == torch.int64 and state["numpy"]["keys"].shape == (624,)
    np_keys = np.random.get_state()[1]
    assert np.array_equal(state["numpy"]["keys"].numpy().astype(np.uint32), np_keys)
    assert torch.equal(state["torch"], torch.get_rng_state())
    assert ("cuda" in state) == (torch.cuda.is_available() and torch.cuda.is_initialized())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.usefixtures("restore_global_rng")
def test_cuda_rng_state_round_trip():
    seed_everything(11)
    torch.rand(1, device="cuda")  # initialises CUDA
    state = _weights_only_round_trip(get_rng_state())
    assert "cuda" in state
    expected = torch.rand(4, device="cuda").cpu()
    seed_everything(12)
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda").cpu(), expected)
