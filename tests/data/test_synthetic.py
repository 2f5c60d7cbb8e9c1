"""The embedded synthetic data: written in the real formats, deterministic, atomic, and designed as documented."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from rswb.data.captions import read_captions
from rswb.data.check import registration_correlation
from rswb.data.image_text import RetrievalSplit
from rswb.data.mspan import load_mspan
from rswb.data.scenes import SceneFolder
from rswb.data.synthetic import MARKER_NAME, PAN_WEIGHTS, ensure_embedded, synth_all


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return synth_all(root, seed=0, progress=False)


def test_all_parts_are_read_by_the_real_readers(embedded):
    scene = load_mspan(embedded["mspan"])
    assert scene.bands == 4 and scene.ratio == 4 and scene.num_classes >= 8
    assert scene.crs is not None and scene.ms_transform is not None
    scenes = SceneFolder(embedded["scenes"])
    assert len(scenes.classes) >= 10 and scenes.layout == "ucmerced"
    assert len(SceneFolder(embedded["scenes"], "train")) == 80 * len(scenes.classes)
    for fmt in ("precomp", "karpathy"):
        caps = read_captions(embedded["captions"], "train", fmt)
        assert caps.captions_per_image().min() == 5
    test = RetrievalSplit.from_root(embedded["captions"], "test")  # images/ beside the captions is found by default
    assert test.has_images and test[0]["image"].shape[0] == 3


def test_both_caption_formats_agree(embedded):
    for split in ("train", "val", "test"):
        a = read_captions(embedded["captions"], split, "precomp")
        b = read_captions(embedded["captions"], split, "karpathy")
        assert a.captions == b.captions
        assert a.caption_to_image.tolist() == b.caption_to_image.tolist()
        assert [Path(n).name for n in a.image_names] == [Path(n).name for n in b.image_names]


def test_deterministic_and_seed_dependent(embedded, tmp_path):
    again = synth_all(tmp_path / "again", seed=0, progress=False)
    other = synth_all(tmp_path / "other", seed=1, progress=False, parts=("mspan",))
    for part in ("mspan", "scenes", "captions"):
        assert tree_hash(embedded[part]) == tree_hash(again[part]), part
    assert tree_hash(other["mspan"]) != tree_hash(embedded["mspan"])


def test_mspan_design_neither_modality_alone(embedded):
    scene = load_mspan(embedded["mspan"])
    train, test = scene.labels["train"], scene.labels["test"]
    assert not np.any((train > 0) & (test > 0)), "train and test must label disjoint pixels"
    for split in (train, test):
        counts = np.bincount(split.ravel(), minlength=scene.num_classes + 1)[1:]
        assert counts.min() >= 50
    # PAN radiometry consistent with MS: block mean of PAN ~ PAN-weighted MS band sum.
    h, w = scene.shape
    pan_blocks = scene.pan[0].reshape(h, 4, w, 4).mean(axis=(1, 3))
    weighted = np.tensordot(PAN_WEIGHTS, scene.ms, axes=1)
    assert np.corrcoef(pan_blocks.ravel(), weighted.ravel())[0, 1] > 0.95
    assert registration_correlation(scene) > 0.8
    # Per-class MS mean spectra: every class shares its spectrum with another class (MS alone is ambiguous) ...
    labels = np.maximum(train, test)
    c = scene.num_classes
    spectra = np.stack([scene.ms[:, labels == k].mean(axis=1) for k in range(1, c + 1)])
    spectra /= spectra.sum(axis=1, keepdims=True)
    d = np.linalg.norm(spectra[:, None] - spectra[None], axis=-1) + np.eye(c) * 1e9
    nearest = d.min(axis=1)
    spread = np.linalg.norm(spectra - spectra.mean(0), axis=1).mean()
    assert np.all(nearest < 0.1 * spread), "each class should have a spectral twin"
    # ... and PAN texture (mean |vertical| and |horizontal| difference, on the MS grid) separates those twins.
    pan = scene.pan[0]
    dy = np.abs(np.diff(pan, axis=0, append=pan[-1:])).reshape(h, 4, w, 4).mean(axis=(1, 3))
    dx = np.abs(np.diff(pan, axis=1, append=pan[:, -1:])).reshape(h, 4, w, 4).mean(axis=(1, 3))
    tex = np.array([[dy[labels == k].mean(), dx[labels == k].mean()] for k in range(1, c + 1)])
    twin = d.argmin(axis=1)
    gap = np.linalg.norm(tex - tex[twin], axis=1)
    assert np.all(gap > 0.3 * np.linalg.norm(tex, axis=1).max()), "spectral twins must differ in PAN texture"
    # Texture is invisible on the MS grid: the 4x4 block mean of PAN minus the weighted MS sum is texture-free.
    resid = pan_blocks - weighted * (pan_blocks.mean() / weighted.mean())
    per_class = np.array([np.abs(resid[labels == k]).mean() for k in range(1, c + 1)])
    assert per_class.max() < 3 * per_class.min() + 1e-6, "no class keeps texture energy at MS resolution"


def test_marker_skip_and_atomic_replace(tmp_path):
    out = synth_all(tmp_path, seed=0, progress=False, parts=("captions",))
    marker = out["captions"] / MARKER_NAME
    assert marker.exists()
    stamp = marker.stat().st_mtime_ns
    synth_all(tmp_path, seed=0, progress=False, parts=("captions",))
    assert marker.stat().st_mtime_ns == stamp, "a complete part is not regenerated"
    marker.unlink()  # an interrupted/foreign folder without marker is replaced as a whole
    (out["captions"] / "junk.txt").write_text("x")
    synth_all(tmp_path, seed=0, progress=False, parts=("captions",))
    assert marker.exists() and not (out["captions"] / "junk.txt").exists()
    assert not list(tmp_path.glob(".tmp-*")), "no temporary folder is left behind"


def test_ensure_embedded_generates_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("RSWB_DATA_DIR", str(tmp_path / "auto"))
    path = ensure_embedded("scenes")
    assert path == tmp_path / "auto" / "scenes" and (path / MARKER_NAME).exists()
    assert not (tmp_path / "auto" / "mspan").exists(), "only the part asked for is built"
