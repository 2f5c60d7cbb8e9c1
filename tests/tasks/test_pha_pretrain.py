"""Self-supervised pre-training of the PHA branches (pha_v6, --pretrain): options, cache, determinism, effect."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from rswb.config import validate
from rswb.registry import create_model
from rswb.tasks.pha import PHAConfig, build_model, prepare_data, pretrain_recipe, run_pretraining
from rswb.tasks.pha.pretrain import FeatureViews, PretrainRecipe, cross_modal_retrieval, pretrained

SMALL = {"widths": "4,8,8", "shots": 2, "val_shots": 1, "max_test": 50, "repeats": 1}


def small_cfg(**kw) -> PHAConfig:
    return PHAConfig(**{**SMALL, "pretrain_steps": 6, "pretrain_batch": 16, **kw})


def test_pha_v6_is_v5_with_cross_pretraining():
    v5 = create_model("pha_v5", widths=(4, 8, 8)).describe()
    v6 = create_model("pha_v6", widths=(4, 8, 8)).describe()
    assert v6.pop("pretrain") == "cross" and v5.pop("pretrain") == "none"
    assert v5 == v6
    with pytest.raises(ValueError, match="both modalities"):
        create_model("ms_only", pretrain="cross")


def test_pretrain_objective_per_version_and_its_errors():
    with pytest.raises(ValueError, match="both modalities"):
        validate(PHAConfig(version="ms_only", pretrain="cross"))
    with pytest.raises(ValueError, match="pretrain"):
        validate(PHAConfig(version="pha_v1", pretrain="sometimes"))
    validate(PHAConfig(version="pan_only", pretrain="within"))
    with pytest.raises(ValueError, match="--branch-lr-mult scales pre-trained branches"):
        validate(PHAConfig(version="pha_v5", branch_lr_mult=0.1))
    validate(PHAConfig(version="pha_v1", pretrain="within", pretrain_steps=10))  # the control
    # The recipe is the task's (a profile sets it for the whole ladder): versions that do not pre-train ignore it.
    validate(PHAConfig(version="pha_v5", pretrain_steps=10))
    assert PHAConfig(version="pha_v6").pretrain_objective() == "cross"
    assert PHAConfig(version="pha_v6", pretrain="none").pretrain_objective() == "none"
    assert PHAConfig(version="pha_v5").pretrain_objective() == "none"
    assert PHAConfig(version="pha_v1", pretrain="within").pretrain_objective() == "within"


def fresh(cfg, data, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, data)


def test_pixel_pretraining_is_cached_deterministic_and_changes_only_the_branches(tmp_path):
    cfg = small_cfg(version="pha_v6", cache_dir=str(tmp_path))
    data = prepare_data(cfg)
    model = fresh(cfg, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run_pretraining(cfg, data, model, seed=0, progress=False)
    assert len(res.curve["loss"]) == 6 and {"within_loss", "cross_loss", "orth_loss"} <= set(res.curve)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("branches.") for k in changed)
    # A second fresh model of the same seed reads the cache: the same weights, no training.
    again = fresh(cfg, data)
    res2 = run_pretraining(cfg, data, again, seed=0, progress=False)
    assert res2.key == res.key and res2.curve == res.curve
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # Another seed or recipe is another entry.
    other = run_pretraining(cfg, data, fresh(cfg, data), seed=1, progress=False)
    assert other.key != res.key
    longer = dataclasses.replace(cfg, pretrain_steps=7)
    assert run_pretraining(longer, data, fresh(longer, data), seed=0, progress=False).key != res.key


def test_a_damaged_cache_entry_is_recomputed_not_trusted(tmp_path):
    cfg = small_cfg(version="pha_v6", cache_dir=str(tmp_path))
    data = prepare_data(cfg)
    res = run_pretraining(cfg, data, fresh(cfg, data), seed=0, progress=False)
    (entry,) = (tmp_path / "pha_pretrain").glob("*.pt")
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_pretraining(cfg, data, fresh(cfg, data), seed=0, progress=False)
    assert any("recomputing a cache entry" in str(w.message) for w in caught)
    assert again.curve == res.curve  # recomputed from the same seed: the same result


def test_within_control_has_no_cross_terms(tmp_path):
    cfg = small_cfg(version="pha_v1", pretrain="within", cache_dir=str(tmp_path))
    data = prepare_data(cfg)
    res = run_pretraining(cfg, data, fresh(cfg, data), seed=0, progress=False)
    assert set(res.curve) == {"within_loss", "loss"}
    assert pretrain_recipe(cfg).objective == "within"


def test_feature_views_draw_two_different_views_of_distinct_images():
    cache = {m: torch.arange(5 * 4 * 2, dtype=torch.float32).reshape(5, 4, 2) for m in ("ms", "pan")}
    v1, v2, targets = FeatureViews(cache).draw(8)
    assert targets is None and v1["ms"].shape == (5, 2)  # 5 images, each once
    assert torch.equal(v1["ms"], v1["pan"])  # one view for MS and PAN of an item
    img1, img2 = v1["ms"][:, 0] // 8, v2["ms"][:, 0] // 8
    assert torch.equal(img1, img2) and len(set(img1.tolist())) == 5
    assert (v1["ms"][:, 0] != v2["ms"][:, 0]).all()  # never the same view twice
    # One cached view: two independently masked copies of it.
    one = FeatureViews({"ms": torch.ones(50, 1, 40), "pan": torch.ones(50, 1, 40)}, mask=0.25)
    a, b, _ = one.draw(50)
    assert torch.isclose(a["ms"], torch.tensor(0.0)).logical_or(torch.isclose(a["ms"], torch.tensor(1 / 0.75))).all()
    assert not torch.equal(a["ms"], b["ms"])
    assert (a["ms"] == 0).float().mean() == pytest.approx(0.25, abs=0.05)


def test_pretraining_learns_cross_modal_retrieval_on_features(tmp_path):
    """On features where MS and PAN of an item are two noisy linear maps of one latent, cross pre-training makes
    the shared embeddings find each other far above chance, and the within-only control does not."""
    from rswb.models.pha import PHANet, PretrainHeads

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(400, 1, 12, generator=g).expand(400, 2, 12)
    a, b = torch.randn(12, 30, generator=g), torch.randn(12, 30, generator=g)
    feats = {"ms": latent @ a + 0.3 * torch.randn(400, 2, 30, generator=g),
             "pan": latent @ b + 0.3 * torch.randn(400, 2, 30, generator=g)}
    train = FeatureViews({m: f[:300] for m, f in feats.items()})
    held = {m: f[300:, 0] for m, f in feats.items()}
    scores = {}
    for objective in ("within", "cross"):
        torch.manual_seed(0)
        model = PHANet(4, 3, feature_dims=(10, 10, 10), widths=(8, 8, 16), pretrain=objective)
        res = pretrained(model, train, PretrainRecipe(objective, steps=150, batch_size=128, lr=3e-3), "toy", 0,
                         cache_dir=tmp_path, progress=False)
        heads = PretrainHeads(16, ("ms", "pan"), 64)
        heads.load_state_dict(res.heads)
        scores[objective] = cross_modal_retrieval(model, heads, held)["R@1_ms2pan"]
    print(scores)
    assert scores["cross"] > 50 and scores["within"] < 20, scores


def test_held_out_tiles_hold_out_a_quarter_spread_over_the_scene():
    from rswb.tasks.pha.pair import held_out_tile_count, held_out_tiles

    mask = held_out_tiles((64, 64), 4)
    assert held_out_tile_count(4) == 4 and mask.mean() == pytest.approx(0.25)
    assert mask[:16, :16].all() and not mask[:16, 16:32].any() and mask[16:32, 16:32].all()  # the diagonal
    assert held_out_tile_count(8) == 16
    with pytest.raises(ValueError, match="grid"):
        held_out_tiles((64, 64), 1)


def test_pair_alignment_on_an_unlabelled_pair_keeps_training_away_from_held_out_tiles(tmp_path, monkeypatch):
    """The command's numbers on the embedded scene: every held-out patch pair is scored; the run is cached."""
    from rswb.tasks.pha import pair
    from rswb.tasks.pha.pretrain import PretrainRecipe

    seen = []
    real_views = pair.ImageViews

    def spy(draw, *a, **kw):  # record the pixels pre-training draws from
        def wrapped(n):
            b = draw(n)
            seen.append((b["row"].numpy(), b["col"].numpy()))
            return b
        return real_views(wrapped, *a, **kw)

    monkeypatch.setattr(pair, "ImageViews", spy)
    path = ensure_embedded_mspan()
    recipe = PretrainRecipe(steps=3, batch_size=32)
    out = pair.pair_alignment(path, recipe, grid=4, widths=(4, 8, 8), cache_dir=tmp_path, progress=False)
    assert out["eval_patches"] >= 80 and out["untrained"]["n"] == out["eval_patches"]
    for key in ("untrained", "within", "cross"):
        assert 0 <= out[key]["R@1_ms2pan"] <= 100
        assert out[key]["chance_R@1"] == pytest.approx(100 / out["eval_patches"])
    held = pair.held_out_tiles((200, 200), 4)
    from scipy.ndimage import binary_dilation

    near = binary_dilation(held, structure=None, iterations=8)  # half a patch: no training patch reaches a tile
    rows = np.concatenate([r for r, _ in seen])
    cols = np.concatenate([c for _, c in seen])
    assert not near[rows, cols].any()
    again = pair.pair_alignment(path, recipe, grid=4, widths=(4, 8, 8), cache_dir=tmp_path, progress=False)
    assert again["cross"]["key"] == out["cross"]["key"] and again["cross"]["R@1_ms2pan"] == out["cross"]["R@1_ms2pan"]


def ensure_embedded_mspan():
    from rswb.data.synthetic import ensure_embedded

    return ensure_embedded("mspan")


def test_pretrain_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    from rswb.cli import main

    out = tmp_path / "wv.json"
    rc = main(["pretrain", str(ensure_embedded_mspan()), "--steps", "2", "--batch-size", "16", "--widths", "4,8,8",
               "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "held-out patch pairs" in text and "+ cross-modal (pha_v6)" in text
    assert json.loads(out.read_text())["cross"]["n"] > 0
    assert main(["pretrain", str(tmp_path / "missing.mat"), "--steps", "2"]) == 2
    assert main(["pretrain", str(ensure_embedded_mspan()), "--widths", "4,8"]) == 2


def test_the_notebook_reads_back_the_pre_training_its_run_made(tmp_path):
    """pretraining_maps rebuilds the model as the run did, so it finds the run's cached pre-training (no second one)."""
    from rswb.engine.experiments import notebook_run, task_config
    from rswb.infer import pretraining_maps

    opts = {**SMALL, "cache_dir": str(tmp_path / "cache"), "pretrain_steps": 3, "pretrain_batch": 16, "epochs": 1}
    notebook_run("pha", "quick", tmp_path / "runs", "v6", progress=False, **opts, version="pha_v6", seed=3)
    entries = sorted((tmp_path / "cache" / "pha_pretrain").glob("*.pt"))
    assert len(entries) == 1
    config = task_config("pha", "quick", **opts)
    pre = pretraining_maps(dataclasses.replace(config, version="pha_v6"), prepare_data(config), 3)
    assert sorted((tmp_path / "cache" / "pha_pretrain").glob("*.pt")) == entries
    assert f"{pre['key']}.pt" == entries[0].name and len(pre["curve"]["loss"]) == 3
    assert pre["agreement"][0].shape == pre["agreement"][1].shape and set(pre["same_place"]) == {"before", "after"}
