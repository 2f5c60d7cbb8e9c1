"""Scene-classification folders (UC Merced and AID layouts), split rules and image decoding, on fake twins."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from rswb.data.errors import CorruptImageError, DataFormatError, DatasetNotFoundError
from rswb.data.scenes import (
    SceneFolder,
    check_image,
    check_images,
    image_to_tensor,
    load_image,
    scan_scene_folder,
    split_mask,
)
from tests.data.fakes import garble_file, make_aid, make_ucmerced, raises_naming, truncate_file

UCM_CLASSES = ("river", "beach", "forest")  # written unsorted on purpose



@pytest.fixture(scope="module")
def ucm_root(tmp_path_factory):
    return make_ucmerced(tmp_path_factory.mktemp("ucm"), classes=UCM_CLASSES, per_class=100, size=4)


@pytest.fixture(scope="module")
def aid_root(tmp_path_factory):
    # 12 images per class: N = 1..12, so a text sort would put _10.._12 before _2
    return make_aid(tmp_path_factory.mktemp("aid"), classes=("Airport", "BareLand", "Beach"), per_class=(12, 5, 9))


# ---------------------------------------------------------------------------------------------------------- UC Merced


def test_ucmerced_listing(ucm_root):
    records, classes, layout = scan_scene_folder(ucm_root)
    assert layout == "ucmerced"
    assert classes == ["beach", "forest", "river"]  # sorted; index = label
    assert len(records) == 300
    assert [(r.label, r.number) for r in records] == [(k, n) for k in range(3) for n in range(100)]
    for r in records:
        assert r.class_name == classes[r.label]
        assert r.path.name == f"{r.class_name}{r.number:02d}.jpg"
        assert r.path.parent.parent.name == "Images"


@pytest.mark.parametrize("split,count,numbers", [
    ("all", 100, range(100)), ("train", 80, range(80)), ("query", 20, range(80, 100)),
    ("database", 20, range(80, 100)), ("test", 20, range(80, 100)),
])
def test_ucmerced_split_rule(ucm_root, split, count, numbers):
    ds = SceneFolder(ucm_root, split=split)
    assert ds.layout == "ucmerced"
    assert len(ds) == 3 * count
    assert ds.class_counts() == {"beach": count, "forest": count, "river": count}
    for k, c in enumerate(ds.classes):
        assert sorted(r.number for r in ds.records if r.label == k) == list(numbers), c
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(3), count))
    assert ds.labels.dtype == np.int64


def test_ucmerced_train_and_query_partition_the_folder(ucm_root):
    train = {r.path for r in SceneFolder(ucm_root, "train").records}
    query = {r.path for r in SceneFolder(ucm_root, "query").records}
    assert not train & query
    assert train | query == {r.path for r in SceneFolder(ucm_root, "all").records}


def test_ucmerced_without_images_subfolder(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3, images_subdir=False)
    ds = SceneFolder(root, layout="ucmerced")
    assert len(ds) == 6 and ds.classes == ["a", "b"]


def test_sample_dict(ucm_root):
    ds = SceneFolder(ucm_root, split="query")
    s = ds[25]
    assert set(s) == {"image", "label", "index", "path"}
    assert s["image"].shape == (3, 4, 4) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["label"] == 1 and s["index"] == 25
    assert s["path"].endswith("forest85.jpg")
    with Image.open(s["path"]) as im:
        expected = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), expected, atol=1e-7)


def test_mixed_extensions_decode_exactly(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=6, size=5, exts=(".tif", ".jpg", ".png"))
    ds = SceneFolder(root)
    assert len(ds) == 12
    assert Counter(r.path.suffix for r in ds.records) == {".tif": 4, ".jpg": 4, ".png": 4}
    for i, rec in enumerate(ds.records):
        with Image.open(rec.path) as im:
            expected = np.array(im.convert("RGB"))
        np.testing.assert_array_equal(load_image(rec.path), expected)
        assert torch.equal(ds[i]["image"], image_to_tensor(expected))
    assert ds.verify() == Counter({(5, 5): 12})


def test_other_files_are_ignored(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3)
    (root / "Images" / "a" / "README.txt").write_text("not an image")
    (root / "Images" / ".hidden").mkdir()
    (root / "notes.md").write_text("x")
    ds = SceneFolder(root)
    assert len(ds) == 6 and ds.classes == ["a", "b"]


def test_two_files_with_one_image_number_are_refused(tmp_path):
    root = make_aid(tmp_path, classes=("Port", "Beach"), per_class=12, ext=".jpg")
    Image.new("RGB", (8, 8)).save(root / "Port" / "port_10.png")
    with pytest.raises(DataFormatError, match=r"same image number \(10\) as port_10\.(jpg|png)") as err:
        scan_scene_folder(root)
    assert err.value.path.name in ("port_10.jpg", "port_10.png")


def test_zero_padded_twins_are_refused(tmp_path):
    root = make_ucmerced(tmp_path, classes=("beach", "river"), per_class=12)
    Image.new("RGB", (8, 8)).save(root / "Images" / "beach" / "beach7.tif")
    with pytest.raises(DataFormatError, match="same image number"):
        scan_scene_folder(root)


def test_a_directory_named_like_an_image_is_refused(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3)
    (root / "Images" / "a" / "a99.tif").mkdir()
    with pytest.raises(DataFormatError, match="is a directory") as err:
        scan_scene_folder(root)
    assert err.value.path.name == "a99.tif"


def test_image_size_resizes(ucm_root):
    assert SceneFolder(ucm_root, image_size=6)[0]["image"].shape == (3, 6, 6)
    assert SceneFolder(ucm_root, image_size=(5, 7))[0]["image"].shape == (3, 5, 7)


def test_verify_counts_sizes_as_height_width(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=4, size=8)
    Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(root / "Images" / "b" / "b03.jpg")  # H=6, W=9
    assert SceneFolder(root).verify() == Counter({(8, 8): 7, (6, 9): 1})


def test_transforms_are_applied(ucm_root):
    ds = SceneFolder(ucm_root, split="train", transforms=lambda s: {**s, "image": s["image"] * 0, "seen": 1})
    s = ds[0]
    assert s["seen"] == 1 and float(s["image"].abs().sum()) == 0.0


def test_plot_returns_a_figure(ucm_root):
    ds = SceneFolder(ucm_root)
    assert isinstance(ds.plot(ds[0]), Figure)


def test_dataloader_batches(ucm_root):
    loader = torch.utils.data.DataLoader(SceneFolder(ucm_root, "query"), batch_size=16)
    batch = next(iter(loader))
    assert batch["image"].shape == (16, 3, 4, 4)
    assert batch["label"].tolist() == [0] * 16


# -------------------------------------------------------------------------------------------------------------- AID


def test_aid_auto_detection_and_numeric_order(aid_root):
    records, classes, layout = scan_scene_folder(aid_root)
    assert layout == "aid"
    assert classes == ["Airport", "BareLand", "Beach"]
    airport = [r.number for r in records if r.label == 0]
    assert airport == list(range(1, 13))  # _10 after _9, not after _1
    assert records[0].path.name == "airport_1.jpg"


def test_aid_split_is_first_half_by_number(aid_root):
    train = SceneFolder(aid_root, "train")
    query = SceneFolder(aid_root, "query")
    by_class = {c: sorted(r.number for r in train.records if r.class_name == c) for c in train.classes}
    assert by_class == {"Airport": [1, 2, 3, 4, 5, 6], "BareLand": [1, 2], "Beach": [1, 2, 3, 4]}
    assert train.class_counts() == {"Airport": 6, "BareLand": 2, "Beach": 4}
    assert query.class_counts() == {"Airport": 6, "BareLand": 3, "Beach": 5}
    assert sorted(r.number for r in query.records if r.class_name == "Airport") == list(range(7, 13))
    assert SceneFolder(aid_root, "database").records == query.records


def test_split_mask_directly(aid_root):
    records, _, layout = scan_scene_folder(aid_root)
    mask = split_mask(records, layout, "train")
    assert mask.dtype == bool and mask.sum() == 12
    np.testing.assert_array_equal(split_mask(records, layout, "test"), ~mask)
    assert split_mask(records, layout, "all").all()
    with pytest.raises(ValueError, match="unknown split"):
        split_mask(records, layout, "val")


def test_layout_can_be_forced(aid_root, ucm_root):
    assert SceneFolder(aid_root, layout="aid").layout == "aid"
    raises_naming(DataFormatError, ucm_root / "Images" / "beach" / "beach00.jpg", SceneFolder, ucm_root,
                  layout="aid")
    with pytest.raises(ValueError, match="unknown layout"):
        SceneFolder(aid_root, layout="nwpu")


def test_auto_detection_tells_the_two_apart(tmp_path, ucm_root):
    assert SceneFolder(ucm_root).layout == "ucmerced"
    assert SceneFolder(make_aid(tmp_path, per_class=2)).layout == "aid"


# ------------------------------------------------------------------------------------------------------- bad input


def test_missing_scene_folder(tmp_path):
    missing = tmp_path / "UCMerced_nowhere"
    err = raises_naming(DatasetNotFoundError, missing, SceneFolder, missing)
    assert isinstance(err, FileNotFoundError)


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "empty" / "Images").mkdir(parents=True)
    raises_naming(DatasetNotFoundError, tmp_path / "empty" / "Images", SceneFolder, tmp_path / "empty")


def test_class_folder_without_images(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3)
    (root / "Images" / "c").mkdir()
    (root / "Images" / "c" / "notes.txt").write_text("nothing to see")
    raises_naming(DataFormatError, root / "Images" / "c", SceneFolder, root)


@pytest.mark.parametrize("bad_name", ["b_01.jpg", "bee01.jpg", "b.jpg", "b01x.png"])
def test_ucmerced_file_name_off_layout(tmp_path, bad_name):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "Images" / "b" / bad_name)
    err = raises_naming(DataFormatError, root / "Images" / "b" / bad_name, SceneFolder, root)
    assert "ucmerced" in str(err)


@pytest.mark.parametrize("bad_name", ["beach7.jpg", "beach_.jpg", "coast_3.jpg"])
def test_aid_file_name_off_layout(tmp_path, bad_name):
    root = make_aid(tmp_path, classes=("Airport", "Beach"), per_class=3)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "Beach" / bad_name)
    raises_naming(DataFormatError, root / "Beach" / bad_name, SceneFolder, root)


def _damage(path, how):
    if how == "garbage":
        garble_file(path)
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a truncated JPEG whose header still parses: only a full decode fails
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
        truncate_file(path, 0.6)
        with Image.open(path) as im:
            assert im.size == (64, 64)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_jpeg_on_getitem_and_verify(tmp_path, how):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=4, size=8)
    bad = root / "Images" / "b" / "b02.jpg"
    _damage(bad, how)
    ds = SceneFolder(root)  # listing does not decode
    index = [str(r.path) for r in ds.records].index(str(bad))
    ds[index - 1]  # the neighbours still load
    raises_naming(CorruptImageError, bad, ds.__getitem__, index)
    raises_naming(CorruptImageError, bad, ds.verify)
    raises_naming(CorruptImageError, bad, load_image, bad)


def test_load_missing_image(tmp_path):
    raises_naming(DatasetNotFoundError, tmp_path / "gone.jpg", load_image, tmp_path / "gone.jpg")


def test_load_image_converts_to_rgb(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    np.testing.assert_array_equal(rgb[..., 1], gray)
    t = image_to_tensor(rgb)
    assert t.shape == (3, 4, 5) and float(t.max()) == pytest.approx(19 / 255)


def test_with_split_equals_a_fresh_scan_of_that_split():
    from rswb.data.synthetic import ensure_embedded

    root = ensure_embedded("scenes")
    folder = SceneFolder(root, "train")
    for split in ("all", "train", "query", "test"):
        view, fresh = folder.with_split(split), SceneFolder(root, split)
        assert view.records == fresh.records and view.split == split
    assert folder.split == "train"  # the original is unchanged


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_check_image_finds_truncated_files_of_every_format(tmp_path, ext):
    root = make_ucmerced(tmp_path, classes=("a",), per_class=2, size=64, exts=(ext,))
    good, bad = sorted((root / "Images" / "a").iterdir())
    assert check_image(good) == (64, 64)
    truncate_file(bad, keep=0.6)
    with pytest.raises(CorruptImageError) as err:
        check_image(bad)
    assert err.value.path == bad


def test_check_images_stops_at_the_first_bad_file_in_order_and_remembers_the_good_ones(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=20, size=32)
    paths = sorted((root / "Images").rglob("*.jpg"))
    truncate_file(paths[25], keep=0.4)
    truncate_file(paths[31], keep=0.4)
    cache = tmp_path / "checks"
    with pytest.raises(CorruptImageError) as err:
        check_images(paths, cache_dir=cache, workers=2)
    assert err.value.path == paths[25]
    # the 25 files before it passed and are remembered; the bad one and everything after are checked again
    good = [p for i, p in enumerate(paths) if i not in (25, 31)]
    assert check_images(good, cache_dir=cache) == len(good) - 25
    assert check_images(good, cache_dir=cache) == 0  # unchanged files are not read again
    assert not list(cache.glob("*.tmp")) and len(list(cache.glob("*.json"))) == 1


def test_check_images_rechecks_a_changed_file(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a",), per_class=5, size=32)
    paths = sorted((root / "Images").rglob("*.jpg"))
    cache = tmp_path / "checks"
    assert check_images(paths, cache_dir=cache) == 5
    truncate_file(paths[2], keep=0.5)  # a new size: the record no longer vouches for it
    with pytest.raises(CorruptImageError, match="a02.jpg"):
        check_images(paths, cache_dir=cache)


def test_check_images_names_a_missing_or_looping_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="gone.jpg"):
        check_images([tmp_path / "gone.jpg"])
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(loop)
    with pytest.raises(CorruptImageError, match="loop.jpg"):
        check_images([loop])
