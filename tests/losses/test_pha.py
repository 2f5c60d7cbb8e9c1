"""PHA loss terms against slow, obviously-correct references on seeded random inputs (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from rswb.losses.pha import (
    cross_modal_info_nce,
    decorrelation_loss,
    linear_cka,
    progressive_weights,
    reconstruction_loss,
    sparsity_loss,
)

# ----------------------------------------------------------------------------------------------- references


def info_nce_reference(a, b, temperature):
    """Both directions of InfoNCE as explicit loops over pairs, cosine from dot products and norms."""
    n = a.shape[0]

    def cos(u, v):
        return (u * v).sum() / (u.pow(2).sum().sqrt() * v.pow(2).sum().sqrt())

    s = [[cos(a[i], b[j]) / temperature for j in range(n)] for i in range(n)]
    a_to_b = 0.0
    for i in range(n):
        a_to_b = a_to_b - (s[i][i] - torch.logsumexp(torch.stack([s[i][j] for j in range(n)]), 0))
    b_to_a = 0.0
    for j in range(n):
        b_to_a = b_to_a - (s[j][j] - torch.logsumexp(torch.stack([s[i][j] for i in range(n)]), 0))
    return 0.5 * (a_to_b / n + b_to_a / n)


def progressive_reference(progress, stages, width):
    c = min(max(progress, 0.0), 1.0) * (stages - 1)
    raw = [math.exp(-((s - c) ** 2) / (2 * width**2)) for s in range(stages)]
    return [r / sum(raw) for r in raw]


def decorrelation_reference(x, y, eps=1e-5):
    """Mean over (i, j) of the squared Pearson correlation of column i of x and column j of y (population std)."""
    n = x.shape[0]

    def standard(col):
        mean = sum(col[k] for k in range(n)) / n
        std = (sum((col[k] - mean) ** 2 for k in range(n)) / n).sqrt()
        return [(col[k] - mean) / (std + eps) for k in range(n)]

    xs = [standard(x[:, i]) for i in range(x.shape[1])]
    ys = [standard(y[:, j]) for j in range(y.shape[1])]
    total = 0.0
    for xi in xs:
        for yj in ys:
            r = sum(xi[k] * yj[k] for k in range(n)) / n
            total = total + r**2
    return total / (len(xs) * len(ys))


def reconstruction_reference(f, s, p):
    n, d = f.shape
    total = 0.0
    for i in range(n):
        err = sum((f[i, k] - s[i, k] - p[i, k]) ** 2 for k in range(d))
        norm = sum(f[i, k] ** 2 for k in range(d))
        total = total + err / (norm + 1e-6)
    return total / n


def sparsity_reference(codes):
    flat = codes.flatten()
    return sum(abs(v) for v in flat) / flat.numel()


def cka_reference(x, y):
    """HSIC with an explicit centring matrix on the Gram matrices."""
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - torch.ones(n, n, dtype=x.dtype) / n
    k, l_ = x @ x.t(), y @ y.t()
    hsic = lambda p, q: torch.trace(p @ h @ q @ h)  # noqa: E731
    return hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_))


def assert_same_value_and_grad(fn, ref, inputs, rtol=1e-5, atol=1e-6):
    """fn and ref give the same value and the same gradient with respect to every input."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    got = fn(*leaves)
    g_got = torch.autograd.grad(got, leaves)
    leaves_ref = [t.clone().requires_grad_() for t in inputs]
    want = ref(*leaves_ref)
    g_want = torch.autograd.grad(want, leaves_ref)
    assert got.ndim == 0
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("seed", range(2))
def test_info_nce_matches_loop_reference(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(7, 5, generator=g)
    b = torch.randn(7, 5, generator=g)
    assert_same_value_and_grad(lambda x, y: cross_modal_info_nce(x, y, temperature),
                               lambda x, y: info_nce_reference(x, y, temperature), [a, b], rtol=1e-4, atol=1e-5)


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        cross_modal_info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        cross_modal_info_nce(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError):
        cross_modal_info_nce(torch.randn(4), torch.randn(4))


def test_info_nce_lower_for_aligned_pairs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 16, generator=g)
    b = a + 0.05 * torch.randn(32, 16, generator=g)
    shuffled = b[torch.randperm(32, generator=g)]
    aligned, mixed = float(cross_modal_info_nce(a, b)), float(cross_modal_info_nce(a, shuffled))
    assert aligned < 0.1 < math.log(32) / 2 < mixed


# ----------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("stages,width", [(3, 0.5), (3, 1.0), (5, 0.7), (1, 0.5)])
@pytest.mark.parametrize("progress", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_progressive_weights_match_formula(progress, stages, width):
    w = progressive_weights(progress, stages, width)
    assert w.shape == (stages,)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert w.tolist() == pytest.approx(progressive_reference(progress, stages, width), abs=1e-6)


def test_progressive_weights_move_from_shallow_to_deep():
    for stages in (3, 5):
        assert int(progressive_weights(0.0, stages).argmax()) == 0
        assert int(progressive_weights(0.5, stages).argmax()) == (stages - 1) // 2
        assert int(progressive_weights(1.0, stages).argmax()) == stages - 1


def test_progressive_weights_hand_values():
    """3 stages, width 0.5, by hand: exp(-d^2 / 0.5) for stage distances d = 0, 1, 2 is 1, e^-2, e^-8.

    The ends are the values the pha_v4 docstring states, (0.88, 0.12, 0.00) and (0.00, 0.12, 0.88). In the middle
    the formula gives (e^-2, 1, e^-2) / (1 + 2 e^-2) = (0.11, 0.79, 0.11), not the (0.12, 0.76, 0.12) the
    docstring states (the docstring is off, the code follows its own formula).
    """
    e2, e8 = math.exp(-2), math.exp(-8)
    by_hand = {0.0: (1 / (1 + e2 + e8), e2 / (1 + e2 + e8), e8 / (1 + e2 + e8)),
               0.5: (e2 / (1 + 2 * e2), 1 / (1 + 2 * e2), e2 / (1 + 2 * e2)),
               1.0: (e8 / (1 + e2 + e8), e2 / (1 + e2 + e8), 1 / (1 + e2 + e8))}
    for t, values in by_hand.items():
        assert progressive_weights(t, 3, 0.5).tolist() == pytest.approx(values, abs=1e-6)
    documented = {0.0: (0.88, 0.12, 0.00), 0.5: (0.11, 0.79, 0.11), 1.0: (0.00, 0.12, 0.88)}
    for t, values in documented.items():
        assert progressive_weights(t, 3, 0.5).tolist() == pytest.approx(values, abs=0.01)
        assert progressive_reference(t, 3, 0.5) == pytest.approx(values, abs=0.01)


def test_progressive_weights_clip_progress_and_check_arguments():
    assert torch.equal(progressive_weights(-1.0), progressive_weights(0.0))
    assert torch.equal(progressive_weights(7.0), progressive_weights(1.0))
    for bad in ({"stages": 0}, {"width": 0.0}, {"width": -1.0}):
        with pytest.raises(ValueError, match="stages >= 1"):
            progressive_weights(0.5, **bad)


# ----------------------------------------------------------------------------------------------- dictionary terms


@pytest.mark.parametrize("seed", range(3))
def test_decorrelation_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 4, generator=g)
    y = torch.randn(9, 3, generator=g) + 0.5 * x[:, :1]
    assert_same_value_and_grad(decorrelation_loss, decorrelation_reference, [x, y], rtol=1e-4, atol=1e-6)


def test_decorrelation_small_for_independent_large_for_copies():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g)
    y = torch.randn(4000, 4, generator=g)
    assert float(decorrelation_loss(x, y)) < 1e-3
    # y = x: each dimension correlates fully with itself (4 of the 16 pairs), about 0 with the others.
    assert float(decorrelation_loss(x, x.clone())) == pytest.approx(4 / 16, abs=0.01)
    one = torch.randn(100, 1, generator=g)
    assert float(decorrelation_loss(one, 3 * one + 1)) == pytest.approx(1.0, abs=1e-4)


def test_decorrelation_checks_batch_sizes():
    with pytest.raises(ValueError, match="same batch size"):
        decorrelation_loss(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match=">= 2"):
        decorrelation_loss(torch.randn(1, 2), torch.randn(1, 2))


@pytest.mark.parametrize("seed", range(3))
def test_reconstruction_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    f, s, p = (torch.randn(6, 5, generator=g) for _ in range(3))
    assert_same_value_and_grad(reconstruction_loss, reconstruction_reference, [f, s, p])
    assert float(reconstruction_loss(f, 0.25 * f, 0.75 * f)) == pytest.approx(0.0, abs=1e-10)
    assert float(reconstruction_loss(f, torch.zeros_like(f), torch.zeros_like(f))) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_sparsity_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(5, 7, generator=g)
    assert_same_value_and_grad(sparsity_loss, sparsity_reference, [codes])
    assert float(sparsity_loss(torch.tensor([[1.0, -2.0], [0.0, 0.5]]))) == pytest.approx(3.5 / 4)


# ----------------------------------------------------------------------------------------------- CKA


@pytest.mark.parametrize("seed", range(3))
def test_linear_cka_matches_hsic_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64) + x[:, :3]
    assert_same_value_and_grad(linear_cka, cka_reference, [x, y], rtol=1e-4, atol=1e-6)
    assert 0.0 <= float(linear_cka(x, y)) <= 1.0


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert float(linear_cka(x, x @ q * 3)) == pytest.approx(1.0, abs=1e-5)
    y = torch.randn(50, 4, generator=g, dtype=torch.float64)
    assert float(linear_cka(x, y * 7.5)) == pytest.approx(float(linear_cka(x, y)), rel=1e-5)
    assert float(linear_cka(x * 0.01, y)) == pytest.approx(float(linear_cka(x, y)), rel=1e-5)
    big = torch.randn(5000, 4, generator=g)
    assert float(linear_cka(big, torch.randn(5000, 4, generator=g))) < 0.01


def _masked_nce_reference(a, b, t, ids):
    """Loop reference of InfoNCE with same-id rows (other than the positive) removed from the negatives."""
    n = a.shape[0]
    an = [a[i] / a[i].norm() for i in range(n)]
    bn = [b[i] / b[i].norm() for i in range(n)]
    total = 0.0
    for i in range(n):
        keep = [j for j in range(n) if j == i or ids[j] != ids[i]]
        row = [float(an[i] @ bn[j]) / t for j in keep]
        col = [float(an[j] @ bn[i]) / t for j in keep]
        pos = float(an[i] @ bn[i]) / t
        total += 0.5 * (math.log(sum(math.exp(v) for v in row)) - pos)
        total += 0.5 * (math.log(sum(math.exp(v) for v in col)) - pos)
    return total / n


def test_info_nce_masks_duplicate_samples_from_the_negatives():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    ids = torch.tensor([0, 1, 2, 1, 4, 0, 6, 7, 1])
    got = float(cross_modal_info_nce(a, b, 0.3, ids))
    assert got == pytest.approx(_masked_nce_reference(a.double(), b.double(), 0.3, ids.tolist()), rel=1e-5)
    # All-distinct ids change nothing; a wrong length is an error.
    plain = float(cross_modal_info_nce(a, b, 0.3))
    assert float(cross_modal_info_nce(a, b, 0.3, torch.arange(9))) == pytest.approx(plain)
    with pytest.raises(ValueError, match="ids"):
        cross_modal_info_nce(a, b, 0.3, torch.arange(4))


# ------------------------------------------------------------------------------------- pre-training terms (v6)


def soft_info_nce_reference(a, b, targets, temperature):
    """Both directions of soft-target InfoNCE as explicit loops: -sum_j t_ij / sum_k t_ik * log p_ij, per row."""
    n = a.shape[0]

    def cos(u, v):
        return (u * v).sum() / (u.pow(2).sum().sqrt() * v.pow(2).sum().sqrt())

    s = [[cos(a[i], b[j]) / temperature for j in range(n)] for i in range(n)]
    total = 0.0
    for direction in range(2):
        for i in range(n):
            row = [s[i][j] if direction == 0 else s[j][i] for j in range(n)]
            t = [targets[i][j] if direction == 0 else targets[j][i] for j in range(n)]
            log_z = torch.logsumexp(torch.stack(row), 0)
            total = total - sum(t[j] / sum(t) * (row[j] - log_z) for j in range(n)) / n
    return total / 2


@pytest.mark.parametrize("seed", [0, 1])
def test_soft_info_nce_matches_loop_reference(seed):
    from rswb.losses.pha import soft_info_nce

    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = torch.rand(6, 6, generator=g) * (torch.rand(6, 6, generator=g) > 0.6) + torch.eye(6)
    torch.testing.assert_close(soft_info_nce(a, b, t, 0.2), soft_info_nce_reference(a, b, t, 0.2))


def test_soft_info_nce_with_identity_targets_is_plain_info_nce():
    from rswb.losses.pha import soft_info_nce

    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    torch.testing.assert_close(soft_info_nce(a, b, None, 0.1), cross_modal_info_nce(a, b, 0.1))


def test_soft_info_nce_rejects_bad_targets():
    from rswb.losses.pha import soft_info_nce

    a = torch.randn(3, 2)
    with pytest.raises(ValueError, match="targets"):
        soft_info_nce(a, a, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="targets"):
        soft_info_nce(a, a, torch.eye(3) - 0.5 * (1 - torch.eye(3)))


def test_overlap_targets_match_loop_reference():
    from rswb.losses.pha import overlap_targets

    rows, cols, p = torch.tensor([0, 3, 10, 0, 40]), torch.tensor([0, 2, 5, 0, 40]), 8
    got = overlap_targets(rows, cols, p)
    for i in range(5):
        for j in range(5):
            shared = max(0, p - abs(int(rows[i] - rows[j]))) * max(0, p - abs(int(cols[i] - cols[j])))
            assert float(got[i, j]) == pytest.approx(shared / p ** 2)
    assert float(got[0, 3]) == 1.0 and float(got[0, 4]) == 0.0  # a pixel drawn twice; patches that do not touch


def test_soft_negatives_want_overlapping_neighbours_close_where_hard_ones_push_them_apart():
    """Item 1 is item 0's overlapping neighbour: soft targets score it best near item 0, hard targets far from it."""
    from rswb.losses.pha import overlap_targets, soft_info_nce

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 16, generator=g)
    near, far = base.clone(), base.clone()
    near[1] = base[0] + 0.05 * torch.randn(16, generator=g)  # almost the same ground, almost the same embedding
    far[1] = -base[0]
    t = overlap_targets(torch.tensor([0, 1, 50, 90]), torch.tensor([0, 1, 50, 90]), 16)
    assert float(soft_info_nce(near, near, t, 0.1)) < float(soft_info_nce(far, far, t, 0.1))
    assert float(soft_info_nce(near, near, None, 0.1)) > float(soft_info_nce(far, far, None, 0.1))


def test_pretrain_loss_terms_by_objective():
    from rswb.losses.pha import PretrainLoss, decorrelation_loss, soft_info_nce

    g = torch.Generator().manual_seed(1)
    v1 = {f"{h}_{m}": torch.randn(6, 4, generator=g) for h in ("shared", "specific") for m in ("ms", "pan")}
    v2 = {k: torch.randn(6, 4, generator=g) for k in v1}
    cross = PretrainLoss("cross", 0.2)(v1, v2)
    within = PretrainLoss("within", 0.2)(v1, v2)
    assert set(within) == {"within_loss"}
    assert {"within_loss", "cross_loss", "orth_loss", "sim_cross"} <= set(cross)
    want_within = (soft_info_nce(v1["specific_ms"], v2["specific_ms"], None, 0.2)
                   + soft_info_nce(v1["specific_pan"], v2["specific_pan"], None, 0.2)) / 2
    torch.testing.assert_close(within["within_loss"], want_within)
    want_cross = (soft_info_nce(v1["shared_ms"], v2["shared_pan"], None, 0.2)
                  + soft_info_nce(v2["shared_ms"], v1["shared_pan"], None, 0.2)) / 2
    torch.testing.assert_close(cross["cross_loss"], want_cross)
    want_orth = sum(decorrelation_loss(v[f"shared_{m}"], v[f"specific_{m}"]) for v in (v1, v2)
                    for m in ("ms", "pan")) / 4
    torch.testing.assert_close(cross["orth_loss"], want_orth)
    with pytest.raises(ValueError, match="objective"):
        PretrainLoss("none")


def test_pseudo_label_terms_match_loop_reference():
    from rswb.losses.pha import pseudo_label_terms

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=g) * 3
    got = pseudo_label_terms(logits, 0.7)
    total, kept = 0.0, 0
    for row in logits:
        p = torch.softmax(row, 0)
        if float(p.max()) >= 0.7:
            total = total - torch.log(p[int(p.argmax())])
            kept += 1
    assert 0 < kept < 12  # the case has items on both sides of the threshold
    torch.testing.assert_close(got["pseudo_loss"], total / 12)
    assert float(got["pseudo_share"]) == pytest.approx(kept / 12)
    # The targets are detached: the gradient is that of a cross-entropy towards fixed labels.
    x = logits.clone().requires_grad_(True)
    pseudo_label_terms(x, 0.7)["pseudo_loss"].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_terms(logits, 1.0)
