"""DHCL loss terms against brute-force references on seeded random inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rswb.losses.hashing import DHCLLoss, distillation_loss, quantization_loss


def proxy_anchor_reference(x, labels, proxies, alpha, margin):
    """Proxy Anchor (Kim et al. 2020) written as loops over proxies and samples, cosine similarity."""
    c = proxies.shape[0]
    xs = [v / v.norm() for v in x]
    ps = [p / p.norm() for p in proxies]
    pos_sum, pos_proxies, neg_sum = 0.0, 0, 0.0
    for k in range(c):
        pos = [math.exp(-alpha * (float(xs[i] @ ps[k]) - margin)) for i in range(len(xs)) if labels[i] == k]
        neg = [math.exp(alpha * (float(xs[i] @ ps[k]) + margin)) for i in range(len(xs)) if labels[i] != k]
        if pos:
            pos_sum += math.log(1 + sum(pos))
            pos_proxies += 1
        neg_sum += math.log(1 + sum(neg))
    return pos_sum / pos_proxies + neg_sum / c


@pytest.mark.parametrize("seed", range(5))
def test_proxy_anchor_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    c, k, b = 5, 16, 12
    loss = DHCLLoss(c, k, alpha=32, margin=0.1).double()
    code = torch.tanh(torch.randn(b, k, generator=g, dtype=torch.float64))
    labels = torch.randint(0, c - 1, (b,), generator=g)  # the last class has no sample: its positive term is skipped
    with torch.no_grad():
        loss.proxy_anchor.proxies.copy_(torch.randn(c, k, generator=g, dtype=torch.float64))
    got = loss.proxy_anchor(code, labels)
    ref = proxy_anchor_reference(code, labels.tolist(), loss.proxies.detach(), 32, 0.1)
    assert float(got.detach()) == pytest.approx(ref, rel=1e-9)


def test_dhcl_terms_and_gradients():
    g = torch.Generator().manual_seed(0)
    loss = DHCLLoss(4, 8)
    code = torch.tanh(torch.randn(6, 8, generator=g)).requires_grad_()
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    terms = loss(code=code, logits=logits, label=labels, features=torch.zeros(6, 3), index=torch.arange(6))
    assert set(terms) == {"proxy_loss", "cls_loss", "quant_loss", "acc"}
    assert float(terms["acc"]) == float((logits.argmax(1) == labels).float().mean())
    terms.pop("acc")
    assert float(terms["cls_loss"]) == pytest.approx(float(F.cross_entropy(logits, labels)))
    ref_quant = sum((abs(float(v)) - 1) ** 2 for v in code.detach().flatten()) / code.numel()
    assert float(terms["quant_loss"].detach()) == pytest.approx(ref_quant, rel=1e-6)
    sum(terms.values()).backward()
    assert code.grad is not None and loss.proxies.grad is not None and loss.proxies.grad.abs().sum() > 0


def test_quantization_loss_hand_case():
    assert float(quantization_loss(torch.tensor([[1.0, -1.0], [0.0, 0.5]]))) == pytest.approx((0 + 0 + 1 + 0.25) / 4)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_targets():
    torch.manual_seed(0)
    logits, label = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    code = torch.tanh(torch.randn(6, 8))
    eps = 0.1
    got = DHCLLoss(4, 8, label_smoothing=eps)(code, logits, label)["cls_loss"]
    target = torch.full((6, 4), eps / 4)
    target[torch.arange(6), label] += 1 - eps  # the slow reference: the smoothed one-hot, by hand
    want = -(target * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(got, want, atol=1e-6)
    plain = DHCLLoss(4, 8)(code, logits, label)["cls_loss"]
    assert not torch.allclose(got, plain)
    with pytest.raises(ValueError, match="label_smoothing"):
        DHCLLoss(4, 8, label_smoothing=1.0)


def distillation_reference(logits, target, temperature):
    """T^2 KL(target || softmax(logits / T)), one sample and one class at a time."""
    total = 0.0
    for z, p in zip(logits.tolist(), target.tolist()):
        zs = [v / temperature for v in z]
        log_norm = math.log(sum(math.exp(v) for v in zs))
        total += sum(pi * (math.log(pi) - (zi - log_norm)) for pi, zi in zip(p, zs) if pi > 0)
    return temperature**2 * total / len(logits)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_matches_a_loop_reference_and_torch_kl_div(temperature):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    target = torch.softmax(torch.randn(7, 5, generator=g, dtype=torch.float64), 1)
    target[0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)  # a zero probability contributes nothing
    got = distillation_loss(logits, target, temperature)
    assert float(got) == pytest.approx(distillation_reference(logits, target, temperature), rel=1e-9)
    peer = F.kl_div(F.log_softmax(logits / temperature, 1), target, reduction="batchmean") * temperature**2
    assert float(got) == pytest.approx(float(peer), rel=1e-9)
    # The target the student already matches costs nothing; any other costs more.
    assert float(distillation_loss(logits, torch.softmax(logits / temperature, 1), temperature)) == pytest.approx(0.0,
                                                                                                             abs=1e-12)
    assert float(got) > 0


def test_dhcl_loss_adds_the_distillation_term_only_with_teacher_targets():
    torch.manual_seed(0)
    loss = DHCLLoss(4, 8, distill_temperature=2.0)
    code, logits, label = torch.tanh(torch.randn(6, 8)), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert "distill_loss" not in loss(code, logits, label)
    target = torch.softmax(torch.randn(6, 4), 1)
    terms = loss(code, logits, label, soft_target=target)
    assert float(terms["distill_loss"]) == pytest.approx(distillation_reference(logits, target, 2.0), rel=1e-5)
    with pytest.raises(ValueError, match="distill_temperature must be positive"):
        DHCLLoss(4, 8, distill_temperature=0.0)
