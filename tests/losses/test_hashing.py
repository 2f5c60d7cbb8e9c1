"""DHCL loss terms against brute-force references on seeded random inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rswb.losses.hashing import DHCLLoss, quantization_loss


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
