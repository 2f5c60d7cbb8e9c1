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


def test_layercam_weighs_each_location_by_its_own_positive_gradient():
    """LayerCAM is ReLU(sum_c ReLU(dy/dA_c(i, j)) A_c(i, j)), checked by a loop on a random network."""
    torch.manual_seed(1)
    model = ConvGapLinear().eval()
    x = torch.randn(3, 2, 5, 6)
    target = torch.tensor([1, 0, 2])

    def score(inp):
        return torch.tanh(model(inp)).gather(1, target[:, None])[:, 0]

    out = grad_cam(score, model.conv, x, normalize=False, weighting="location")
    a = model.conv(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.tanh(model.fc(a.mean((2, 3)))).gather(1, target[:, None]).sum(), a)
    a = a.detach()
    want = torch.zeros(3, 5, 6)
    for b in range(3):
        for i in range(5):
            for j in range(6):
                want[b, i, j] = max(0.0, sum(max(0.0, float(g[b, c, i, j])) * float(a[b, c, i, j]) for c in range(5)))
    torch.testing.assert_close(out["cam"], want, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="weighting"):
        grad_cam(score, model.conv, x, weighting="pixel")


def test_multi_layer_gradcam_through_captum_equals_rswb_grad_cam_per_layer():
    from rswb.models.explain import combine_maps, multi_layer_cam

    torch.manual_seed(2)
    first, second = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 5, 3, stride=2, padding=1)
    fc = nn.Linear(5, 3)

    def score(inp):
        return fc(second(torch.relu(first(inp))).mean((2, 3)))[:, 1]

    x = torch.randn(2, 2, 8, 8)
    out = multi_layer_cam(score, {"a": first, "b": second}, x, method="gradcam")
    for name, layer in (("a", first), ("b", second)):  # captum's LayerGradCam against the hook written here
        torch.testing.assert_close(out["layers"][name], grad_cam(score, layer, x)["cam"], rtol=1e-4, atol=1e-6)
    assert out["layers"]["a"].shape == (2, 8, 8) and out["layers"]["b"].shape == (2, 4, 4)
    assert out["cam"].shape == (2, 8, 8) and float(out["cam"].amax((1, 2)).min()) == pytest.approx(1.0)
    torch.testing.assert_close(out["cam"], combine_maps([out["layers"]["a"], out["layers"]["b"]], (8, 8)))
    # LayerCAM of both layers from one pass equals each layer's own pass.
    both = multi_layer_cam(score, {"a": first, "b": second}, x, method="layercam")
    for name, layer in (("a", first), ("b", second)):
        torch.testing.assert_close(both["layers"][name], grad_cam(score, layer, x, weighting="location")["cam"])
    with pytest.raises(ValueError, match="method"):
        multi_layer_cam(score, {"a": first}, x, method="occlusion")


def test_combine_maps_averages_maps_scaled_to_one_on_the_output_grid():
    from rswb.models.explain import combine_maps

    fine = torch.zeros(1, 4, 4)
    fine[0, 0, 0] = 2.0  # scaled to 1 first, so its scale does not matter
    coarse = torch.ones(1, 1, 1)
    out = combine_maps([fine, coarse], (4, 4))
    want = (fine / 2 + 1) / 2
    torch.testing.assert_close(out, want / want.max())
