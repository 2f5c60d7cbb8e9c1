"""Partial fine-tuning: the cached path (frozen trunk once, the pieces after the cut with gradients) computes what the
whole network computes with those pieces unfrozen: the same outputs and the same gradients."""

from __future__ import annotations

import pytest
import torch

from rswb.registry import create_model

CASES = [("small_cnn", {}, ["stage1", "stage3", "stage4"]),
         ("efficientnet_lite0", {"pretrained": False}, ["stage4", "stage6", "stage7", "head"])]


def _net(name, kwargs):
    torch.manual_seed(0)
    return create_model(name, **kwargs).freeze_bn()  # BN statistics fixed, as the partial profile trains


@pytest.mark.parametrize("name,kwargs,cuts", CASES)
def test_cached_path_gives_the_same_outputs_and_gradients(name, kwargs, cuts):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for cut in cuts:
        full, part = _net(name, kwargs).freeze_until(cut).train(), _net(name, kwargs).freeze_until(cut).train()
        trainable = [n for n, p in full.named_parameters() if p.requires_grad]
        assert trainable and len(trainable) < len(list(full.parameters()))
        ref = full.forward_features(x)
        with torch.no_grad():
            cache = part.forward_until(x, cut)
        got = part.forward_from(cache.pop("cut"), cut, cache)
        assert list(got) == list(ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
        (ref["pooled"] ** 2).sum().backward()
        (got["pooled"] ** 2).sum().backward()
        grads_full = dict(full.named_parameters())
        for n, p in part.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads_full[n].grad, rtol=1e-6, atol=1e-7, msg=f"{cut}: {n}")
            else:
                assert p.grad is None and grads_full[n].grad is None, n  # the frozen trunk gets no gradient


def test_a_float16_cache_stays_within_float16_rounding():
    net = _net("efficientnet_lite0", {"pretrained": False}).freeze_until("stage6").eval()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.forward_features(x)["pooled"]
        cut = net.forward_until(x, "stage6")["cut"].half().float()
        got = net.forward_from(cut, "stage6")["pooled"]
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-3)


def test_unknown_cut_points_are_named():
    net = create_model("small_cnn")
    assert net.cut_points() == ["stage1", "stage2", "stage3", "stage4"]
    with pytest.raises(ValueError, match="unknown cut point 'head'.*stage1, stage2"):
        net.forward_until(torch.rand(1, 3, 32, 32), "head")


def test_dhcl_reads_a_cached_cut_like_the_images():
    torch.manual_seed(0)
    model = create_model("dhcl", backbone="small_cnn", pretrained=False, bits=8, num_classes=3,
                         train_from="stage3").eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        cache = model.backbone.forward_until(x, "stage3")
        a = model({"image": x})
        b = model({"cut": cache.pop("cut"), "taps": cache})
    torch.testing.assert_close(a["code"], b["code"])
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("stem", "stages.0", "stages.1")) for n in frozen)
    with pytest.raises(ValueError, match="not frozen as a whole"):
        create_model("dhcl", backbone="small_cnn", pretrained=False, frozen_backbone=True, train_from="stage3")
