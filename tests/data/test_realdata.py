"""The readers on the real data under ``$RSWB_SHARED_DATA`` (default ``<repo>/../shared/data``).

Every test skips, with a reason saying where it looked, when its folder is absent (a fresh clone has none).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rswb.data.captions import ImageResolver, read_precomp
from rswb.data.image_text import RetrievalSplit
from rswb.data.mspan import load_mspan
from rswb.data.patches import PatchSampler
from rswb.data.scenes import SceneFolder

pytestmark = pytest.mark.realdata

UCM_CLASSES = [
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential", "forest",
    "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark", "overpass",
    "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
]


@pytest.fixture(scope="module")
def ucm_root(shared_data):
    return shared_data("UCMerced_LandUse", "Images")


# ---------------------------------------------------------------------------------------------------------- UC Merced


def test_ucmerced_lists_all_images(ucm_root):
    ds = SceneFolder(ucm_root.parent)
    assert ds.layout == "ucmerced"
    assert len(ds) == 2100
    assert ds.classes == UCM_CLASSES
    assert ds.class_counts() == dict.fromkeys(UCM_CLASSES, 100)
    assert {r.number for r in ds.records} == set(range(100))


def test_ucmerced_dhcl_split_counts(ucm_root):
    train = SceneFolder(ucm_root.parent, "train")
    query = SceneFolder(ucm_root.parent, "query")
    assert len(train) == 1680 and len(query) == 420
    assert train.class_counts() == dict.fromkeys(UCM_CLASSES, 80)
    assert query.class_counts() == dict.fromkeys(UCM_CLASSES, 20)
    assert max(r.number for r in train.records) == 79 and min(r.number for r in query.records) == 80
    assert len(SceneFolder(ucm_root.parent, "database")) == 420


def test_ucmerced_a_few_images_decode(ucm_root):
    ds = SceneFolder(ucm_root.parent)
    for i in (0, 777, 2099):
        s = ds[i]
        assert s["image"].shape[0] == 3 and 240 <= s["image"].shape[1] <= 260
        assert 0.0 <= float(s["image"].min()) < float(s["image"].max()) <= 1.0
    assert ds[2099]["path"].endswith("tenniscourt99.jpg")
    assert SceneFolder(ucm_root.parent, image_size=64)[5]["image"].shape == (3, 64, 64)


@pytest.mark.slow
def test_ucmerced_every_image_decodes(ucm_root):
    sizes = SceneFolder(ucm_root.parent).verify()  # ~1.5 s for all 2,100
    assert sum(sizes.values()) == 2100
    assert sizes[(256, 256)] > 2000  # a few are slightly smaller or larger


# ----------------------------------------------------------------------------------------------------- UCM-Captions


@pytest.fixture(scope="module")
def ucm_captions(shared_data, ucm_root):
    root = shared_data("ucm_captions")
    train = RetrievalSplit.from_root(root, "train", image_root=ucm_root.parent)
    test = RetrievalSplit.from_root(root, "test", image_root=ucm_root.parent)
    return root, train, test


def test_ucm_captions_counts(ucm_captions):
    root, train, test = ucm_captions
    assert train.num_images == 1890 and len(train) == 9450
    assert test.num_images == 210 and len(test) == 1050
    assert len((root / "train_filename.txt").read_text().splitlines()) == 1890  # one line per image
    assert len((root / "test_filename.txt").read_text().splitlines()) == 1050  # one line per caption
    for ds in (train, test):
        assert set(np.bincount(ds.caption_to_image).tolist()) == {5}
    # ~2,000 distinct strings among 10,500 captions: a known property of the dataset
    assert 1500 < len(set(train.captions) | set(test.captions)) < 2500


def test_ucm_captions_join_all_2100_images(ucm_captions):
    _, train, test = ucm_captions
    assert train.has_images and test.has_images  # every caption's image was found
    paths = set(train.image_paths) | set(test.image_paths)
    assert len(paths) == 2100 and not set(train.image_paths) & set(test.image_paths)
    assert all(p.suffix == ".jpg" and p.is_file() for p in paths)
    names = train.image_names + test.image_names
    assert sorted(int(n.removesuffix(".tif")) for n in names) == list(range(1, 2101))
    # the joined file is the documented one for every caption file name
    for ds in (train, test):
        for name, path in zip(ds.image_names, ds.image_paths):
            n = int(name.removesuffix(".tif")) - 1
            assert path.name == f"{UCM_CLASSES[n // 100]}{n % 100:02d}.jpg"
    # the test images are NN 80-89 of every class
    assert Counter(p.parent.name for p in test.image_paths) == dict.fromkeys(UCM_CLASSES, 10)


def test_ucm_captions_numbering(ucm_root):
    resolve = ImageResolver(ucm_root.parent, [f"{n}.tif" for n in range(1, 2101)])
    assert resolve.ucm_classes == UCM_CLASSES and resolve.ucm_numbering
    assert resolve("1.tif") == ucm_root / "agricultural" / "agricultural00.jpg"
    assert resolve("101.tif") == ucm_root / "airplane" / "airplane00.jpg"
    assert resolve("2100.tif") == ucm_root / "tenniscourt" / "tenniscourt99.jpg"
    assert resolve("2101.tif") is None


def test_ucm_captions_sample(ucm_captions):
    _, _, test = ucm_captions
    s = test[7]
    assert s["image_id"] == 1 and s["caption"] == test.captions[7]
    assert s["image"].shape[0] == 3


# ------------------------------------------------------------------------------------------------- RSICD and RSITMD


@pytest.mark.parametrize("folder,split,images,captions,empty", [
    ("rsicd_captions", "train", 9828, 49140, 3),  # lines 5701, 22328, 44383 are " ."
    ("rsicd_captions", "test", 1093, 5465, 0),
    ("rsitmd_captions", "train", 4291, 21455, 20),
    ("rsitmd_captions", "test", 452, 2260, 0),
])
def test_caption_set_counts(shared_data, folder, split, images, captions, empty):
    cs = read_precomp(shared_data(folder), split)
    assert cs.num_images == images and cs.num_captions == captions
    assert set(cs.captions_per_image().tolist()) == {5}
    st = cs.stats()
    assert st["empty_captions"] == empty
    assert 0.0 <= st["duplicate_rate"] < 1.0 and st["vocabulary"] > 1000
    if folder == "rsitmd_captions" and empty:  # the empty lines are whole images' placeholders, kept in place
        per_image = np.bincount(cs.caption_to_image[[i for i, c in enumerate(cs.captions) if not c]])
        assert set(per_image[per_image > 0].tolist()) == {5}


def test_caption_sets_without_images(shared_data):
    ds = RetrievalSplit.from_root(shared_data("rsicd_captions"), "test")
    assert not ds.has_images and len(ds) == 5465 and "image" not in ds[0]


# ------------------------------------------------------------------------------------------------ WorldView-2 pair


@pytest.fixture(scope="module")
def wv2(shared_data):
    return load_mspan(shared_data("mspan_pairs", "worldview2.mat"))


def test_worldview2_pair(wv2):
    assert wv2.bands == 8 and wv2.shape == (320, 320)
    assert wv2.ms.shape == (8, 320, 320) and wv2.pan.shape == (1, 1280, 1280)
    assert wv2.ratio == 4
    assert wv2.meta["sensor"] == "WV2" and wv2.meta["bit_depth"] == 11
    assert all(0 <= b < 8 for b in wv2.meta["rgb_bands"])
    assert 0 <= wv2.ms.min() and wv2.ms.max() < 2**11 and wv2.pan.max() < 2**11
    assert wv2.labels == {}


def test_worldview2_pan_correlates_with_ms_intensity(wv2, record_property):
    intensity = wv2.ms.mean(axis=0).astype(np.float64)  # mean over bands, MS grid
    pan_blocks = wv2.pan[0].astype(np.float64).reshape(320, 4, 320, 4).mean(axis=(1, 3))  # 4x4 block average
    r = float(np.corrcoef(intensity.ravel(), pan_blocks.ravel())[0, 1])
    record_property("pearson_r", r)
    print(f"WV2 PAN vs block-averaged MS intensity: Pearson r = {r:.4f}")
    assert r > 0.8, f"PAN and MS look mis-registered: r = {r:.3f}"


def test_worldview2_patches(wv2):
    scene = wv2.normalized("percentile")
    assert scene.ms.min() == 0.0 and scene.ms.max() == 1.0
    sampler = PatchSampler(scene)
    rows, cols = np.array([0, 100, 319]), np.array([319, 200, 0])
    out = sampler.gather(rows, cols)
    assert out["ms"].shape == (3, 8, 16, 16) and out["pan"].shape == (3, 1, 64, 64)
    np.testing.assert_array_equal(out["ms"][:, :, 7, 7].numpy(), scene.ms[:, rows, cols].T)
    np.testing.assert_array_equal(out["ms"][1].numpy(), scene.ms[:, 93:109, 193:209])
    np.testing.assert_array_equal(out["pan"][1, 0].numpy(), scene.pan[0, 372:436, 772:836])
    assert scene.rgb().shape == (320, 320, 3)


def test_ucmerced_validation_block_is_nn_00_09(ucm_root):
    from rswb.data.splits import validation_split

    train = SceneFolder(ucm_root.parent, "train")
    _, val = validation_split(len(train), 0.125, labels=train.labels, rule="block")  # the hash task's default
    held = [train.records[i] for i in val]
    assert len(held) == 210 and {r.number for r in held} == set(range(10))
    assert Counter(r.label for r in held) == dict.fromkeys(range(21), 10)


def test_ucm_captions_validation_block_is_nn_00_08(shared_data, tmp_path):
    from rswb.data.image_text import read_joined_captions

    root, images = shared_data("ucm_captions"), shared_data("UCMerced_LandUse", "Images")
    cs = read_joined_captions(root, images, val_share=0.1, check_cache=tmp_path, progress=False)
    assert cs.sets["val"].num_images == 189 and cs.sets["train"].num_images == 1701
    held = Counter((p.parent.name, int(p.stem[-2:])) for p in cs.paths["val"])
    assert set(held) == {(c, nn) for c in UCM_CLASSES for nn in range(9)}
    random = read_joined_captions(root, images, val_share=0.1, check_cache=tmp_path, progress=False,
                                  val_rule="random")
    assert {int(p.stem[-2:]) for p in random.paths["val"]} - set(range(9))  # the former rule: anywhere
