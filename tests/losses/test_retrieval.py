"""FISVL and KAMCL retrieval losses against slow loop references (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rswb.losses.retrieval import (
    affiliation_loss,
    concept_bce,
    momentum_info_nce,
    multi_positive_info_nce,
    scene_adaptive_triplet,
    value_weighted_info_nce,
)

F64 = torch.float64
SIZES = [2, 3, 5, 8]
SEEDS = [0, 1]


def _batch(b: int, seed: int):
    """Cosine-like similarities, image ids with repeats (pigeonhole for b >= 3) and mixed scene labels."""
    g = torch.Generator().manual_seed(seed)
    sim = torch.tanh(0.8 * torch.randn(b, b, generator=g, dtype=F64))
    ids = torch.randint(0, max(1, math.ceil(0.6 * b)), (b,), generator=g)
    labels = torch.randint(0, 3, (b,), generator=g)
    labels[0], labels[1] = 0, 1  # at least two scenes
    if b >= 3:
        assert len(set(ids.tolist())) < b
    return sim, ids, labels


# ---------------------------------------------------------------------------------------------------------------
# (1) and (4): multi-positive InfoNCE, plain and value-weighted


def _mp_nce_reference(sim, ids, t, values=None):
    """MIL-NCE by loops; ``values[j]`` scales column j's logits (1 without values). Torch scalars: differentiable."""
    n = sim.shape[0]
    ids = ids.tolist()

    def logit(i, j):
        v = 1.0 if values is None else values[j]
        return v * sim[i, j] / t

    total = sim.new_zeros(())
    for i in range(n):
        num = sum(torch.exp(logit(i, j)) for j in range(n) if ids[j] == ids[i])
        den = sum(torch.exp(logit(i, j)) for j in range(n))
        total = total - 0.5 * torch.log(num / den) / n
    for j in range(n):
        num = sum(torch.exp(logit(i, j)) for i in range(n) if ids[i] == ids[j])
        den = sum(torch.exp(logit(i, j)) for i in range(n))
        total = total - 0.5 * torch.log(num / den) / n
    return total


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_multi_positive_info_nce_matches_loops_with_gradients(b, seed):
    sim, ids, _ = _batch(b, seed)
    sim.requires_grad_()
    temp = torch.tensor(0.1, dtype=F64, requires_grad=True)
    got = multi_positive_info_nce(sim, ids, temp)
    ref = _mp_nce_reference(sim, ids, temp)
    assert got.dtype == F64 and got.ndim == 0
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, (sim, temp)), torch.autograd.grad(ref, (sim, temp)))


def test_multi_positive_info_nce_pools_same_image_captions():
    sim, _, _ = _batch(5, 3)
    distinct = torch.arange(5)
    # All ids distinct: the plain symmetric cross-entropy with the diagonal as target.
    plain = 0.5 * (F.cross_entropy(sim / 0.2, distinct) + F.cross_entropy(sim.t() / 0.2, distinct))
    torch.testing.assert_close(multi_positive_info_nce(sim, distinct, 0.2), plain)
    # Pairs 0 and 1 are one image: their cross entries join the numerator, so the loss drops.
    shared = torch.tensor([0, 0, 2, 3, 4])
    assert float(multi_positive_info_nce(sim, shared, 0.2)) < float(plain)
    # One image only: every entry is a positive, -log(1) = 0.
    assert float(multi_positive_info_nce(sim, torch.zeros(5, dtype=torch.long), 0.2)) == pytest.approx(0.0, abs=1e-12)


def test_multi_positive_info_nce_is_stable_at_small_temperatures():
    sim, ids, _ = _batch(6, 4)
    loss = multi_positive_info_nce(sim.float(), ids, 1e-3)  # logits up to 1000: exp overflows float32
    assert torch.isfinite(loss)


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_weighted_info_nce_matches_loops_with_gradients(b, seed):
    sim, ids, _ = _batch(b, seed)
    g = torch.Generator().manual_seed(100 + seed)
    values = (0.5 + torch.rand(b, generator=g, dtype=F64)).requires_grad_()
    sim.requires_grad_()
    temp = torch.tensor(0.1, dtype=F64, requires_grad=True)
    got = value_weighted_info_nce(sim, ids, values, temp)
    ref = _mp_nce_reference(sim, ids, temp, values)
    torch.testing.assert_close(got, ref)
    inputs = (sim, values, temp)
    torch.testing.assert_close(torch.autograd.grad(got, inputs), torch.autograd.grad(ref, inputs))


def test_value_weighted_info_nce_with_unit_values_equals_multi_positive_exactly():
    for b, seed in [(3, 0), (5, 1), (8, 2)]:
        sim, ids, _ = _batch(b, seed)
        for temp in (0.07, torch.tensor(0.3, dtype=F64)):
            plain = multi_positive_info_nce(sim, ids, temp)
            assert torch.equal(value_weighted_info_nce(sim, ids, torch.ones(b, dtype=F64), temp), plain)
        # Non-unit values do change the loss (the equality above is not vacuous).
        values = torch.ones(b, dtype=F64)
        values[0] = 2.0
        weighted = value_weighted_info_nce(sim, ids, values, 0.07)
        assert not torch.allclose(weighted, multi_positive_info_nce(sim, ids, 0.07))


def test_value_weighting_scales_a_column_in_both_directions():
    # Scaling column j by v equals feeding sim with column j multiplied by v (both softmaxes see the scaled column).
    sim, ids, _ = _batch(5, 7)
    values = torch.tensor([1.0, 1.7, 1.0, 0.4, 1.0], dtype=F64)
    scaled = sim * values[None, :]
    torch.testing.assert_close(value_weighted_info_nce(sim, ids, values, 0.1),
                               multi_positive_info_nce(scaled, ids, 0.1))


def test_info_nce_variants_reject_bad_inputs():
    sim, ids, _ = _batch(4, 0)
    with pytest.raises(ValueError, match="square"):
        multi_positive_info_nce(torch.zeros(3, 4), torch.arange(3), 0.1)
    with pytest.raises(ValueError, match="square"):
        multi_positive_info_nce(torch.zeros(0, 0), torch.arange(0), 0.1)
    with pytest.raises(ValueError, match="img_ids"):
        multi_positive_info_nce(sim, torch.arange(3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        multi_positive_info_nce(sim, ids, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        multi_positive_info_nce(sim, ids, torch.ones(2))
    with pytest.raises(ValueError, match="values"):
        value_weighted_info_nce(sim, ids, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="positive"):
        value_weighted_info_nce(sim, ids, torch.tensor([1.0, 0.0, 1.0, 1.0]), 0.1)


# ---------------------------------------------------------------------------------------------------------------
# (2) affiliation loss


def _affiliation_reference(img, txt, labels, t):
    n = img.shape[0]
    labels = labels.tolist()
    imgn = [img[i] / img[i].norm() for i in range(n)]
    txtn = [txt[i] / txt[i].norm() for i in range(n)]
    classes = sorted(set(labels))

    def centre(vectors, c):
        members = [vectors[i] for i in range(n) if labels[i] == c]
        mean = sum(members) / len(members)
        return mean / mean.norm()

    centres_img = [centre(imgn, c) for c in classes]
    centres_txt = [centre(txtn, c) for c in classes]
    total = img.new_zeros(())
    for i in range(n):
        own = classes.index(labels[i])
        for x, centres in ((imgn[i], centres_txt), (txtn[i], centres_img)):
            logits = [torch.dot(x, c) / t for c in centres]
            total = total - (logits[own] - torch.log(sum(torch.exp(v) for v in logits)))
    return total / (2 * n)


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_affiliation_loss_matches_loops_with_gradients(b, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 6, generator=g, dtype=F64, requires_grad=True)
    txt = torch.randn(b, 6, generator=g, dtype=F64, requires_grad=True)
    _, _, labels = _batch(b, seed)
    labels = labels * 7 + 3  # sparse, unordered class ids: no fixed class count
    got = affiliation_loss(img, txt, labels, 0.1)
    ref = _affiliation_reference(img, txt, labels, 0.1)
    assert got.dtype == F64
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, (img, txt)), torch.autograd.grad(ref, (img, txt)))


def test_affiliation_loss_ignores_batch_order_and_scale_and_uses_the_other_modality():
    g = torch.Generator().manual_seed(11)
    img, txt = torch.randn(9, 5, generator=g, dtype=F64), torch.randn(9, 5, generator=g, dtype=F64)
    labels = torch.tensor([4, 1, 4, 0, 1, 1, 0, 4, 2])
    base = affiliation_loss(img, txt, labels)
    perm = torch.randperm(9, generator=g)
    assert not torch.equal(perm, torch.arange(9))
    torch.testing.assert_close(affiliation_loss(img[perm], txt[perm], labels[perm]), base)
    torch.testing.assert_close(affiliation_loss(3.0 * img, 0.5 * txt, labels), base)  # normalised inside
    # Permuting the labels alone (a different assignment) changes the loss.
    assert not torch.allclose(affiliation_loss(img, txt, labels[perm]), base)
    # Image i is classified against the TEXT centres: texts aligned with their class make the image term small even
    # when the images themselves are far from every other image of their class.
    onehot = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).to(F64)
    imgs = onehot + 0.01 * torch.randn(6, 3, generator=g, dtype=F64)
    scene = torch.tensor([0, 1, 2, 0, 1, 2])
    aligned = affiliation_loss(imgs, onehot, scene, 0.1)
    swapped = affiliation_loss(imgs, onehot[[1, 2, 0, 1, 2, 0]], scene, 0.1)  # texts point at the wrong classes
    assert float(aligned) < 1e-3 < float(swapped)


def test_affiliation_loss_edge_cases_and_errors():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert float(affiliation_loss(img, txt, torch.full((4,), 5))) == pytest.approx(0.0, abs=1e-6)  # one class
    assert affiliation_loss(img.bfloat16(), txt.bfloat16(), torch.tensor([0, 1, 0, 1])).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        affiliation_loss(img, txt[:3], torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        affiliation_loss(img, txt, torch.arange(3))
    with pytest.raises(ValueError, match="temperature"):
        affiliation_loss(img, txt, torch.arange(4), -1.0)


# ---------------------------------------------------------------------------------------------------------------
# (3) scene-adaptive triplet


def _triplet_reference(sim, ids, labels, epoch, beta1=0.1, beta2=-0.1, margin=0.2):
    """Hardest negative of another image per row and per column, weighted by scene; torch scalars (differentiable)."""
    n = sim.shape[0]
    ids, labels = ids.tolist(), labels.tolist()
    total = (0 * sim).sum()  # on the graph even when no row has a negative
    values = sim.detach()
    for i in range(n):  # image i -> captions
        others = [j for j in range(n) if ids[j] != ids[i]]
        if others:
            j = max(others, key=lambda c: float(values[i, c]))
            w = math.exp((beta2 if labels[j] == labels[i] else beta1) * epoch)
            total = total + torch.relu(margin - sim[i, i] + w * sim[i, j])
    for j in range(n):  # caption j -> images
        others = [i for i in range(n) if ids[i] != ids[j]]
        if others:
            i = max(others, key=lambda r: float(values[r, j]))
            w = math.exp((beta2 if labels[i] == labels[j] else beta1) * epoch)
            total = total + torch.relu(margin - sim[j, j] + w * sim[i, j])
    return total / n


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("epoch", [0, 3, 7.5])
def test_scene_adaptive_triplet_matches_loops_with_gradients(b, seed, epoch):
    sim, ids, labels = _batch(b, seed)
    sim.requires_grad_()
    got = scene_adaptive_triplet(sim, ids, labels, epoch, beta1=0.1, beta2=-0.1, margin=0.5)
    ref = _triplet_reference(sim, ids, labels, epoch, 0.1, -0.1, 0.5)
    assert got.dtype == F64 and got.ndim == 0
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, sim), torch.autograd.grad(ref, sim))


def test_scene_adaptive_triplet_never_mines_a_caption_of_the_same_image_and_backpropagates_negatives():
    # Pairs 0 and 1 are the same image. sim[0, 1] (row 0) and sim[1, 0] (column 0) are the largest off-diagonal
    # entries of their row / column: the public code would have taken them as hardest negatives.
    sim = torch.tensor([[0.5, 0.9, 0.3, 0.1],
                        [0.8, 0.6, 0.4, 0.0],
                        [0.2, 0.1, 0.7, 0.3],
                        [0.0, 0.2, 0.1, 0.6]], dtype=F64, requires_grad=True)
    ids, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 1])
    loss = scene_adaptive_triplet(sim, ids, labels, epoch=2)
    torch.testing.assert_close(loss, _triplet_reference(sim, ids, labels, 2))
    (grad,) = torch.autograd.grad(loss, sim)
    assert float(grad[0, 1]) == 0.0 and float(grad[1, 0]) == 0.0  # same image: never a negative
    # Row 0's hardest negative is column 2 (another scene: w = exp(0.1 * 2)); column 2 itself picks row 1, so the
    # whole gradient of sim[0, 2] is row 0's w / B: it is not detached.
    assert float(grad[0, 2]) == pytest.approx(math.exp(0.2) / 4, rel=1e-12)
    # Mining over all off-diagonal entries (the bug) would give a larger loss here.
    buggy = _triplet_reference(sim, torch.arange(4), labels, 2)
    assert float(buggy.detach()) > float(loss.detach()) + 0.1


def test_scene_adaptive_triplet_weights_are_floats():
    # Row 0's and column 1's hardest negative is sim[0, 1] = 0.4; the other two hinges are inactive.
    sim = torch.tensor([[0.5, 0.4], [0.1, 0.5]], dtype=F64)
    ids = torch.tensor([0, 1])
    other_scene = scene_adaptive_triplet(sim, ids, torch.tensor([0, 1]), epoch=3, beta1=0.1)
    w = math.exp(0.3)
    assert w == pytest.approx(1.3499, abs=1e-4)
    assert float(other_scene) == pytest.approx(2 * (0.2 - 0.5 + w * 0.4) / 2, rel=1e-12)
    assert float(other_scene) != pytest.approx(2 * (0.2 - 0.5 + 1 * 0.4) / 2)  # int(exp(0.3)) = 1
    # Same scene, margin 0.3: w = exp(-0.3) ~ 0.74 keeps the 0.4 hinges active (int(exp(-0.3)) = 0 would not).
    same_scene = scene_adaptive_triplet(sim, ids, torch.tensor([4, 4]), epoch=3, beta2=-0.1, margin=0.3)
    w = math.exp(-0.3)
    assert float(same_scene) == pytest.approx(2 * (0.3 - 0.5 + w * 0.4) / 2, rel=1e-12)
    assert float(same_scene) > 0.09


def test_scene_adaptive_triplet_edge_cases_and_errors():
    sim, _, labels = _batch(4, 1)
    # One image only: no negatives anywhere, a zero loss (not -inf or nan), with a zero gradient.
    sim.requires_grad_()
    loss = scene_adaptive_triplet(sim, torch.zeros(4, dtype=torch.long), labels, epoch=1)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, sim)
    assert torch.equal(grad, torch.zeros_like(grad))
    # Everything beaten by the margin: zero.
    easy = torch.full((3, 3), -0.5) + 1.5 * torch.eye(3)
    assert float(scene_adaptive_triplet(easy, torch.arange(3), torch.arange(3), epoch=0)) == 0.0
    assert scene_adaptive_triplet(sim.detach().half(), torch.arange(4), labels, 1).dtype == torch.float32
    with pytest.raises(ValueError, match="square"):
        scene_adaptive_triplet(torch.zeros(2, 3), torch.arange(2), torch.arange(2), 0)
    with pytest.raises(ValueError, match="two pairs"):
        scene_adaptive_triplet(torch.zeros(1, 1), torch.arange(1), torch.arange(1), 0)
    with pytest.raises(ValueError, match="labels"):
        scene_adaptive_triplet(sim, torch.arange(4), torch.arange(5), 0)
    with pytest.raises(ValueError, match="img_ids"):
        scene_adaptive_triplet(sim, torch.arange(2), labels, 0)


# ---------------------------------------------------------------------------------------------------------------
# (5) momentum InfoNCE


def _moco_reference(q, k, queue, t, ids=None, queue_ids=None):
    """Per query: [positive, allowed in-batch keys, allowed queue entries], -log softmax at the positive."""
    n, size = q.shape[0], queue.shape[0]
    qn = [q[i] / q[i].norm() for i in range(n)]
    kn = [k[i] / k[i].norm() for i in range(n)]
    un = [queue[m] / queue[m].norm() for m in range(size)]
    total = q.new_zeros(())
    for i in range(n):
        positive = torch.dot(qn[i], kn[i]) / t
        terms = [positive]
        terms += [torch.dot(qn[i], kn[j]) / t for j in range(n) if j != i and (ids is None or ids[j] != ids[i])]
        terms += [torch.dot(qn[i], un[m]) / t for m in range(size) if ids is None or queue_ids[m] != ids[i]]
        total = total - (positive - torch.log(sum(torch.exp(x) for x in terms)))
    return total / n


def _moco_inputs(b, size, seed, d=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=F64)
    k = q + 0.7 * torch.randn(b, d, generator=g, dtype=F64)
    queue = torch.randn(size, d, generator=g, dtype=F64)
    ids = torch.randint(0, max(1, math.ceil(0.6 * b)), (b,), generator=g)
    queue_ids = torch.cat([ids[torch.randint(0, b, (size // 2,), generator=g)], 100 + torch.arange(size - size // 2)])
    return q, k, queue, ids, queue_ids


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("size", [0, 1, 6])
@pytest.mark.parametrize("with_ids", [False, True])
def test_momentum_info_nce_matches_loops_with_gradients(b, size, with_ids):
    q, k, queue, ids, queue_ids = _moco_inputs(b, size, seed=10 * b + size)
    if not with_ids:
        ids = queue_ids = None
    q.requires_grad_()
    temp = torch.tensor(0.2, dtype=F64, requires_grad=True)
    got = momentum_info_nce(q, k, queue, temp, ids, queue_ids)
    ref = _moco_reference(q, k, queue, temp, None if ids is None else ids.tolist(),
                          None if queue_ids is None else queue_ids.tolist())
    assert got.dtype == F64 and got.ndim == 0
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, (q, temp)), torch.autograd.grad(ref, (q, temp)))


def test_momentum_info_nce_without_queue_or_ids_is_plain_cross_entropy_and_keys_are_constants():
    q, k, _, _, _ = _moco_inputs(6, 0, seed=3)
    k.requires_grad_()
    queue = torch.zeros(0, 5, dtype=F64, requires_grad=True)
    loss = momentum_info_nce(q, k, queue, 0.07)
    plain = F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.07, torch.arange(6))
    torch.testing.assert_close(loss, plain)
    assert not loss.requires_grad  # q has no gradient and k, queue are detached inside
    q.requires_grad_()
    loss = momentum_info_nce(q, k, torch.randn(3, 5, dtype=F64, requires_grad=True), 0.07)
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_momentum_info_nce_masks_other_views_of_the_same_image():
    q, k, queue, _, _ = _moco_inputs(4, 3, seed=8)
    ids = torch.tensor([0, 0, 1, 2])
    queue_ids = torch.tensor([1, 7, 7])
    masked = momentum_info_nce(q, k, queue, 0.1, ids, queue_ids)
    # Masking removes terms from the denominator: the loss drops below the unmasked one.
    assert float(masked) < float(momentum_info_nce(q, k, queue, 0.1))
    # Distinct ids that match nothing in the queue mask nothing.
    torch.testing.assert_close(momentum_info_nce(q, k, queue, 0.1, torch.arange(4), torch.tensor([9, 9, 9])),
                               momentum_info_nce(q, k, queue, 0.1))
    # A queue entry with the id of every query is invisible: same as leaving it out.
    full = torch.cat([queue, torch.randn(1, 5, dtype=F64)])
    torch.testing.assert_close(momentum_info_nce(q, k, full, 0.1, torch.zeros(4, dtype=torch.long),
                                                 torch.tensor([5, 5, 5, 0])),
                               momentum_info_nce(q, k, queue, 0.1, torch.zeros(4, dtype=torch.long),
                                                 torch.tensor([5, 5, 5])))
    # Every in-batch key and queue entry the same image: only the positive is left, -log(1) = 0.
    zero = momentum_info_nce(q, k, queue, 0.1, torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert float(zero) == pytest.approx(0.0, abs=1e-12)


def test_momentum_info_nce_rejects_bad_inputs():
    q, k, queue, ids, queue_ids = _moco_inputs(4, 3, seed=1)
    assert momentum_info_nce(q.half(), k.half(), queue.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="q and k"):
        momentum_info_nce(q, k[:3], queue)
    with pytest.raises(ValueError, match="queue"):
        momentum_info_nce(q, k, torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="queue_ids given without ids"):
        momentum_info_nce(q, k, queue, queue_ids=queue_ids)
    with pytest.raises(ValueError, match="without queue_ids"):
        momentum_info_nce(q, k, queue, ids=ids)
    with pytest.raises(ValueError, match="queue_ids"):
        momentum_info_nce(q, k, queue, ids=ids, queue_ids=queue_ids[:2])
    with pytest.raises(ValueError, match="ids"):
        momentum_info_nce(q, k, queue, ids=ids[:2], queue_ids=queue_ids)
    with pytest.raises(ValueError, match="temperature"):
        momentum_info_nce(q, k, queue, 0.0)
    # ids with an empty queue need no queue_ids.
    momentum_info_nce(q, k, queue[:0], 0.1, ids)


# ---------------------------------------------------------------------------------------------------------------
# (6) concept BCE


def _bce_reference(logits, targets):
    b, c = logits.shape
    total = logits.new_zeros(())
    for i in range(b):
        for j in range(c):
            p = 1.0 / (1.0 + torch.exp(-logits[i, j]))
            total = total - (targets[i, j] * torch.log(p) + (1 - targets[i, j]) * torch.log(1 - p))
    return total / (b * c)


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (6, 2)])
def test_concept_bce_matches_loops_with_gradients(shape):
    g = torch.Generator().manual_seed(shape[0] * 10 + shape[1])
    logits = (2 * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_()
    targets = torch.rand(*shape, generator=g, dtype=F64)
    targets[0, 0] = 1.0  # the bounds are allowed
    if targets.numel() > 1:
        targets.view(-1)[1] = 0.0
    got = concept_bce(logits, targets)
    ref = _bce_reference(logits, targets)
    assert got.dtype == F64 and got.ndim == 0
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, logits), torch.autograd.grad(ref, logits))


def test_concept_bce_rejects_bad_inputs():
    assert concept_bce(torch.zeros(2, 3, dtype=torch.bfloat16), torch.full((2, 3), 0.5)).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        concept_bce(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        concept_bce(torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        concept_bce(torch.zeros(2, 2), torch.tensor([[0.0, 1.2], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        concept_bce(torch.zeros(2, 2), torch.tensor([[0.0, -0.1], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        concept_bce(torch.zeros(2, 2), torch.tensor([[0.0, float("nan")], [0.5, 0.5]]))


def _grouped_moco_reference(q, k, queue, t, ids, queue_ids, groups, queue_groups):
    """Loops: positives = own key + every key of the query's text group; same-image others left out."""
    n, size = q.shape[0], queue.shape[0]
    qn = [q[i] / q[i].norm() for i in range(n)]
    keys = [k[j] / k[j].norm() for j in range(n)] + [queue[m] / queue[m].norm() for m in range(size)]
    key_ids, key_groups = list(ids) + list(queue_ids), list(groups) + list(queue_groups)
    total = q.new_zeros(())
    for i in range(n):
        pos, kept = [], []
        for j in range(n + size):
            logit = torch.dot(qn[i], keys[j]) / t
            if j == i or key_groups[j] == groups[i]:
                pos.append(logit)
                kept.append(logit)
            elif key_ids[j] != ids[i]:
                kept.append(logit)
        total = total - torch.log(sum(torch.exp(x) for x in pos) / sum(torch.exp(x) for x in kept))
    return total / n


@pytest.mark.parametrize("b", [2, 5, 9])
@pytest.mark.parametrize("size", [0, 6])
def test_grouped_momentum_info_nce_matches_loops_with_gradients(b, size):
    q, k, queue, ids, queue_ids = _moco_inputs(b, size, seed=7 * b + size)
    g = torch.Generator().manual_seed(b)
    groups = torch.randint(0, max(1, b // 2), (b,), generator=g)
    queue_groups = torch.randint(0, b, (size,), generator=g)
    q.requires_grad_()
    temp = torch.tensor(0.2, dtype=F64, requires_grad=True)
    got = momentum_info_nce(q, k, queue, temp, ids, queue_ids, groups, queue_groups)
    ref = _grouped_moco_reference(q, k, queue, temp, ids.tolist(), queue_ids.tolist(), groups.tolist(),
                                  queue_groups.tolist())
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, (q, temp)), torch.autograd.grad(ref, (q, temp)))
    # Groups that match nothing but the own key give the ungrouped loss exactly; shared groups change it.
    alone = momentum_info_nce(q, k, queue, temp, ids, queue_ids, 1000 + torch.arange(b), -1 - torch.arange(size))
    torch.testing.assert_close(alone, momentum_info_nce(q, k, queue, temp, ids, queue_ids))
    if b > 2:
        assert not torch.allclose(got, alone)
    with pytest.raises(ValueError, match="groups need ids"):
        momentum_info_nce(q, k, queue, temp, None, None, groups, queue_groups)


def test_same_item_mask_with_an_image_and_a_text_group_column():
    from rswb.losses.contrastive import same_item_mask

    ids = torch.tensor([[0, 5], [0, 6], [1, 5], [2, 7]])  # rows 0-1 share an image, rows 0-2 a caption string
    mask = same_item_mask(ids, 4, torch.device("cpu"))
    assert mask.nonzero().tolist() == [[0, 1], [0, 2], [1, 0], [2, 0]]
    assert torch.equal(same_item_mask(ids[:, 0], 4, torch.device("cpu")),
                       same_item_mask(ids[:, :1], 4, torch.device("cpu")))
