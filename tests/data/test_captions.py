"""Caption sets (precomp and Karpathy JSON), the image resolver and the image-text dataset, on fake twins."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from rswb.data.captions import (
    CaptionSet,
    ImageResolver,
    caption_split_names,
    coco_splits,
    find_karpathy_json,
    read_captions,
    read_coco,
    read_image_map,
    read_karpathy,
    read_precomp,
    tokenize,
)
from rswb.data.errors import CaptionMismatchError, DataFormatError, DatasetNotFoundError
from rswb.data.image_text import CachedLevels, CaptionText, ImagesFromFiles, RetrievalSplit
from tests.data.fakes import (
    UCM_CLASS_NAMES,
    make_coco_captions,
    make_karpathy,
    make_precomp,
    make_sydney_captions,
    make_ucm_captions,
    make_ucmerced,
    raises_naming,
    ucm_number_to_name,
)


def assert_caption_set(got: CaptionSet, fake) -> None:
    assert got.captions == fake.captions
    np.testing.assert_array_equal(got.caption_to_image, fake.caption_to_image)
    assert got.caption_to_image.dtype == np.int64
    assert got.image_names == fake.image_names
    assert got.num_captions == len(fake.captions) and got.num_images == len(fake.image_names)


def write_lines(path, lines, end="\n"):
    path.write_text(end.join(lines) + end, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------- precomp


def test_precomp_one_filename_per_image(tmp_path):
    fake = make_precomp(tmp_path, "train", n_images=3, per_image=5, style="per_image")
    got = read_precomp(fake.root, "train")
    assert_caption_set(got, fake)
    assert got.split == "train" and got.source.name == "train_caps.txt"
    np.testing.assert_array_equal(got.caption_to_image, np.repeat([0, 1, 2], 5))
    assert got.captions_per_image().tolist() == [5, 5, 5]


def test_precomp_one_filename_per_caption(tmp_path):
    fake = make_precomp(tmp_path, "test", n_images=4, per_image=5, style="per_caption")
    assert len((fake.root / "test_filename.txt").read_text().splitlines()) == 20
    got = read_precomp(fake.root, "test")
    assert_caption_set(got, fake)
    assert got.image_names == ["img_0.jpg", "img_1.jpg", "img_2.jpg", "img_3.jpg"]


def test_precomp_one_filename_per_caption_with_variable_counts(tmp_path):
    fake = make_precomp(tmp_path, "test", per_image=[2, 5, 1], style="per_caption")
    got = read_precomp(fake.root, "test")
    assert_caption_set(got, fake)
    assert got.captions_per_image().tolist() == [2, 5, 1]


def test_precomp_repeated_names_need_not_be_consecutive(tmp_path):
    write_lines(tmp_path / "val_caps.txt", ["c0", "c1", "c2", "c3"])
    write_lines(tmp_path / "val_filename.txt", ["b.jpg", "a.jpg", "b.jpg", "c.jpg"])
    got = read_precomp(tmp_path, "val")
    assert got.image_names == ["b.jpg", "a.jpg", "c.jpg"]  # first-appearance order
    assert got.caption_to_image.tolist() == [0, 1, 0, 2]
    assert got.captions_of(0) == ["c0", "c2"]


def test_precomp_explicit_cap2img_with_variable_captions(tmp_path):
    fake = make_precomp(tmp_path, "train", per_image=[1, 4, 2, 3], style="cap2img")
    assert len((fake.root / "train_filename.txt").read_text().splitlines()) == 4  # 10 captions, 4 names
    got = read_precomp(fake.root, "train")
    assert_caption_set(got, fake)
    assert got.captions_per_image().tolist() == [1, 4, 2, 3]
    assert got.captions_of(2) == fake.captions[5:7]


def test_cap2img_overrides_the_count_rules(tmp_path):
    # 4 captions and 2 names would otherwise mean 2 + 2 consecutive captions
    write_lines(tmp_path / "train_caps.txt", ["x0", "y0", "x1", "x2"])
    write_lines(tmp_path / "train_filename.txt", ["x.jpg", "y.jpg"])
    write_lines(tmp_path / "train_cap2img.txt", ["0", "1", "0", "0"])
    got = read_precomp(tmp_path, "train")
    assert got.caption_to_image.tolist() == [0, 1, 0, 0]
    assert got.captions_of(0) == ["x0", "x1", "x2"] and got.captions_of(1) == ["y0"]


def test_empty_caption_lines_are_kept(tmp_path):
    # like RSITMD train: an image whose five caption lines are all empty placeholders
    caps = [f"a{k}" for k in range(5)] + [""] * 5 + [f"c{k}" for k in range(5)]
    write_lines(tmp_path / "train_caps.txt", caps)
    write_lines(tmp_path / "train_filename.txt", ["a.tif", "b.tif", "c.tif"])
    got = read_precomp(tmp_path, "train")
    assert got.num_captions == 15
    assert got.captions_of(1) == [""] * 5
    assert got.stats()["empty_captions"] == 5


def test_a_caption_without_words_counts_as_empty(tmp_path):
    write_lines(tmp_path / "train_caps.txt", ["a river .", " .", "-", "two planes", "..."])
    write_lines(tmp_path / "train_filename.txt", ["a.tif"] * 5)
    assert read_precomp(tmp_path, "train").stats()["empty_captions"] == 3


@pytest.mark.parametrize("present", ["filename", "caps"])
def test_a_split_with_only_one_of_its_files_is_an_error_not_dropped(tmp_path, present):
    make_precomp(tmp_path, "train", n_images=2)
    fake = make_precomp(tmp_path, "test", n_images=2)
    (fake.root / ("test_caps.txt" if present == "filename" else "test_filename.txt")).unlink()
    missing = "test_caps.txt" if present == "filename" else "test_filename.txt"
    with pytest.raises(DatasetNotFoundError, match=missing) as err:
        caption_split_names(fake.root)
    assert err.value.path == fake.root / missing
    with pytest.raises(DatasetNotFoundError, match=missing):
        read_captions(fake.root, "test")


def test_caption_splits_of_every_format(tmp_path):
    make_precomp(tmp_path, "test", n_images=2)
    fake = make_precomp(tmp_path, "train", n_images=2)
    assert caption_split_names(fake.root) == ["train", "test"]
    js, _ = make_karpathy(tmp_path)
    assert caption_split_names(js) == ["train", "restval", "val", "test"]
    assert caption_split_names(make_coco_captions(tmp_path)[0]) == ["train", "val", "test"]


def test_trailing_blank_lines_and_crlf_are_tolerated(tmp_path):
    (tmp_path / "train_caps.txt").write_bytes(b"one\r\ntwo\r\nthree\r\nfour\r\n\r\n\n")
    (tmp_path / "train_filename.txt").write_bytes(b" a.jpg \r\nb.jpg\r\n\n")
    got = read_precomp(tmp_path, "train")
    assert got.captions == ["one", "two", "three", "four"]
    assert got.image_names == ["a.jpg", "b.jpg"]
    assert got.caption_to_image.tolist() == [0, 0, 1, 1]


def test_empty_captions_at_the_end_are_kept(tmp_path):
    write_lines(tmp_path / "test_caps.txt", ["a0", "a1", "", ""])
    write_lines(tmp_path / "test_filename.txt", ["a.tif", "a.tif", "b.tif", "b.tif"])  # 4 captions, says the index
    got = read_precomp(tmp_path, "test")
    assert got.captions == ["a0", "a1", "", ""]
    assert got.captions_per_image().tolist() == [2, 2]


def test_read_captions_picks_precomp(tmp_path):
    fake = make_precomp(tmp_path, "test", style="per_caption")
    make_karpathy(fake.root)  # a JSON beside it does not win
    assert_caption_set(read_captions(fake.root, "test"), fake)


# ---------------------------------------------------------------------------------------------------------- Karpathy


def test_karpathy_split_selection_and_variable_sentences(tmp_path):
    path, images = make_karpathy(tmp_path, splits=("train", "train", "val", "test", "restval", "train"),
                                 sentences=(5, 3, 1, 2, 4, 6))
    train = read_karpathy(path, "train")
    assert train.image_names == [images[i]["filename"] for i in (0, 1, 5)]
    assert train.captions_per_image().tolist() == [5, 3, 6]
    assert train.num_captions == 14
    assert train.captions[:5] == [s["raw"].strip() for s in images[0]["sentences"]]  # stripped
    assert train.caption_to_image.tolist() == [0] * 5 + [1] * 3 + [2] * 6
    assert train.scenes == ["beach", "forest", "river"]
    assert train.source == path and train.split == "train"
    assert read_karpathy(path, "val").num_captions == 1
    assert read_karpathy(path, "test").captions_per_image().tolist() == [2]
    merged = read_karpathy(path, ("train", "restval"))
    assert merged.split == "train+restval"
    assert merged.image_names == [images[i]["filename"] for i in (0, 1, 4, 5)]
    assert read_karpathy(path, "all").num_images == 6
    assert read_karpathy(path, "all").num_captions == 21


def test_karpathy_filepath_is_joined(tmp_path):
    path, images = make_karpathy(tmp_path, filepath="images")
    assert read_karpathy(path, "val").image_names == [f"images/{images[2]['filename']}"]


def test_karpathy_plain_string_sentences(tmp_path):
    path = tmp_path / "dataset_plain.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [" x y ", "z"]}]}))
    got = read_karpathy(path)
    assert got.captions == ["x y", "z"] and got.scenes is None


def test_read_captions_falls_back_to_json(tmp_path):
    path, _ = make_karpathy(tmp_path / "rsicd")
    assert find_karpathy_json(tmp_path / "rsicd") == path
    assert find_karpathy_json(path) == path
    assert find_karpathy_json(tmp_path) is None
    assert read_captions(tmp_path / "rsicd", "train").num_images == 3
    assert read_captions(path, "test").num_images == 1
    assert read_captions(tmp_path / "rsicd", "all", fmt="karpathy").num_images == 6


# ------------------------------------------------------------------------------------------------------------- stats


def test_stats(tmp_path):
    caps = ["Many green trees near a river.", "many green trees near a river.", "", "A beach", "a beach", "a beach"]
    write_lines(tmp_path / "train_caps.txt", caps)
    write_lines(tmp_path / "train_filename.txt", ["a", "a", "b", "c", "c", "c"])
    st = read_precomp(tmp_path, "train").stats(top_words=3)
    assert st["images"] == 3 and st["captions"] == 6 and st["split"] == "train"
    assert st["captions_per_image"] == {"min": 1, "mean": 2.0, "max": 3}
    assert st["words_per_caption"] == {"min": 0, "mean": 3.0, "max": 6}  # (6 + 6 + 0 + 2 + 2 + 2) / 6
    assert st["empty_captions"] == 1
    assert st["distinct_captions"] == 5  # exact strings: case makes "Many ..." and "A beach" distinct
    assert st["duplicate_rate"] == pytest.approx(1 / 6)
    assert st["vocabulary"] == 7  # many green trees near a river beach
    assert st["top_words"] == [("beach", 3), ("green", 2), ("trees", 2)]


def test_stats_of_fake_sets(tmp_path):
    fake = make_precomp(tmp_path, "train", per_image=[1, 4, 2, 3], style="cap2img")
    st = read_precomp(fake.root, "train").stats()
    assert st["captions_per_image"] == {"min": 1, "mean": 2.5, "max": 4}
    assert st["duplicate_rate"] == 0.0


def test_tokenize():
    assert tokenize("Many  GREEN trees, near 2 rivers!") == ["many", "green", "trees", "near", "2", "rivers"]
    assert tokenize("") == []


# ---------------------------------------------------------------------------------------------------- image resolver


@pytest.fixture(scope="module")
def ucm(tmp_path_factory):
    """Fake UCM-Captions (N.tif names) over a fake UC Merced folder of 3 classes x 100 .jpg images."""
    # The 21 UC Merced classes written in reverse order: the numbering must sort them itself.
    return make_ucm_captions(tmp_path_factory.mktemp("ucmcap"), classes=UCM_CLASS_NAMES[::-1],
                             test_numbers=(81, 82, 2100))


UCM_NAMES = [f"{n}.tif" for n in range(1, 2101)]


def test_resolver_ucm_numbering_needs_ucm_captions_over_uc_merced(ucm, tmp_path):
    _, _, image_root = ucm
    resolve = ImageResolver(image_root, UCM_NAMES)
    assert resolve.ucm_numbering and resolve.ucm_classes == sorted(UCM_CLASS_NAMES)
    assert resolve("1.tif").name == "agricultural00.jpg"
    assert resolve("100.tif").name == "agricultural99.jpg"
    assert resolve("101.tif").name == "airplane00.jpg"
    assert resolve("2100.tif").name == "tenniscourt99.jpg"
    for n in (0, 2101):
        assert resolve(f"{n}.tif") is None
    for n in range(1, 2101, 37):
        assert resolve(f"{n}.tif").stem == ucm_number_to_name(n, list(UCM_CLASS_NAMES))
    assert resolve.report == {"UCM-Captions numbering": len(range(1, 2101, 37)) + 4}
    # No evidence, no numbering: without the set's names, with another set's names, or over another folder.
    assert ImageResolver(image_root)("1.tif") is None
    assert ImageResolver(image_root, UCM_NAMES[:613])("1.tif") is None
    assert "613 images" in ImageResolver(image_root, UCM_NAMES[:613]).ucm_reason
    three = make_ucmerced(tmp_path, classes=("beach", "forest", "river"), per_class=100, size=4)
    assert not ImageResolver(three, UCM_NAMES).ucm_numbering
    assert "3 class folders" in ImageResolver(three, UCM_NAMES).ucm_reason


def test_resolver_stem_and_path_matching(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a", "b"), per_class=3, exts=(".jpg", ".png"))
    resolve = ImageResolver(root)
    assert resolve("a01.tif") == root / "Images" / "a" / "a01.png"  # .tif name finds the .png
    assert resolve("b00.tif") == root / "Images" / "b" / "b00.jpg"
    assert resolve("a02.jpg") == root / "Images" / "a" / "a02.jpg"  # by file name, in any sub-folder
    assert resolve("Images/b/b02.jpg") == root / "Images" / "b" / "b02.jpg"  # exact relative path
    assert resolve("c00.jpg") is None
    assert resolve("1.tif") is None  # numeric names are not UC Merced images by default
    assert resolve.report == {"file stem": 2, "file name": 1, "relative path": 1}


def test_resolve_all_names_the_caption_file_and_the_missing_image(tmp_path):
    root = make_ucmerced(tmp_path, classes=("a",), per_class=2)
    caps = tmp_path / "train_caps.txt"
    err = raises_naming(CaptionMismatchError, caps, ImageResolver(root).resolve_all, ["a00.tif", "zz9.tif"], caps)
    assert "zz9.tif" in str(err) and "1 of 2" in str(err)


# ------------------------------------------------------------------------------------------------ image-text dataset


def test_ucm_captions_join_their_images(ucm):
    train, test, image_root = ucm
    ds_train = RetrievalSplit.from_root(train.root, "train", image_root=image_root)
    ds_test = RetrievalSplit.from_root(test.root, "test", image_root=image_root)
    assert ds_train.has_images and ds_test.has_images
    assert ds_train.num_images == 2097 and len(ds_train) == 2097 * 5
    assert ds_test.num_images == 3 and len(ds_test) == 15
    assert [p.name for p in ds_test.image_paths] == ["agricultural80.jpg", "agricultural81.jpg", "tenniscourt99.jpg"]
    assert len(set(ds_train.image_paths) | set(ds_test.image_paths)) == 2100
    assert not set(ds_train.image_paths) & set(ds_test.image_paths)
    assert ds_train.image_paths[0].name == "agricultural00.jpg"  # 1.tif
    assert ds_train.image_paths[100].name == "airplane02.jpg"  # 103.tif (81 and 82 are test images)


def test_image_text_samples(ucm):
    _, test, image_root = ucm
    ds = RetrievalSplit.from_root(test.root, "test", image_root=image_root)
    s = ds[7]
    assert set(s) == {"caption", "image_id", "caption_id", "image", "label"} and s["label"] == -1
    assert isinstance(ds.images, ImagesFromFiles) and isinstance(ds.text, CaptionText)
    assert s["caption"] == test.captions[7] and s["image_id"] == 1 and s["caption_id"] == 7
    assert s["image"].shape == (3, 4, 4) and s["image"].dtype == torch.float32
    with Image.open(ds.image_paths[1]) as im:
        expected = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), expected, atol=1e-7)
    small = RetrievalSplit.from_root(test.root, "test", image_root=image_root, image_size=6)
    assert small[0]["image"].shape == (3, 6, 6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=RetrievalSplit.collate)))
    assert batch["image"].shape == (5, 3, 4, 4) and batch["image_id"].tolist() == [0] * 5


def test_the_former_image_text_dataset_is_the_files_split_with_a_warning(ucm):
    import rswb.data
    import rswb.data.captions

    _, test, image_root = ucm
    for module in (rswb.data, rswb.data.captions):
        with pytest.warns(FutureWarning, match="ImageTextDataset was renamed RetrievalSplit.from_root"):
            ds = module.ImageTextDataset(test.root, "test", image_root=image_root)
        assert isinstance(ds, RetrievalSplit) and ds[7]["caption"] == test.captions[7]


def test_a_split_serves_the_same_sample_whatever_its_image_inputs(ucm):
    """The inputs strategy decides what an image is to the model (files, cached levels); the captions, the join and
    the sample's ids do not change with it."""
    _, test, image_root = ucm
    files = RetrievalSplit.from_root(test.root, "test", image_root=image_root)
    levels = {"pooled": torch.arange(files.num_images * 2, dtype=torch.float32).reshape(-1, 2)}
    cached = dataclasses.replace(files, images=CachedLevels(levels))
    a, b = files[7], cached[7]
    assert {k: a[k] for k in ("caption", "image_id", "caption_id")} == {k: b[k] for k in ("caption", "image_id",
                                                                                          "caption_id")}
    assert "image" in a and "levels" not in a and torch.equal(b["levels"]["pooled"], levels["pooled"][a["image_id"]])
    batch = cached.__getitems__([0, 7])
    assert batch["levels"]["pooled"].shape == (2, 2) and batch["image_id"].tolist() == [0, 1]


def test_image_text_default_image_root(tmp_path):
    fake = make_precomp(tmp_path, "train", n_images=2, per_image=2, names=["a00.tif", "a01.tif"])
    make_ucmerced(fake.root, classes=("a",), per_class=2, images_subdir=False, name="images")
    ds = RetrievalSplit.from_root(fake.root, "train")
    assert ds.has_images and [p.name for p in ds.image_paths] == ["a00.jpg", "a01.jpg"]
    assert ds[3]["image"].shape == (3, 8, 8)


def test_image_text_without_images(tmp_path):
    fake = make_precomp(tmp_path, "train", n_images=3, per_image=2)
    ds = RetrievalSplit.from_root(fake.root, "train", transforms=lambda s: {**s, "caption": s["caption"].upper()})
    assert not ds.has_images and ds.image_paths is None
    assert len(ds) == 6
    s = ds[4]
    assert "image" not in s and s["image_id"] == 2 and s["caption"] == fake.captions[4].upper()
    raises_naming(DatasetNotFoundError, fake.root, ds.load_image, 0)


def test_image_text_from_karpathy_json(tmp_path):
    path, images = make_karpathy(tmp_path)
    ds = RetrievalSplit.from_root(path, "train")
    assert not ds.has_images and len(ds) == 14


@pytest.mark.parametrize("with_images", [True, False])
def test_image_text_plot_returns_a_figure(ucm, with_images):
    _, test, image_root = ucm
    ds = RetrievalSplit.from_root(test.root, "test", image_root=image_root if with_images else None)
    assert isinstance(ds.plot(ds[3]), Figure)


# ------------------------------------------------------------------------------------------------------- bad input


def test_caption_and_filename_counts_disagree(tmp_path):
    write_lines(tmp_path / "train_caps.txt", [f"caption {k}" for k in range(7)])
    write_lines(tmp_path / "train_filename.txt", ["a.jpg", "b.jpg", "c.jpg"])
    err = raises_naming(CaptionMismatchError, tmp_path / "train_caps.txt", read_precomp, tmp_path, "train")
    assert "7 captions" in str(err) and "3 file names" in str(err) and "train_filename.txt" in str(err)


def test_no_filenames_at_all(tmp_path):
    write_lines(tmp_path / "train_caps.txt", ["a caption"])
    (tmp_path / "train_filename.txt").write_text("")
    raises_naming(CaptionMismatchError, tmp_path / "train_caps.txt", read_precomp, tmp_path, "train")


@pytest.mark.parametrize("index,expected", [
    (["0", "1", "3"], CaptionMismatchError),  # 3 is out of range for 3 names
    (["0", "-1", "2"], CaptionMismatchError),
    (["0", "1"], CaptionMismatchError),  # one index short
    (["0", "1", "2", "2"], CaptionMismatchError),  # one too many
    (["0", "one", "2"], DataFormatError),
    (["0", "", "2"], DataFormatError),
])
def test_bad_cap2img_index(tmp_path, index, expected):
    write_lines(tmp_path / "train_caps.txt", ["c0", "c1", "c2"])
    write_lines(tmp_path / "train_filename.txt", ["a.jpg", "b.jpg", "c.jpg"])
    write_lines(tmp_path / "train_cap2img.txt", index)
    raises_naming(expected, tmp_path / "train_cap2img.txt", read_precomp, tmp_path, "train")


@pytest.mark.parametrize("missing", ["caps", "filename"])
def test_missing_precomp_file(tmp_path, missing):
    fake = make_precomp(tmp_path, "train", style="per_image")
    path = fake.root / f"train_{missing}.txt"
    path.unlink()
    err = raises_naming(DatasetNotFoundError, path, read_precomp, fake.root, "train")
    assert isinstance(err, FileNotFoundError)


def test_missing_split(tmp_path):
    fake = make_precomp(tmp_path, "train")
    err = raises_naming(DatasetNotFoundError, fake.root / "test_caps.txt", read_precomp, fake.root, "test")
    assert "train_caps.txt" in str(err)  # says what is there
    raises_naming(DatasetNotFoundError, fake.root / "test_caps.txt", read_captions, fake.root, "test")
    raises_naming(DatasetNotFoundError, fake.root / "test_caps.txt", RetrievalSplit.from_root, fake.root, "test")


def test_missing_caption_folder(tmp_path):
    raises_naming(DatasetNotFoundError, tmp_path / "rsicd", read_captions, tmp_path / "rsicd")
    raises_naming(DatasetNotFoundError, tmp_path / "rsicd", read_precomp, tmp_path / "rsicd", "train")


def test_empty_filename_line(tmp_path):
    write_lines(tmp_path / "train_caps.txt", ["c0", "c1", "c2", "c3"])
    write_lines(tmp_path / "train_filename.txt", ["a.jpg", "", "c.jpg", "d.jpg"])
    err = raises_naming(DataFormatError, tmp_path / "train_filename.txt", read_precomp, tmp_path, "train")
    assert "line 2" in str(err)


def test_caption_file_not_utf8(tmp_path):
    (tmp_path / "train_caps.txt").write_bytes(b"caf\xe9 \xff\xfe\n")
    write_lines(tmp_path / "train_filename.txt", ["a.jpg"])
    raises_naming(DataFormatError, tmp_path / "train_caps.txt", read_precomp, tmp_path, "train")


@pytest.mark.parametrize("text", ['{"images": [', "not json at all", "\xff"])
def test_invalid_karpathy_json(tmp_path, text):
    path = tmp_path / "dataset_rsicd.json"
    path.write_bytes(text.encode("latin-1"))
    raises_naming(DataFormatError, path, read_karpathy, path)
    raises_naming(DataFormatError, path, read_captions, tmp_path, "train")


@pytest.mark.parametrize("content", [
    [1, 2, 3],
    {"annotations": []},
    {"images": [{"filename": "a.jpg", "split": "train"}]},  # no sentences
    {"images": [{"sentences": [], "split": "train"}]},  # no filename
    {"images": ["a.jpg"]},
    {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}]}]},  # no train split
])
def test_karpathy_json_without_the_expected_structure(tmp_path, content):
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps(content))
    raises_naming(DataFormatError, path, read_karpathy, path, "train")


def test_karpathy_image_without_sentences(tmp_path):
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"images": [{"filename": "lonely.jpg", "split": "train", "sentences": []}]}))
    err = raises_naming(CaptionMismatchError, path, read_karpathy, path)
    assert "lonely.jpg" in str(err)


def test_karpathy_sentence_without_raw(tmp_path):
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train",
                                            "sentences": [{"tokens": ["a", "cat"]}]}]}))
    raises_naming(DataFormatError, path, read_karpathy, path)


def test_karpathy_sentences_not_a_list(tmp_path):
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": "a cat"}]}))
    raises_naming(DataFormatError, path, read_karpathy, path)


def test_caption_whose_image_is_missing(tmp_path):
    fake = make_precomp(tmp_path, "train", n_images=3, per_image=2, names=["a00.tif", "a01.tif", "a07.tif"])
    image_root = make_ucmerced(tmp_path, classes=("a",), per_class=3)
    err = raises_naming(CaptionMismatchError, fake.root / "train_caps.txt", RetrievalSplit.from_root, fake.root,
                        "train", image_root=image_root)
    assert "a07.tif" in str(err)
    assert "1 of 3" in str(err)


def test_numeric_names_of_another_release_never_join_uc_merced_silently(ucm, tmp_path):
    """Sydney-Captions (1.tif .. 613.tif) over a UC Merced folder: an error naming the name and the fix."""
    _, _, image_root = ucm
    sydney = make_sydney_captions(tmp_path, per_image=1)
    err = raises_naming(CaptionMismatchError, sydney / "train_caps.txt", RetrievalSplit.from_root, sydney, "train",
                        image_root=image_root)
    assert "'1.tif'" in str(err) and "--image-map" in str(err) and "613 images" in str(err)
    # An explicit map joins them, and says so.
    csv = tmp_path / "map.csv"
    csv.write_text("name,path\n" + "".join(f"{n}.tif,Images/beach/beach{n % 100:02d}.jpg\n" for n in range(1, 614)))
    ds = RetrievalSplit.from_root(sydney, "test", image_root=image_root, image_map=csv)
    assert ds.image_paths[0].name == "beach56.jpg"  # 556.tif
    # Images named as the captions say join by file name.
    own = tmp_path / "sydney_images"
    own.mkdir()
    for n in range(1, 614):
        (own / f"{n}.tif").write_bytes((image_root / "Images" / "beach" / "beach00.jpg").read_bytes())
    assert RetrievalSplit.from_root(sydney, "val", image_root=own).image_paths[0] == own / "498.tif"


def test_image_map_errors_name_the_file_and_the_line(ucm, tmp_path):
    _, _, image_root = ucm
    bad = tmp_path / "bad.csv"
    bad.write_text("1.tif,Images/beach/beach00.jpg,extra\n")
    assert "line 1 has 3 fields" in str(raises_naming(DataFormatError, bad, read_image_map, bad))
    bad.write_text("1.tif,a.jpg\n1.tif,b.jpg\n")
    assert "mapped twice" in str(raises_naming(DataFormatError, bad, read_image_map, bad))
    bad.write_text("1.tif,Images/beach/nope.jpg\n")
    err = raises_naming(DatasetNotFoundError, bad, ImageResolver(image_root, image_map=bad), "1.tif")
    assert "nope.jpg" in str(err)


def test_two_files_for_one_name_are_an_error(tmp_path):
    root = make_ucmerced(tmp_path, classes=("port",), per_class=1)
    (root / "Images" / "port" / "port00.png").write_bytes((root / "Images" / "port" / "port00.jpg").read_bytes())
    err = raises_naming(CaptionMismatchError, root, ImageResolver(root), "port00.tif")
    assert "matches 2 files" in str(err)


def test_missing_image_root(tmp_path):
    fake = make_precomp(tmp_path, "train")
    raises_naming(DatasetNotFoundError, tmp_path / "no_images", RetrievalSplit.from_root, fake.root, "train",
                  image_root=tmp_path / "no_images")


# ------------------------------------------------------------------------------------------------ COCO captions


@pytest.mark.parametrize("one_file", [False, True])
def test_coco_captions_are_joined_by_image_id_and_split_by_file_or_field(tmp_path, one_file):
    root, truth = make_coco_captions(tmp_path, one_file=one_file)
    for split, expected in truth.items():
        cs = read_captions(root, split)  # auto-detected
        assert cs.image_names == [name for name, _ in expected]
        assert cs.captions == [c for _, caps in expected for c in caps]
        assert cs.caption_to_image.tolist() == [i for i, (_, caps) in enumerate(expected) for _ in caps]
    assert read_coco(root, "all").num_images == 8 and coco_splits(root) == ["test", "train", "val"]
    ds = RetrievalSplit.from_root(root, "val")  # images/ beside the JSON, joined by file name
    assert [p.name for p in ds.image_paths] == ["val_000.jpg", "val_001.jpg"]
    assert ds[0]["image"].shape == (3, 8, 8)


def test_coco_errors_name_the_file_and_the_entry(tmp_path):
    root, _ = make_coco_captions(tmp_path, with_images=False)
    f = root / "captions_train2017.json"
    data = json.loads(f.read_text())
    bad = dict(data, annotations=[*data["annotations"], {"image_id": 999999, "caption": "a lost caption"}])
    f.write_text(json.dumps(bad))
    assert "999999" in str(raises_naming(CaptionMismatchError, f, read_captions, root, "train"))
    f.write_text(json.dumps(dict(data, annotations=[a for a in data["annotations"] if a["image_id"] != 1000])))
    assert "train_000.jpg" in str(raises_naming(CaptionMismatchError, f, read_captions, root, "train"))
    f.write_text(json.dumps(dict(data, images=[{"id": 1, "filename": "x.jpg"}])))
    assert "images[0]" in str(raises_naming(DataFormatError, f, read_captions, root, "train"))
    one, _ = make_coco_captions(tmp_path / "one", one_file=True, with_images=False)
    g = one / "captions.json"
    d = json.loads(g.read_text())
    d["images"][0].pop("split")
    g.write_text(json.dumps(d))
    assert "no 'split' field" in str(raises_naming(DataFormatError, g, read_captions, one, "train"))
