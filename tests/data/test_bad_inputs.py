"""A seeded battery of corrupted inputs: every one must give a clear data error naming the bad file.

Each case writes a valid fake twin (``tests/data/fakes.py``), breaks one thing the way real downloads and releases
break (truncated or zero-byte files, wrong dtype, NaN pixels, wrong band counts, grids that do not fit, labels out of
range, caption counts that disagree, duplicate image numbers, folders and symlink loops where a file belongs,
non-UTF-8 text, broken JSON, a bad image map), and says which file the message must name. Every case is run twice:
through :func:`rswb.data.check.summarize` (a :class:`DataError` naming the file) and through ``rswb data check
--json`` (exit code 2, a JSON error on stdout, no traceback). Neither may write anything into the data folder or
leave a temporary file in the cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rswb.data.check import summarize
from rswb.data.errors import DataError
from tests.data.fakes import (
    garble_file,
    make_aid,
    make_coco_captions,
    make_karpathy,
    make_mspan_folder,
    make_mspan_mat,
    make_precomp,
    make_sydney_captions,
    make_ucm_captions,
    make_ucmerced,
    truncate_file,
    write_tif,
)

NON_UTF8 = "caf\xe9 near the river .\n".encode("latin-1")  # a Latin-1 byte that is no UTF-8


@dataclass
class Case:
    """One corrupted input: ``path`` (and the ``--images`` / ``--image-map`` options) and the file to be named."""

    path: Path
    culprit: Path
    images: Path | None = None
    image_map: Path | None = None


CASES: dict[str, Callable[[Path], Case]] = {}


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    """Register a case under its function name."""
    CASES[fn.__name__] = fn
    return fn


def _rewrite_tif(path: Path, arr: np.ndarray) -> Path:
    path.unlink()
    return write_tif(path, arr)


def _loop(path: Path) -> None:
    """Make ``path`` a symlink to itself (a loop: every open fails with ELOOP)."""
    path.unlink()
    path.symlink_to(path.name)


def _as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _unreadable(path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop root from reading")
    path.chmod(0)


# ------------------------------------------------------------------------------------------------ MS+PAN lab folders


@case
def mspan_ms_truncated(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, truncate_file(f.files["ms"], 0.3))


@case
def mspan_pan_truncated(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, truncate_file(f.files["pan"], 0.5))


@case
def mspan_ms_zero_bytes(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    f.files["ms"].write_bytes(b"")
    return Case(f.path, f.files["ms"])


@case
def mspan_pan_garbled(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, garble_file(f.files["pan"], seed=1))


@case
def mspan_ms_nan(tmp: Path) -> Case:
    f = make_mspan_folder(tmp, dtype="float32")
    ms = f.ms.copy()
    ms[1, 3, 4] = np.nan
    return Case(f.path, _rewrite_tif(f.files["ms"], ms))


@case
def mspan_pan_inf(tmp: Path) -> Case:
    f = make_mspan_folder(tmp, dtype="float32")
    pan = f.pan.copy()
    pan[0, 7, 2] = np.inf
    return Case(f.path, _rewrite_tif(f.files["pan"], pan))


@case
def mspan_ms_complex_dtype(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, _rewrite_tif(f.files["ms"], f.ms.astype(np.complex64)))


@case
def mspan_pan_three_bands(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, _rewrite_tif(f.files["pan"], np.repeat(f.pan, 3, axis=0)))


@case
def mspan_pan_not_ratio(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)  # MS 12 x 10: a 47 x 40 PAN is no integer multiple
    return Case(f.path, _rewrite_tif(f.files["pan"], f.pan[:, :47, :40].copy()))


@case
def mspan_label_out_of_range(tmp: Path) -> Case:
    f = make_mspan_folder(tmp, n_classes=3)
    train = f.labels["train"].copy()
    train[0, 0] = 9
    np.save(f.files["train"], train)
    return Case(f.path, f.files["train"])


@case
def mspan_label_wrong_shape(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    np.save(f.files["test"], f.labels["test"][:, :-1])
    return Case(f.path, f.files["test"])


@case
def mspan_label_fractional(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    np.save(f.files["train"], f.labels["train"].astype(np.float32) + 0.5)
    return Case(f.path, f.files["train"])


@case
def mspan_label_truncated(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, truncate_file(f.files["train"], 0.6))


@case
def mspan_label_garbled(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    return Case(f.path, garble_file(f.files["test"], seed=2))


@case
def mspan_label_nan(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    lab = f.labels["test"].astype(np.float64)
    lab[2, 2] = np.nan
    np.save(f.files["test"], lab)
    return Case(f.path, f.files["test"])


@case
def mspan_train_test_overlap(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    test = f.labels["test"].copy()
    hit = np.flatnonzero(f.labels["train"])[0]
    test.flat[hit] = 1
    np.save(f.files["test"], test)
    return Case(f.path, f.files["test"])


@case
def mspan_ms_is_a_folder(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    _as_dir(f.files["ms"])
    return Case(f.path, f.files["ms"])


@case
def mspan_pan_symlink_loop(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    _loop(f.files["pan"])
    return Case(f.path, f.files["pan"])


@case
def mspan_classes_not_utf8(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    (f.path / "classes.txt").write_bytes(b"class_a\n" + NON_UTF8 + b"class_c\n")
    return Case(f.path, f.path / "classes.txt")


@case
def mspan_ms_unreadable(tmp: Path) -> Case:
    f = make_mspan_folder(tmp)
    _unreadable(f.files["ms"])
    return Case(f.path, f.files["ms"])


# ------------------------------------------------------------------------------------------------------- .mat pairs


@case
def mat_truncated(tmp: Path) -> Case:
    f = make_mspan_mat(tmp)
    return Case(f.path, truncate_file(f.path, 0.5))


@case
def mat_zero_bytes(tmp: Path) -> Case:
    f = make_mspan_mat(tmp)
    f.path.write_bytes(b"")
    return Case(f.path, f.path)


@case
def mat_garbled(tmp: Path) -> Case:
    f = make_mspan_mat(tmp)
    return Case(f.path, garble_file(f.path, n=4096, seed=3))


@case
def mat_without_pan(tmp: Path) -> Case:
    f = make_mspan_mat(tmp, drop=("I_PAN",))
    return Case(f.path, f.path)


def _savemat(path: Path, **arrays) -> Path:
    import scipy.io

    scipy.io.savemat(path, arrays)
    return path


@case
def mat_pan_not_ratio(tmp: Path) -> Case:
    rng = np.random.default_rng(4)
    p = _savemat(tmp / "odd.mat", I_MS=rng.integers(0, 2048, (8, 6, 4), dtype=np.uint16),
                 I_PAN=rng.integers(0, 2048, (30, 23), dtype=np.uint16))
    return Case(p, p)


@case
def mat_ms_nan(tmp: Path) -> Case:
    rng = np.random.default_rng(5)
    ms = rng.normal(100, 10, (8, 6, 4)).astype(np.float32)
    ms[2, 3, 1] = np.nan
    p = _savemat(tmp / "nan.mat", I_MS=ms, I_PAN=rng.normal(100, 10, (32, 24)).astype(np.float32))
    return Case(p, p)


@case
def mat_ratio_disagrees(tmp: Path) -> Case:
    rng = np.random.default_rng(6)
    p = _savemat(tmp / "ratio.mat", I_MS=rng.integers(0, 2048, (8, 6, 4), dtype=np.uint16),
                 I_PAN=rng.integers(0, 2048, (32, 24), dtype=np.uint16), ratio=np.array([[3]]))
    return Case(p, p)


@case
def mat_ms_is_text(tmp: Path) -> Case:
    p = tmp / "text.mat"
    p.write_text("MATLAB 5.0 MAT-file, but not really\n" * 20)
    return Case(p, p)


# ---------------------------------------------------------------------------------------------------- scene folders


def _ucm(tmp: Path, **kw) -> Path:
    return make_ucmerced(tmp, per_class=100, size=8, **kw)


@case
def scenes_jpeg_truncated(tmp: Path) -> Case:
    root = _ucm(tmp)
    return Case(root, truncate_file(root / "Images" / "forest" / "forest42.jpg", 0.5))


@case
def scenes_png_zero_bytes(tmp: Path) -> Case:
    root = _ucm(tmp, exts=(".png",))
    bad = root / "Images" / "river" / "river99.png"
    bad.write_bytes(b"")
    return Case(root, bad)


@case
def scenes_image_garbled(tmp: Path) -> Case:
    root = _ucm(tmp, exts=(".tif",))
    return Case(root, garble_file(root / "Images" / "beach" / "beach03.tif", seed=7))


@case
def scenes_text_named_jpg(tmp: Path) -> Case:
    root = _ucm(tmp)
    bad = root / "Images" / "beach" / "beach50.jpg"
    bad.write_text("<html>403 Forbidden</html>\n")  # what a failed download often saves
    return Case(root, bad)


@case
def scenes_duplicate_number_ext(tmp: Path) -> Case:
    root = _ucm(tmp)
    src = root / "Images" / "forest" / "forest10.jpg"
    (src.with_suffix(".png")).write_bytes(src.read_bytes())
    return Case(root, src.with_suffix(".png"))


@case
def scenes_duplicate_number_padding(tmp: Path) -> Case:
    root = _ucm(tmp)
    src = root / "Images" / "beach" / "beach07.jpg"
    (src.parent / "beach7.jpg").write_bytes(src.read_bytes())
    return Case(root, src.parent / "beach7.jpg")


@case
def scenes_image_is_a_folder(tmp: Path) -> Case:
    root = _ucm(tmp)
    bad = root / "Images" / "river" / "river12.jpg"
    _as_dir(bad)
    return Case(root, bad)


@case
def scenes_image_symlink_loop(tmp: Path) -> Case:
    root = _ucm(tmp)
    bad = root / "Images" / "river" / "river13.jpg"
    _loop(bad)
    return Case(root, bad)


@case
def scenes_image_dangling_link(tmp: Path) -> Case:
    root = _ucm(tmp)
    bad = root / "Images" / "beach" / "beach14.jpg"
    bad.unlink()
    bad.symlink_to(tmp / "nowhere.jpg")
    return Case(root, bad)


@case
def scenes_image_unreadable(tmp: Path) -> Case:
    root = _ucm(tmp)
    bad = root / "Images" / "forest" / "forest88.jpg"
    _unreadable(bad)
    return Case(root, bad)


@case
def aid_query_truncated(tmp: Path) -> Case:
    root = make_aid(tmp, per_class=12)
    return Case(root, truncate_file(root / "Beach" / "beach_11.jpg", 0.4))


@case
def aid_duplicate_number(tmp: Path) -> Case:
    root = make_aid(tmp, per_class=12)
    src = root / "Forest" / "forest_3.jpg"
    (src.parent / "forest_03.jpg").write_bytes(src.read_bytes())
    return Case(root, src.parent / "forest_03.jpg")


# --------------------------------------------------------------------------------------------------------- captions


def _precomp_with_images(tmp: Path, **kw):
    fake = make_precomp(tmp, "train", n_images=3, **kw)
    images = fake.root / "images"
    images.mkdir()
    rng = np.random.default_rng(8)
    from PIL import Image

    for n in fake.image_names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / n)
    return fake, images


@case
def precomp_caption_count_mismatch(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3, per_image=5)
    caps = fake.root / "train_caps.txt"
    caps.write_text("\n".join(caps.read_text().splitlines()[:-2]) + "\n")  # 13 captions for 3 images x 5
    return Case(fake.root, caps)


@case
def precomp_caps_not_utf8(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3)
    caps = fake.root / "train_caps.txt"
    lines = caps.read_bytes().splitlines(keepends=True)
    caps.write_bytes(b"".join(lines[:4] + [NON_UTF8] + lines[5:]))
    return Case(fake.root, caps)


@case
def precomp_filenames_not_utf8(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3)
    names = fake.root / "train_filename.txt"
    names.write_bytes(b"img_0.jpg\n\xff\xfeimg_1.jpg\nimg_2.jpg\n")
    return Case(fake.root, names)


@case
def precomp_split_without_names(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3)
    make_precomp(tmp, "test", n_images=2)
    (fake.root / "test_filename.txt").unlink()
    return Case(fake.root, fake.root / "test_filename.txt")


@case
def precomp_caps_zero_bytes(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3)
    (fake.root / "train_caps.txt").write_bytes(b"")
    return Case(fake.root, fake.root / "train_caps.txt")


@case
def precomp_cap2img_out_of_range(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", per_image=[2, 3, 1], style="cap2img")
    idx = fake.root / "train_cap2img.txt"
    idx.write_text("0\n0\n1\n1\n1\n7\n")
    return Case(fake.root, idx)


@case
def precomp_caps_is_a_folder(tmp: Path) -> Case:
    fake = make_precomp(tmp, "train", n_images=3)
    _as_dir(fake.root / "train_caps.txt")
    return Case(fake.root, fake.root / "train_caps.txt")


@case
def precomp_image_missing(tmp: Path) -> Case:
    fake, images = _precomp_with_images(tmp)
    (images / "img_1.jpg").unlink()
    return Case(fake.root, images / "img_1.jpg", images=images)


@case
def precomp_image_truncated(tmp: Path) -> Case:
    fake, images = _precomp_with_images(tmp)
    return Case(fake.root, truncate_file(images / "img_2.jpg", 0.3), images=images)


@case
def sydney_numbers_on_ucmerced(tmp: Path) -> Case:
    root = make_sydney_captions(tmp)
    images = _ucm(tmp, classes=("agricultural", "airplane", "beach", "forest", "river", "runway", "harbor"))
    return Case(root, root / "1.tif", images=images)  # the first unmatched name, and the fix


@case
def ucm_captions_image_truncated(tmp: Path) -> Case:
    train, _, image_root = make_ucm_captions(tmp)
    bad = image_root / "Images" / "beach" / "beach50.jpg"  # UCM number 351
    return Case(train.root, truncate_file(bad, 0.3), images=image_root)


@case
def karpathy_truncated(tmp: Path) -> Case:
    path, _ = make_karpathy(tmp)
    return Case(path, truncate_file(path, 0.7))


@case
def karpathy_garbled(tmp: Path) -> Case:
    path, _ = make_karpathy(tmp)
    return Case(path, garble_file(path, seed=9))


@case
def karpathy_not_utf8(tmp: Path) -> Case:
    path, _ = make_karpathy(tmp)
    path.write_bytes(path.read_bytes().replace(b"caption 0", b"caption \xe9", 1))
    return Case(path, path)


@case
def karpathy_without_sentences(tmp: Path) -> Case:
    path, images = make_karpathy(tmp)
    del images[2]["sentences"]
    path.write_text(json.dumps({"images": images}))
    return Case(path, path)


@case
def karpathy_not_a_list(tmp: Path) -> Case:
    path, _ = make_karpathy(tmp)
    path.write_text(json.dumps({"images": {"filename": "a.jpg"}}))
    return Case(path, path)


@case
def coco_truncated(tmp: Path) -> Case:
    root, _ = make_coco_captions(tmp)
    return Case(root, truncate_file(root / "captions_val2017.json", 0.6))


@case
def coco_unknown_image_id(tmp: Path) -> Case:
    root, _ = make_coco_captions(tmp)
    path = root / "captions_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["image_id"] = 424242
    path.write_text(json.dumps(data))
    return Case(root, path)


@case
def coco_without_file_name(tmp: Path) -> Case:
    root, _ = make_coco_captions(tmp)
    path = root / "captions_test2017.json"
    data = json.loads(path.read_text())
    del data["images"][1]["file_name"]
    path.write_text(json.dumps(data))
    return Case(root, path)


@case
def coco_image_truncated(tmp: Path) -> Case:
    root, truth = make_coco_captions(tmp)
    return Case(root, truncate_file(root / "images" / truth["val"][1][0], 0.4))


@case
def image_map_missing_column(tmp: Path) -> Case:
    root = make_sydney_captions(tmp, splits=(("train", 4),))
    csv = tmp / "map.csv"
    csv.write_text("name,path\n1.tif,a.jpg\n2.tif\n")
    return Case(root, csv, image_map=csv)


@case
def image_map_names_missing_image(tmp: Path) -> Case:
    fake, images = _precomp_with_images(tmp)
    csv = tmp / "map.csv"
    csv.write_text("".join(f"{n},{images / n}\n" for n in fake.image_names[:2]) + f"img_2.jpg,{images / 'gone.jpg'}\n")
    return Case(fake.root, images / "gone.jpg", image_map=csv)


@case
def image_map_not_utf8(tmp: Path) -> Case:
    fake, images = _precomp_with_images(tmp)
    csv = tmp / "map.csv"
    csv.write_bytes(b"name,path\nimg_0.jpg,caf\xe9.jpg\n")
    return Case(fake.root, csv, image_map=csv)


@case
def image_map_duplicate_name(tmp: Path) -> Case:
    fake, images = _precomp_with_images(tmp)
    csv = tmp / "map.csv"
    rows = [f"{n},{images / n}" for n in fake.image_names] + [f"img_0.jpg,{images / 'img_1.jpg'}"]
    csv.write_text("\n".join(rows) + "\n")
    return Case(fake.root, csv, image_map=csv)


# ------------------------------------------------------------------------------------------------------------ tests


def _snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every entry under ``root`` with its size and mtime (``None`` for what cannot be stat-ed, e.g. a loop)."""
    out: dict[str, tuple[int, int] | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            try:
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
            except OSError:
                out[str(p)] = None
    return out


def _build(name: str, tmp_path: Path, monkeypatch) -> tuple[Case, Path]:
    data = tmp_path / "data"
    data.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("RSWB_CACHE_DIR", str(cache))
    return CASES[name](data), data


def _leftovers(tmp_path: Path) -> list[str]:
    names = (p for p in tmp_path.rglob("*"))
    return [str(p) for p in names if p.name.endswith((".tmp", ".part")) or ".tmp." in p.name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_clear_error(name, tmp_path, monkeypatch):
    c, data = _build(name, tmp_path, monkeypatch)
    before = _snapshot(data)
    with pytest.raises(DataError) as info:
        summarize(c.path, image_root=c.images, image_map=c.image_map)
    msg = str(info.value)
    assert c.culprit.name in msg, f"{name}: {c.culprit.name!r} not named in {msg!r}"
    assert "Traceback" not in msg
    assert _snapshot(data) == before, f"{name}: the check changed the data folder"
    assert not _leftovers(tmp_path), f"{name}: temporary files left behind"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_cli_json(name, tmp_path, monkeypatch):
    from rswb.cli import main

    c, data = _build(name, tmp_path, monkeypatch)
    argv = ["data", "check", str(c.path), "--json"]
    if c.images is not None:
        argv += ["--images", str(c.images)]
    if c.image_map is not None:
        argv += ["--image-map", str(c.image_map)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 2, f"{name}: exit {code}"
    payload = json.loads(out.getvalue())
    assert c.culprit.name in payload["error"]["message"]
    assert payload["error"]["kind"] == "data error"
    assert "Traceback" not in err.getvalue() and err.getvalue().count("\n") == 1
    assert not _leftovers(tmp_path)


def test_battery_summary(tmp_path, monkeypatch, capsys):
    """The whole battery in one count: every bad input (bar the ones that cannot apply here) gets a clear error."""
    clear, tried, skipped = 0, 0, []
    for name in sorted(CASES):
        sub = tmp_path / name
        sub.mkdir()
        try:
            c, _ = _build(name, sub, monkeypatch)
        except pytest.skip.Exception:
            skipped.append(name)
            continue
        tried += 1
        try:
            summarize(c.path, image_root=c.images, image_map=c.image_map)
        except DataError as err:
            clear += c.culprit.name in str(err)
    with capsys.disabled():
        note = f" ({len(skipped)} skipped: {skipped})" if skipped else ""
        print(f"\n{tried} bad inputs, {clear} clear errors{note}")
    assert tried >= 40
    assert clear == tried
