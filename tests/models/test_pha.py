"""PHA version ladder: forward/backward on patches and whole images, dense == per-patch, option checks, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rswb.data.patches import patch_padding
from rswb.models.pha import PHA_VERSIONS, CompensatedDictionary, PHANet, ms_only, pan_only
from rswb.registry import create_model, list_models

WIDTHS = (4, 8, 8)
C = 5
TWO_BRANCH = [v for v in PHA_VERSIONS if v.startswith("pha_v")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def build(version: str, seed: int = 0, **kw) -> PHANet:
    torch.manual_seed(seed)
    kw.setdefault("widths", WIDTHS)
    kw.setdefault("proj_dim", 6)
    if version in ("pha_v5", "pha_v6"):
        kw.setdefault("atoms", 10)
    return create_model(version, num_classes=C, **kw)


def randomize(model: PHANet, seed: int = 0) -> PHANet:
    """Non-trivial batch-norm statistics, so that eval-mode checks see every part."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return model


def inputs(b: int, h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"ms": torch.rand(b, 4, h, w, generator=g), "pan": torch.rand(b, 1, 4 * h, 4 * w, generator=g)}


def training_objective(out: dict) -> torch.Tensor:
    """A scalar that touches every output a task's losses use (logits, embeddings, dictionary parts)."""
    total = out["logits"].square().mean()
    for a, b in out["embed"].values():
        total = total + (a * b).sum(1).mean() + a.square().mean() + b.square().mean()
    for key in ("codes_ms", "codes_pan", "shared_ms", "shared_pan", "specific_ms", "specific_pan"):
        if key in out:
            total = total + out[key].square().mean()
    return total


@pytest.mark.parametrize("version", PHA_VERSIONS)
@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 40, 36)], ids=["patches", "whole_images"])
def test_forward_backward(version, shape):
    model = build(version).train()
    b, h, w = shape
    out = model(inputs(b, h, w))
    assert out["logits"].shape == (b, C)
    assert set(out["stage_features"]) == set(model.modalities)
    for feats in out["stage_features"].values():
        assert [tuple(f.shape) for f in feats] == [(b, WIDTHS[0]), (b, WIDTHS[1]), (b, WIDTHS[2])]
    assert sorted(out["embed"]) == list(model.align_stages)
    for s, (a, e) in out["embed"].items():
        dim = 10 if (version in ("pha_v5", "pha_v6") and s == 2) else 6
        assert a.shape == e.shape == (b, dim)
    if version in ("pha_v5", "pha_v6"):
        assert out["codes_ms"].shape == (b, 10) and out["shared_pan"].shape == (b, WIDTHS[-1])
        assert (out["codes_ms"] >= 0).all() and out["deep_ms"].shape == (b, WIDTHS[-1])
        assert "ms2" not in model.proj and "ms1" in model.proj  # the deep stage aligns the codes instead
    training_objective(out).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{version}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{version}: non-finite gradient for {name}"
    head = model.head[1].weight.grad
    assert head.abs().sum() > 0
    for m in model.modalities:
        assert model.branches[m].stem[0].weight.grad.abs().sum() > 0, f"{version}: stem of {m} got no gradient"
    for s in model.align_stages:
        key = f"ms{s}"
        if key in model.proj:
            assert model.proj[key][0].weight.grad.abs().sum() > 0
    if model.stage_fuse is not None:  # tiny layers may have every ReLU unit off for a small batch: ask for one
        assert any(f[0].weight.grad.abs().sum() > 0 for f in model.stage_fuse)
    if model.dictionary is not None:
        assert model.dictionary.atoms.grad.abs().sum() > 0


def padded_scene(h: int, w: int, seed: int = 0, patch: int = 16):
    """A random scene reflect-padded the way the patch sampler pads it, and the patch of one pixel."""
    x = inputs(1, h, w, seed)
    (mb, ma), (pb, pa) = patch_padding(patch, 4 * patch, 4)
    ms = F.pad(x["ms"], (mb, ma, mb, ma), mode="reflect")
    pan = F.pad(x["pan"], (pb, pa, pb, pa), mode="reflect")

    def patch_of(r: int, c: int) -> dict[str, torch.Tensor]:
        return {"ms": ms[:, :, r:r + patch, c:c + patch],
                "pan": pan[:, :, 4 * r:4 * (r + patch), 4 * c:4 * (c + patch)]}

    return ms, pan, patch_of


@pytest.mark.parametrize("version", PHA_VERSIONS)
def test_dense_equals_per_patch_forward(version):
    model = randomize(build(version), seed=1).eval()
    h, w = 11, 9
    ms, pan, patch_of = padded_scene(h, w, seed=2)
    assert ms.shape[-2:] == (h + 15, w + 15) and pan.shape[-2:] == (4 * (h + 15), 4 * (w + 15))
    with torch.no_grad():
        dense = model.dense(ms if "ms" in model.branches else None, pan if "pan" in model.branches else None)
        assert dense.shape == (1, C, h, w)
        pixels = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (5, 4), (3, 8), (10, 2)]
        batch = [patch_of(r, c) for r, c in pixels]
        ref = model({k: torch.cat([b[k] for b in batch]) for k in ("ms", "pan")})["logits"]
    for i, (r, c) in enumerate(pixels):
        torch.testing.assert_close(dense[0, :, r, c], ref[i], atol=1e-5, rtol=1e-5)


def test_single_modality_versions_reject_alignment_options():
    for builder in (ms_only, pan_only):
        for kw in ({"align_stages": (2,)}, {"stage_fusion": True}, {"dictionary_atoms": 8}):
            with pytest.raises(ValueError, match="need both modalities"):
                builder(num_classes=3, widths=WIDTHS, **kw)
    with pytest.raises(ValueError, match="modalities"):
        PHANet(3, modalities=("ms", "sar"), widths=WIDTHS)
    with pytest.raises(ValueError, match="align_schedule"):
        PHANet(3, widths=WIDTHS, align_stages=(2,), align_schedule="sometimes")
    with pytest.raises(ValueError, match="too small"):
        PHANet(3, widths=WIDTHS, patch=12)


def test_single_modality_versions_ignore_the_other_input():
    torch.manual_seed(0)
    ms_model, pan_model = build("ms_only").eval(), build("pan_only").eval()
    x = inputs(2, 16, 16)
    with torch.no_grad():
        assert torch.equal(ms_model({"ms": x["ms"]})["logits"], ms_model(x)["logits"])
        assert torch.equal(pan_model({"pan": x["pan"]})["logits"], pan_model(x)["logits"])
    assert "pan" not in ms_model.branches and "ms" not in pan_model.branches


def test_wrong_inputs_raise_helpful_errors():
    model = build("pha_v1").eval()
    x = inputs(2, 16, 16)
    with pytest.raises(ValueError, match=r"PAN must be 4 x the MS size"):
        model({"ms": x["ms"], "pan": x["pan"][..., :60, :60]})
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model({"ms": x["ms"]})
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model({"ms": x["ms"][0], "pan": x["pan"]})


def test_stage_fusion_reads_the_branches_without_changing_them():
    """v4's branches compute exactly v3's stage features with the same weights; only the classifier input grows."""
    v3, v4 = build("pha_v3", seed=3).eval(), build("pha_v4", seed=4).eval()
    shared = {k: v for k, v in v3.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = v4.load_state_dict(shared, strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"stage_fuse", "head"}
    x = inputs(3, 16, 16, seed=5)
    with torch.no_grad():
        a, b = v3(x), v4(x)
        for m in ("ms", "pan"):
            for s in (0, 1, 2):
                torch.testing.assert_close(a["stage_features"][m][s], b["stage_features"][m][s])
    assert v4.head[1].in_features == v3.head[1].in_features + sum(WIDTHS[:-1])


def test_compensated_dictionary_parts():
    torch.manual_seed(0)
    d = CompensatedDictionary(6, atoms=5)
    out = d(torch.randn(4, 6), torch.randn(4, 6))
    assert out["fused"].shape == (4, 18) and d.out_features == 18
    atoms = F.normalize(d.atoms, dim=1)
    torch.testing.assert_close(out["shared_ms"], out["codes_ms"] @ atoms)
    torch.testing.assert_close(out["fused"][:, :6], 0.5 * (out["shared_ms"] + out["shared_pan"]))
    torch.testing.assert_close(out["fused"][:, 6:12], out["specific_ms"])


def test_describe():
    expected = {
        "ms_only": ("ms", [], "none", False, 0), "pan_only": ("pan", [], "none", False, 0),
        "pha_v1": ("ms+pan", [], "none", False, 0), "pha_v2": ("ms+pan", ["deep"], "deep", False, 0),
        "pha_v3": ("ms+pan", ["shallow", "middle", "deep"], "equal", False, 0),
        "pha_v4": ("ms+pan", ["shallow", "middle", "deep"], "progressive", True, 0),
        "pha_v5": ("ms+pan", ["shallow", "middle", "deep"], "progressive", True, 10),
        "pha_v6": ("ms+pan", ["shallow", "middle", "deep"], "progressive", True, 10),
    }
    for version in PHA_VERSIONS:
        model = build(version)
        d = model.describe()
        assert set(d) == {"modalities", "align_stages", "align_schedule", "stage_fusion", "dictionary_atoms",
                          "parameters", "branches", "pretrain", "pseudo_threshold"}
        assert d["branches"] == "convolutional" and d["pseudo_threshold"] == 0.0
        assert d["pretrain"] == ("cross" if version == "pha_v6" else "none")
        assert (d["modalities"], d["align_stages"], d["align_schedule"], d["stage_fusion"],
                d["dictionary_atoms"]) == expected[version]
        assert d["parameters"] == sum(p.numel() for p in model.parameters())


def test_registry_lists_the_ladder():
    assert list_models("pha_v*") == ["pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6"]
    assert set(PHA_VERSIONS) <= set(list_models())
    assert TWO_BRANCH == ["pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6"]
    model = create_model("pha_v2", num_classes=3, widths=WIDTHS, bands=8)
    assert isinstance(model, PHANet) and model.num_classes == 3 and model.bands == 8


def test_pan_slightly_too_large_is_rejected():
    model = build("pha_v1").eval()
    x = inputs(1, 16, 16)
    with pytest.raises(ValueError, match="PAN"):
        model({"ms": x["ms"], "pan": torch.rand(1, 1, 67, 67)})


# ------------------------------------------------------------------------------------------ where the model looks


def test_agreement_and_atom_maps_on_a_13_pixel_patch_are_what_forward_compares():
    """A 13 x 13 MS patch (52 x 52 PAN) ends as a 1 x 1 deep map, whose average is itself: there the maps must equal
    what forward() feeds the alignment loss (v2: cosine of the deep embeddings; v5: the dictionary codes)."""
    torch.manual_seed(1)
    ms, pan = torch.rand(3, 4, 13, 13), torch.rand(3, 1, 52, 52)
    v2 = randomize(build("pha_v2", bands=4)).eval()
    out = v2({"ms": ms, "pan": pan})
    deep = v2.agreement_maps(ms, pan)[-1]
    assert deep.shape == (3, 1, 1)
    torch.testing.assert_close(deep[:, 0, 0], torch.nn.functional.cosine_similarity(*out["embed"][2], dim=1))
    v5 = randomize(build("pha_v5", bands=4)).eval()
    out = v5({"ms": ms, "pan": pan})
    atoms = v5.atom_maps(ms, pan)
    torch.testing.assert_close(atoms["ms"][:, :, 0, 0], out["codes_ms"])
    torch.testing.assert_close(atoms["pan"][:, :, 0, 0], out["codes_pan"])
    with pytest.raises(ValueError, match="dictionary"):
        v2.atom_maps(ms, pan)


def test_agreement_is_one_where_the_branches_see_the_same_thing():
    """Make the PAN branch compute exactly the MS branch: one MS band, PAN = MS replicated over each 4 x 4 block, a
    PAN stem that averages its block with the MS stem's weight, the same stages. Raw features (v1) then agree
    everywhere (cosine 1); a random PAN does not."""
    model = randomize(build("pha_v1", bands=1)).eval()
    with torch.no_grad():
        pan_stem, ms_stem = model.branches["pan"].stem[0], model.branches["ms"].stem[0]
        pan_stem.weight.copy_(ms_stem.weight.expand_as(pan_stem.weight) / 16)
        model.branches["pan"].stem[1].load_state_dict(model.branches["ms"].stem[1].state_dict())
        model.branches["pan"].stages.load_state_dict(model.branches["ms"].stages.state_dict())
    ms = torch.rand(2, 1, 20, 24)
    pan = ms.repeat_interleave(4, 2).repeat_interleave(4, 3)
    maps = model.agreement_maps(ms, pan)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 20), (2, 12, 16), (2, 8, 12)]
    for m in maps:
        torch.testing.assert_close(m, torch.ones_like(m))
    other = model.agreement_maps(ms, torch.rand_like(pan))
    # (An untrained network's features share a large positive offset, so "different" shows as below 1, not near 0.)
    assert all(float(m.min()) >= -1 and float(m.max()) <= 1 for m in other) and float(other[0].min()) < 0.99


def test_pha_attributions_sum_to_the_score_change_and_read_the_modality_that_decides():
    from rswb.data.mspan import load_mspan
    from rswb.data.patches import PatchSampler
    from rswb.data.synthetic import ensure_embedded
    from rswb.infer import pha_attributions

    scene = load_mspan(ensure_embedded("mspan")).normalized()
    model = randomize(build("pha_v3", bands=scene.bands)).eval()
    sampler = PatchSampler(scene, 16)
    out = pha_attributions(model, sampler, [40, 100], [50, 120], steps=64, device="cpu")
    assert out["ms"].shape == (2, 16, 16, 3) and out["pan"].shape == (2, 64, 64)
    assert out["attr_ms"].shape == (2, 16, 16) and out["attr_pan"].shape == (2, 64, 64)
    total = out["attr_ms"].sum((1, 2)) + out["attr_pan"].sum((1, 2))
    np.testing.assert_allclose(total, out["delta"], rtol=0.05, atol=1e-3)  # completeness of integrated gradients
    with torch.no_grad():
        batch = sampler.gather(np.array([40, 100]), np.array([50, 120]))
        assert out["pred"].tolist() == model(batch)["logits"].argmax(1).tolist()
    # A model that reads PAN only: every attribution is PAN's, its share is 1.
    class PanOnly(torch.nn.Module):
        modalities, feature_dims = ("ms", "pan"), None

        def forward(self, batch):
            v = batch["pan"].mean((1, 2, 3)) + 0.0 * batch["ms"].mean((1, 2, 3))  # MS in the graph, not in the score
            return {"logits": torch.stack([v, -v], 1)}

    import rswb.models.pha as pha

    pan_only = PanOnly()
    pha_cls, pha.PHANet = pha.PHANet, PanOnly  # the isinstance check
    try:
        out = pha_attributions(pan_only, sampler, [40], [50], device="cpu")
    finally:
        pha.PHANet = pha_cls
    assert not out["attr_ms"].any() and out["pan_share"][0] == pytest.approx(1.0)
