"""Contrastive losses against slow loop references (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from rswb.losses.contrastive import LearnableTemperature, hardest_negative_triplet, symmetric_info_nce


def _triplet_reference(sim: list[list[float]], margin: float, ids: list[int] | None) -> float:
    """VSE++ by loops: hardest allowed negative per image row and per caption column."""
    n = len(sim)
    ids = ids if ids is not None else list(range(n))
    total = 0.0
    for i in range(n):
        row = [sim[i][j] for j in range(n) if j != i and ids[j] != ids[i]]
        col = [sim[j][i] for j in range(n) if j != i and ids[j] != ids[i]]
        if row:
            total += max(0.0, margin - sim[i][i] + max(row))
        if col:
            total += max(0.0, margin - sim[i][i] + max(col))
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_ids", [False, True])
def test_hardest_negative_triplet_matches_loops_and_its_gradient(seed, with_ids):
    g = torch.Generator().manual_seed(seed)
    n = 7
    sim = (0.3 * torch.randn(n, n, generator=g, dtype=torch.float64)).requires_grad_()
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 4]) if with_ids else None
    got = hardest_negative_triplet(sim, 0.2, ids)
    ref = _triplet_reference(sim.detach().tolist(), 0.2, None if ids is None else ids.tolist())
    assert float(got.detach()) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    (grad,) = torch.autograd.grad(got, sim)
    # Reference gradient: finite differences of the loop reference (the loss is piecewise linear in sim).
    eps = 1e-6
    fd = torch.zeros(n, n, dtype=torch.float64)
    base = sim.detach().tolist()
    for i in range(n):
        for j in range(n):
            up = [r[:] for r in base]
            up[i][j] += eps
            down = [r[:] for r in base]
            down[i][j] -= eps
            fd[i, j] = (_triplet_reference(up, 0.2, None if ids is None else ids.tolist())
                        - _triplet_reference(down, 0.2, None if ids is None else ids.tolist())) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-5, rtol=1e-4)


def test_triplet_is_zero_when_every_positive_wins_by_the_margin_and_rejects_bad_shapes():
    sim = torch.full((4, 4), 0.1) + torch.eye(4)
    assert float(hardest_negative_triplet(sim, 0.2)) == 0.0
    assert float(hardest_negative_triplet(sim, 1.5)) == pytest.approx(2 * (1.5 - 1.0))
    with pytest.raises(ValueError, match="square"):
        hardest_negative_triplet(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="two pairs"):
        hardest_negative_triplet(torch.zeros(1, 1))
    # Every other row is the same image: no negative at all, a zero loss rather than -inf.
    assert float(hardest_negative_triplet(torch.randn(3, 3), 0.2, torch.tensor([5, 5, 5]))) == 0.0


def _nce_reference(a, b, t, ids):
    n = len(a)
    norm = [math.sqrt(sum(x * x for x in v)) for v in a]
    normb = [math.sqrt(sum(x * x for x in v)) for v in b]
    cos = [[sum(x * y for x, y in zip(a[i], b[j])) / (norm[i] * normb[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        keep = [j for j in range(n) if j == i or ids[j] != ids[i]]
        total += 0.5 * (math.log(sum(math.exp(cos[i][j] / t) for j in keep)) - cos[i][i] / t)
        total += 0.5 * (math.log(sum(math.exp(cos[j][i] / t) for j in keep)) - cos[i][i] / t)
    return total / n


def test_info_nce_with_a_learnable_temperature_matches_loops_and_gets_its_gradient():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    ids = [0, 1, 2, 1, 4, 5]
    temp = LearnableTemperature(init=0.2)
    loss = symmetric_info_nce(a, b, temp(), torch.tensor(ids))
    t = float(temp().detach())
    assert t == pytest.approx(0.2)
    assert float(loss.detach()) == pytest.approx(_nce_reference(a.tolist(), b.tolist(), t, ids), rel=1e-5)
    loss.backward()
    # d loss / d log_scale by central differences of the reference (T = exp(-log_scale)).
    s0, eps = float(temp.log_scale.detach()), 1e-5
    fd = (_nce_reference(a.tolist(), b.tolist(), math.exp(-(s0 + eps)), ids)
          - _nce_reference(a.tolist(), b.tolist(), math.exp(-(s0 - eps)), ids)) / (2 * eps)
    assert float(temp.log_scale.grad) == pytest.approx(fd, rel=1e-3)


def test_learnable_temperature_is_clamped():
    temp = LearnableTemperature(init=0.07, min_temperature=0.01)
    with torch.no_grad():
        temp.log_scale.fill_(10.0)
    assert float(temp().detach()) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        LearnableTemperature(init=0.01, min_temperature=0.07)
