"""Grad-CAM (rswb.models.explain): the analytic case of a linear read-out, a known location, frozen weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rswb.models.explain import grad_cam


class ConvGapLinear(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_linear_read_out_gives_the_class_activation_map():
    """For conv -> global average pool -> linear, d y_c / d A_k(i, j) = W[c, k] / (h w), so Grad-CAM is
    ReLU(sum_k W[c, k] A_k) / (h w): the class activation map of Zhou et al., computed here by a loop."""
    torch.manual_seed(0)
    model = ConvGapLinear().eval()
    x = torch.randn(4, 2, 6, 7)
    target = torch.tensor([0, 2, 1, 2])
    out = grad_cam(lambda inp: model(inp).gather(1, target[:, None])[:, 0], model.conv, x, normalize=False)
    a = model.conv(x).detach()
    want = torch.zeros(4, 6, 7)
    for b in range(4):
        for k in range(5):
            want[b] += model.fc.weight[target[b], k].detach() * a[b, k] / (6 * 7)
    torch.testing.assert_close(out["cam"], want.clamp_min(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["score"], model(x).gather(1, target[:, None])[:, 0].detach())


def test_the_map_peaks_where_the_evidence_is_even_with_frozen_weights():
    # A detector of bright pixels: the score is the mean response, so the evidence is the bright square.
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(1.0)
    conv.requires_grad_(False)
    x = torch.zeros(2, 1, 8, 8)
    x[0, :, 1:3, 5:7] = 1.0
    x[1, :, 6:8, 0:2] = 1.0
    cam = grad_cam(lambda inp: conv(inp).mean((1, 2, 3)), conv, x)["cam"]
    assert cam.shape == (2, 8, 8) and float(cam.max()) == pytest.approx(1.0)
    assert torch.equal(cam[0] > 0.5, x[0, 0] > 0.5) and torch.equal(cam[1] > 0.5, x[1, 0] > 0.5)
    assert not any(p.grad is not None for p in conv.parameters())  # nothing accumulated in the model


def test_a_layer_that_does_not_run_is_a_clear_error():
    model = ConvGapLinear().eval()
    with pytest.raises(RuntimeError, match="did not run"):
        grad_cam(lambda inp: inp.sum((1, 2, 3)), model.conv, torch.randn(1, 2, 4, 4))
    with pytest.raises(RuntimeError, match="not a"):
        grad_cam(lambda inp: model.fc(inp).sum(1), model.fc, torch.randn(2, 5))
