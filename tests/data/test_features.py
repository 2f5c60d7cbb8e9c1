"""rswb.data.features: the one frozen-encoder extractor, its disk cache and the cached-feature dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rswb.data.features import FeatureSet, cache_root, cached, digest, extract_images, extract_text_states
from rswb.data.transforms import dihedral


class Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": i % 2}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.5)

    def forward_features(self, x):
        h = self.drop(self.conv(x))
        return {"map": h, "pooled": h.mean((2, 3))}


def test_views_dicts_dtype_and_the_encoders_mode_are_kept():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8)
    enc = Tiny().train()
    out = extract_images(enc, Images(x), views=3, batch_size=2, progress=False)["features"]
    assert out.shape == (5, 3, 4) and out.dtype == torch.float32
    with torch.no_grad():
        enc.eval()
        ref = torch.stack([enc.forward_features(dihedral(x, v))["pooled"] for v in range(3)], 1)
        enc.train()
    torch.testing.assert_close(out, ref)  # eval mode inside (no dropout): the same as a direct eval pass
    assert enc.training  # and the mode it had afterwards
    maps = extract_images(enc, Images(x), lambda e, b: e.forward_features(b), dtype=torch.float16, progress=False)
    assert set(maps) == {"map", "pooled"} and maps["map"].shape == (5, 4, 6, 6) and maps["map"].dtype == torch.float16
    torch.testing.assert_close(maps["pooled"].float(), ref[:, 0], atol=1e-3, rtol=1e-3)


class Words(nn.Module):
    state_dim = 3

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 3)

    def tokenize(self, captions):
        lens = [len(c.split()) for c in captions]
        w = max(lens)
        ids = torch.zeros(len(captions), w + 2, dtype=torch.long)  # padded wider than the longest caption
        mask = torch.zeros_like(ids)
        for i, c in enumerate(captions):
            for j, word in enumerate(c.split()):
                ids[i, j], mask[i, j] = len(word), 1
        return {"input_ids": ids, "attention_mask": mask}

    def token_states(self, ids, mask):
        return self.emb(ids) * mask[..., None]


def test_text_states_are_trimmed_padded_and_masked():
    enc = Words()
    caps = ["a bb", "ccc dddd eeeee", "f"]
    out = extract_text_states(enc, caps, batch_size=2, progress=False)
    assert out["states"].shape == (3, 3, 3) and out["states"].dtype == torch.float16
    assert out["mask"].tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    toks = enc.tokenize(caps)
    with torch.no_grad():
        ref = enc.token_states(toks["input_ids"], toks["attention_mask"])[:, :3].half()
    torch.testing.assert_close(out["states"], ref)


def test_cache_round_trip_and_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path and cache_root(tmp_path / "x") == tmp_path / "x"
    calls = []

    def compute():
        calls.append(1)
        return {"t": torch.arange(3)}

    path = tmp_path / "e" / "a.pt"
    assert cached(path, compute)["t"].tolist() == [0, 1, 2]
    assert cached(path, compute)["t"].tolist() == [0, 1, 2] and len(calls) == 1
    path.write_bytes(b"garbage")  # an unreadable entry is recomputed
    assert cached(path, compute)["t"].tolist() == [0, 1, 2] and len(calls) == 2
    f = tmp_path / "img.png"
    f.write_bytes(b"1")
    a = digest(("x", 1), [nn.Linear(2, 2)], [f], ["cap"])
    assert a != digest(("x", 2), [], [f], ["cap"]) and len(a) == 20
    assert digest(("x", 1), texts=["cap"]) == digest(("x", 1), texts=["cap"])


def test_feature_set_items_are_views():
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    ds = FeatureSet(feats, np.array([7, 8]), np.array([0, 1]))
    assert len(ds) == 6 and ds[4]["label"] == 8 and ds[4]["index"] == 1
    torch.testing.assert_close(ds[4]["features"], feats[1, 1])
    assert ds.plot(ds[0]) is not None


def test_extraction_leaves_the_global_random_state_alone():
    # A DataLoader draws from the global generator: a cold cache must not change what the run does next.
    enc, images, words = Tiny(), Images(torch.rand(3, 3, 8, 8)), Words()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    extract_images(enc, images, views=2, progress=False)
    extract_text_states(words, ["a bb", "c"], progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_paired_views_share_one_view_repeat_and_draw():
    from rswb.data.features import PairedViews

    n, v = 5, 3
    base = torch.arange(n * v, dtype=torch.float16).reshape(n, v, 1).expand(n, v, 4)
    cache = {"ms": base, "pan": -base}
    ds = PairedViews(cache, np.arange(n) % 2, ids=np.arange(10, 15), repeats=2, random_view=True)
    assert len(ds) == 10 and ds.labels.tolist() == [0, 1, 0, 1, 0] * 2
    torch.manual_seed(0)
    seen = set()
    for i in range(40):
        s = ds[i % 10]
        j = i % 5
        view = int(s["ms"][0]) - j * v
        assert 0 <= view < v and torch.equal(s["pan"], -s["ms"]) and s["id"] == 10 + j and s["index"] == j
        seen.add(view)
    assert seen == {0, 1, 2}
    fixed = PairedViews(cache, np.zeros(n), random_view=False)
    assert all(int(fixed[i]["ms"][0]) == i * v for i in range(n))
    batch = ds.draw(7)
    assert batch["ms"].shape == (7, 4) and batch["ms"].dtype == torch.float32
    assert torch.equal(batch["pan"], -batch["ms"]) and set(batch["id"].tolist()) <= set(range(10, 15))
    with pytest.raises(ValueError, match="same"):
        PairedViews({"ms": base, "pan": base[:, :2]}, np.zeros(n))
    with pytest.raises(ValueError, match="labels"):
        PairedViews(cache, np.zeros(n + 1))


def test_cached_images_builds_its_own_key_and_records_what_it_holds(tmp_path):
    """One call caches an encoder's outputs: the same images, settings and weights hit; another setting, changed
    weights or a changed file miss; the entry records its split and items."""
    import os

    from PIL import Image

    from rswb.data.features import HOLDS_KEY, cached_images
    from rswb.data.scenes import ImageFiles
    from rswb.io import load_checkpoint
    from rswb.models.backbones import small_cnn

    paths = []
    for k in range(3):
        p = tmp_path / "scenes" / f"c{k % 2}" / f"img{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * k, 10, 200)).save(p)
        paths.append(p)
    torch.manual_seed(0)
    net = small_cnn().eval()
    calls = []

    def run(**kw):
        def images():
            calls.append(1)
            return ImageFiles(paths, 16)
        return cached_images(net, images, paths, output="small-pooled", split="train",
                             cache_dir=tmp_path / "cache", progress=False, **kw)

    first = run(settings=16)
    again = run(settings=16)
    assert len(calls) == 1 and torch.equal(first["features"], again["features"])  # a hit builds no dataset
    run(settings=32)  # another setting: another entry
    assert len(calls) == 2
    entries = sorted((tmp_path / "cache" / "images").glob("small-pooled-*.pt"))
    assert len(entries) == 2
    holds = load_checkpoint(entries[0])[HOLDS_KEY]
    assert holds["split"] == "train" and holds["items"] == ["c0/img0.png", "c1/img1.png", "c0/img2.png"]
    with torch.no_grad():
        net.stem[0].weight.add_(1.0)  # other weights: a miss
    run(settings=16)
    assert len(calls) == 3
    os.utime(paths[0], ns=(1, 1))  # a changed file (its modification time): a miss
    run(settings=16)
    assert len(calls) == 4
