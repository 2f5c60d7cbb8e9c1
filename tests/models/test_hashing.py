"""DHCL model: semantic cue encoding, class-first Hamming ranking, forward/backward, frozen backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rswb.metrics.hashing import hamming_distance, pack_codes
from rswb.models.hashing import cue_bits, dhcl, semantic_cue


def test_cue_bits_and_hand_case():
    assert [cue_bits(c) for c in (2, 3, 4, 5, 21, 32, 33)] == [1, 2, 2, 3, 5, 5, 6]
    cue = semantic_cue(torch.tensor([0, 5, 20]), 21)
    assert cue.tolist() == [[-1, -1, -1, -1, -1], [-1, -1, 1, -1, 1], [1, -1, 1, -1, -1]]
    assert semantic_cue(torch.tensor([1]), 4, weight=3).tolist() == [[-1, -1, -1, 1, 1, 1]]


def test_default_cue_repeats_ranks_predicted_class_first():
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=16, num_classes=6).eval()
    enc = model.encode({"features": torch.randn(40, model.backbone.num_features)})
    codes = enc["code"].numpy().astype(np.int8)
    assert codes.shape == (40, 16 + 3 * 17)
    d = hamming_distance(pack_codes(codes), pack_codes(codes))
    pred = enc["pred"].numpy()
    same = pred[:, None] == pred[None, :]
    # Every item of the same predicted class is closer than every item of another predicted class.
    for q in range(40):
        if same[q].any() and (~same[q]).any():
            assert d[q][same[q]].max() < d[q][~same[q]].min()


def test_encode_without_cue_and_signs():
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=8, num_classes=4, cue=False).eval()
    enc = model.encode({"image": torch.rand(3, 3, 64, 64)})
    assert enc["code"].shape == (3, 8) and set(enc["code"].unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(enc["code"], enc["bits"])


@pytest.mark.parametrize("size", [64, 96])
def test_forward_backward_images(size):
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=16, num_classes=5)
    out = model({"image": torch.rand(2, 3, size, size)})
    assert out["code"].shape == (2, 16) and out["logits"].shape == (2, 5)
    assert out["code"].abs().max() < 1
    (out["code"].sum() + out["logits"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval():
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=16, num_classes=5, frozen_backbone=True).train()
    assert not model.backbone.training and model.hash.training
    out = model({"image": torch.rand(2, 3, 64, 64)})
    out["logits"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.hash.weight.grad is not None


@pytest.mark.parametrize("frozen", [False, True])
def test_grad_cam_of_the_code_and_of_the_cue(frozen):
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=16, num_classes=5, frozen_backbone=frozen).train()
    images = torch.rand(3, 3, 64, 64)
    for target in ("code", "cue"):
        out = model.grad_cam(images, target)
        assert out["cam"].shape == (3, 2, 2) and float(out["cam"].min()) >= 0 and float(out["cam"].max()) <= 1
        assert model.training  # the mode the model had comes back
    with torch.no_grad():
        ref = model.eval()({"image": images})
    assert torch.equal(out["pred"], ref["logits"].argmax(1))
    torch.testing.assert_close(out["score"], ref["logits"].gather(1, out["pred"][:, None])[:, 0])
    code = model.grad_cam(images, "code")["score"]
    torch.testing.assert_close(code, ref["code"].abs().sum(1))  # sum_k sign(h_k) tanh(h_k)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="target"):
        model.grad_cam(images, "bits")


def test_grad_cam_reads_efficientnet_stage7_output():
    from rswb.registry import create_model

    backbone = create_model("efficientnet_lite0", pretrained=False)
    assert backbone.cam_layer() is backbone.pieces()[-2].modules[-1]
    model = dhcl("efficientnet_lite0", bits=16, num_classes=5, pretrained=False).eval()
    out = model.grad_cam(torch.rand(1, 3, 96, 96), "cue")
    assert out["cam"].shape == (1, 3, 3)


def test_multi_layer_maps_of_the_code_and_the_cue_are_at_the_image_size():
    torch.manual_seed(0)
    model = dhcl("small_cnn", pretrained=False, bits=16, num_classes=5).eval()
    images = torch.rand(2, 3, 64, 64)
    single = model.grad_cam(images, "cue")
    for method in ("gradcam", "layercam"):
        out = model.grad_cam(images, "cue", method=method, strides=(8, 16))
        assert out["cam"].shape == (2, 64, 64) and float(out["cam"].max()) == pytest.approx(1.0)
        assert torch.equal(out["pred"], single["pred"]) and torch.allclose(out["score"], single["score"])
    with pytest.raises(ValueError, match="strides"):
        model.grad_cam(images, "cue", method="layercam")
