"""Set pooling: GPO against a per-sample loop, padding/permutation invariance, gradients."""

from __future__ import annotations

import pytest
import torch

from rswb.models.pooling import GPO, positional_encoding


def make_set(seed: int = 0, b: int = 4, n: int = 6, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 0, 0, 0],
                         [0, 1, 0, 1, 1, 0],  # valid elements need not be a prefix
                         [1, 0, 0, 0, 0, 0]], dtype=torch.bool)[:b, :n]
    return x, mask


def gpo_loop_reference(gpo: GPO, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample and channel: sort the valid values in descending order, weighted sum with the module's weights."""
    lengths = mask.sum(1)
    weights = gpo.weights(lengths)
    out = torch.zeros(x.shape[0], x.shape[2])
    for i in range(x.shape[0]):
        for c in range(x.shape[2]):
            values = sorted(x[i, mask[i], c].tolist(), reverse=True)
            out[i, c] = sum(w * v for w, v in zip(weights[i].tolist(), values))
    return out


def test_positional_encoding():
    pe = positional_encoding(5, 8)
    assert pe.shape == (5, 8) and pe.dtype == torch.float32
    assert torch.equal(pe[0, 0::2], torch.zeros(4)) and torch.equal(pe[0, 1::2], torch.ones(4))
    assert pe[3, 0] == pytest.approx(torch.sin(torch.tensor(3.0)).item())
    with pytest.raises(ValueError):
        positional_encoding(3, 7)


def test_gpo_weights_are_a_softmax_over_valid_positions():
    torch.manual_seed(0)
    gpo = GPO()
    w = gpo.weights([6, 3, 1, 3, 0])
    assert [len(v) for v in w] == [6, 3, 1, 3, 0]
    for v in w[:4]:
        assert v.dtype == torch.float32 and (v > 0).all() and v.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(w[1], w[3]) and w[2].item() == pytest.approx(1.0)
    matrix = gpo.weight_matrix(torch.tensor([6, 3, 0]))
    assert matrix.shape == (3, 6) and (matrix[1, 3:] == 0).all() and (matrix[2] == 0).all()
    # a set's weights do not depend on which other sizes share the batch
    torch.testing.assert_close(gpo.weights([3])[0], gpo.weights([6, 3, 9])[1])
    with pytest.raises(ValueError, match=">= 0"):
        gpo.weights([2, -1])


def test_gpo_matches_the_loop_reference():
    torch.manual_seed(0)
    gpo = GPO()
    x, mask = make_set()
    out = gpo(x, mask)
    assert out.shape == (4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, gpo_loop_reference(gpo, x, mask), rtol=1e-5, atol=1e-6)
    full = torch.ones(4, 6, dtype=torch.bool)
    torch.testing.assert_close(gpo(x), gpo_loop_reference(gpo, x, full), rtol=1e-5, atol=1e-6)


def test_gpo_ignores_padding_even_with_huge_values():
    torch.manual_seed(1)
    gpo = GPO()
    x, mask = make_set()
    ref = gpo(x, mask)
    for fill in [1e30, -1e30, float("inf"), float("nan")]:
        y = x.masked_fill(~mask.unsqueeze(-1), fill)
        torch.testing.assert_close(gpo(y, mask), ref)
    # extra padded columns change nothing either
    wide = torch.cat([x, torch.full((4, 3, 5), 1e6)], 1)
    wide_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(gpo(wide, wide_mask), ref)


def test_gpo_single_element_and_empty_sets():
    torch.manual_seed(2)
    gpo = GPO()
    x, mask = make_set()
    out = gpo(x, mask)
    torch.testing.assert_close(out[3], x[3, 0])  # one valid element: weight 1 on it
    torch.testing.assert_close(gpo(x[:, :1]), x[:, 0])
    empty = torch.zeros(4, 6, dtype=torch.bool)
    assert torch.equal(gpo(x, empty), torch.zeros(4, 5))
    mixed = mask.clone()
    mixed[1] = False
    out2 = gpo(x, mixed)
    assert torch.equal(out2[1], torch.zeros(5))
    torch.testing.assert_close(out2[[0, 2, 3]], out[[0, 2, 3]])


def test_gpo_is_permutation_invariant():
    torch.manual_seed(3)
    gpo = GPO()
    x, mask = make_set()
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        perm = torch.randperm(6, generator=g)
        torch.testing.assert_close(gpo(x[:, perm], mask[:, perm]), gpo(x, mask))


def test_gpo_gradients_reach_the_gru_and_only_valid_inputs():
    torch.manual_seed(4)
    gpo = GPO()
    x, mask = make_set()
    x.requires_grad_(True)
    gpo(x, mask).square().sum().backward()
    for name, p in gpo.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all() and (x.grad[mask].abs().sum(-1) > 0).all()


def test_gpo_with_uniform_weights_is_the_masked_mean():
    gpo = GPO()
    x, mask = make_set()
    gpo.temperature = 1e6  # a huge temperature flattens the softmax: uniform weights, i.e. the masked mean
    mean = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(gpo(x, mask), mean, rtol=1e-4, atol=1e-4)


def test_gpo_autocast_and_input_checks():
    torch.manual_seed(5)
    gpo = GPO()
    x, mask = make_set()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gpo(x.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), gpo(x.bfloat16().float(), mask), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="B, N, D"):
        gpo(x[0], None)
    with pytest.raises(ValueError, match="mask"):
        gpo(x, mask[:, :3])
    for kwargs in [{"d_pe": 31}, {"temperature": 0.0}]:
        with pytest.raises(ValueError):
            GPO(**kwargs)
