"""Format detection and summaries behind ``rswb data check``."""

from __future__ import annotations

import numpy as np
import pytest

from rswb.data.check import detect_format, format_summary, registration_correlation, summarize
from rswb.data.errors import DataFormatError, DatasetNotFoundError
from rswb.data.mspan import MSPANScene
from tests.data.fakes import make_karpathy, make_mspan_folder, make_mspan_mat, make_precomp, make_ucmerced


def test_detects_every_format(tmp_path):
    assert detect_format(make_mspan_folder(tmp_path / "a").path) == "mspan_folder"
    assert detect_format(make_mspan_mat(tmp_path / "b").path) == "mspan_mat"
    assert detect_format(make_ucmerced(tmp_path / "c", per_class=3)) == "scene_folder"
    assert detect_format(make_precomp(tmp_path / "d", "train").root) == "captions_precomp"
    path, _ = make_karpathy(tmp_path / "e")
    assert detect_format(path) == "captions_karpathy"
    assert detect_format(path.parent) == "captions_karpathy"


def test_unknown_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="unrecognised"):
        detect_format(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="nope"):
        detect_format(tmp_path / "nope")


def test_mspan_summary_counts(tmp_path):
    fake = make_mspan_folder(tmp_path)
    s = summarize(fake.path)
    assert s["bands"] == 4 and s["ratio"] == 4 and s["pan_size"] == [4 * s["ms_size"][0], 4 * s["ms_size"][1]]
    for split in ("train", "test"):
        expected = {int(v): int(n) for v, n in zip(*np.unique(np.load(fake.path / f"{split}.npy"),
                                                               return_counts=True)) if v}
        assert s["labels"][split] == expected
    text = format_summary(s)
    assert "4 bands" in text and "train labels" in text


def test_scene_and_caption_summaries(tmp_path):
    root = make_ucmerced(tmp_path / "s", classes=("beach", "river"), per_class=100)
    s = summarize(root)
    assert s["images"] == 200 and s["split"] == {"train": 160, "query_database": 40}
    assert s["images_per_class"] == {"beach": 100, "river": 100}
    caps = make_precomp(tmp_path / "c", "train", n_images=3, per_image=2)
    make_precomp(tmp_path / "c", "test", n_images=2, per_image=1, style="per_caption")
    s = summarize(caps.root)
    assert list(s["splits"]) == ["train", "test"]
    assert s["splits"]["train"]["captions"] == 6 and s["splits"]["test"]["images"] == 2
    assert "captions per image" in format_summary(s)


def test_registration_correlation_detects_a_shift():
    rng = np.random.default_rng(0)
    h = w = 32
    base = rng.random((4 * h, 4 * w)).astype(np.float32)
    ms = np.stack([base.reshape(h, 4, w, 4).mean(axis=(1, 3))] * 3)
    good = MSPANScene(ms, base[None], 4)
    shifted = MSPANScene(ms, np.roll(base, 37, axis=1)[None], 4)
    assert registration_correlation(good) > 0.99
    assert abs(registration_correlation(shifted)) < 0.3


def test_a_coco_folder_with_images_is_captions_not_a_scene_folder(tmp_path):
    from tests.data.fakes import make_coco_captions

    root, _ = make_coco_captions(tmp_path)
    assert detect_format(root) == "captions_coco"
    assert detect_format(root / "captions_val2017.json") == "captions_coco"
    summary = summarize(root)
    assert list(summary["splits"]) == ["train", "val", "test"] and summary["join"]["rules"] == {"relative path": 8}
    assert "join: 8 by relative path" in format_summary(summary)
