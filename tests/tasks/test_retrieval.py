"""The retrieval task on the embedded captions: data preparation, the method schedules, evaluation, search."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rswb.data.captions import read_captions
from rswb.data.errors import CorruptImageError, DatasetNotFoundError
from rswb.data.synthetic import ensure_embedded
from rswb.data.tags import build_tag_vocabulary, tag_targets
from rswb.engine.launch import load_run, train_task
from rswb.engine.task import EvalContext
from rswb.infer import search_image, search_text, split_embeddings, token_similarity
from rswb.metrics.retrieval import retrieval_metrics
from rswb.tasks.retrieval import RetrievalConfig, method_parts, prepare_data
from rswb.tasks.retrieval.task import RetrievalTask

QUICK = {"backbone": "small_cnn", "pretrained": False, "image_size": 64}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    old = os.environ.get("RSWB_CACHE_DIR")
    path = tmp_path_factory.mktemp("cache")
    os.environ["RSWB_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RSWB_CACHE_DIR", None)
    else:
        os.environ["RSWB_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def data(cache):
    torch.manual_seed(0)
    return prepare_data(RetrievalConfig(method="fisvl", num_tags=32, **QUICK))


def build_task(data, method: str, **options) -> RetrievalTask:
    torch.manual_seed(0)
    cfg = RetrievalConfig(method=method, num_tags=32, embed_dim=32, **QUICK, **options)
    model, loss, weights = method_parts(cfg, data)  # the task's own assembly: exactly each builder's options
    return RetrievalTask(model, loss, weights, cfg.ties)


def test_splits_scenes_and_knowledge_come_from_the_caption_files(data):
    root = ensure_embedded("captions")
    train = read_captions(root, "train")
    assert len(data.train) == train.num_captions and data.train.num_images == train.num_images
    assert data.val.num_images == read_captions(root, "val").num_images  # the set's own val split
    assert data.test.num_images == read_captions(root, "test").num_images
    # Scene labels from the Karpathy JSON beside the precomp files, one class index per image.
    js = json.loads((root / "dataset.json").read_text())
    scene = {img["filename"]: img["scene"] for img in js["images"]}
    names = [scene[p.name] for p in data.train.image_paths]
    assert [data.class_names[i] for i in data.train.labels] == names
    # Captions are cut to max_words (30); some embedded ones are longer.
    assert data.train.captions == [" ".join(c.split()[:30]) for c in train.captions]
    assert data.train.captions != train.captions
    # Knowledge from the (cut) training captions only, rows aligned with the training images.
    assert data.tag_vocabulary == build_tag_vocabulary(data.train.captions, k=32)
    per_image = [[data.train.captions[j] for j in np.flatnonzero(data.train.caption_to_image == i)]
                 for i in range(train.num_images)]
    np.testing.assert_array_equal(data.train.targets.numpy(), tag_targets(per_image, data.tag_vocabulary))
    assert data.val.targets is None and data.train.values.shape == (len(data.train),)
    # A caption's own tags are the vocabulary words it contains.
    j = 3
    words = set(data.train.captions[j].lower().replace(".", " ").split())
    own = {data.tag_vocabulary[k] for k in np.flatnonzero(data.train.caption_tags[j].numpy())}
    assert own and own <= words


def test_a_training_batch_holds_each_captions_own_image(data):
    idx = [0, 5, 6, 17]
    b = data.train.__getitems__(idx)
    img = data.train.caption_to_image[idx]
    assert b["image_id"].tolist() == img.tolist()
    for k, v in b["levels"].items():
        torch.testing.assert_close(v, data.train.levels[k][torch.as_tensor(img)])
    width = int(data.train.mask[idx].sum(1).max())
    assert b["states"].shape[1] == width and b["mask"].shape == (4, width)
    assert b["label"].tolist() == data.train.labels[img].tolist()
    assert b["tag_targets"].shape == (4, 32) and b["tags"].shape == (4, 32) and b["value"].shape == (4,)


def precomp_without_val(root, dst):
    """A copy of the embedded precomp train/test files only (no val split, no JSON, no images)."""
    dst.mkdir()
    for split in ("train", "test"):
        for kind in ("caps", "filename"):
            shutil.copy(root / f"{split}_{kind}.txt", dst / f"{split}_{kind}.txt")
    return dst


def test_validation_images_are_carved_from_train_when_the_set_has_no_val_split(cache, tmp_path):
    root = ensure_embedded("captions")
    dst = precomp_without_val(root, tmp_path / "captions")
    d = prepare_data(RetrievalConfig(data=str(dst), images=str(root / "images"), num_tags=0, val_share=0.2,
                                     **QUICK))
    n = read_captions(root, "train").num_images
    assert d.val.num_images == round(0.2 * n) and d.train.num_images + d.val.num_images == n
    assert not set(map(str, d.val.image_paths)) & set(map(str, d.train.image_paths))
    per_image = np.bincount(d.val.caption_to_image)
    assert per_image.min() == per_image.max() == 5  # every caption of a held-out image moves with it


def test_errors_name_the_problem(cache, tmp_path):
    root = ensure_embedded("captions")
    dst = precomp_without_val(root, tmp_path / "noimages")
    with pytest.raises(DatasetNotFoundError, match="--images"):
        prepare_data(RetrievalConfig(data=str(dst), **QUICK))
    flat = tmp_path / "flat"
    shutil.copytree(root / "images", flat)
    with pytest.raises(ValueError, match="FISVL needs a scene label"):
        prepare_data(RetrievalConfig(data=str(dst), images=str(flat), method="fisvl", **QUICK))


def test_fisvl_switches_to_the_value_stage(data):
    task = build_task(data, "fisvl", value_stage=0.5)
    b = data.train.__getitems__(list(range(0, 64)))
    task.on_epoch_start(1, 4)
    with torch.no_grad():
        early = task.losses(b)
    assert float(early["nce_loss"]) > 0 and float(early["hard_loss"]) >= 0 and float(early["value_loss"]) == 0
    task.on_epoch_start(2, 4)
    with torch.no_grad():
        late = task.losses(b)
    assert float(late["nce_loss"]) == 0 and float(late["hard_loss"]) == 0 and float(late["value_loss"]) > 0
    assert float(late["affil_loss"]) > 0 and float(early["affil_loss"]) > 0


def test_kamcl_moves_its_key_encoder_fills_its_queues_and_adds_knowledge_later(data):
    task = build_task(data, "kamcl", queue_size=100, knowledge_stage=0.5, ema_momentum=0.5)
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    task.train()
    task.on_epoch_start(0, 2)
    b = data.train.__getitems__(list(range(0, 40)))
    before = {n: p.clone() for n, p in task.loss.key.key.named_parameters()}
    loss, rep = task(b)
    assert float(rep["concept_loss"]) == 0 and float(rep["moco_loss"]) > 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert int(task.loss.queue_img.count) == 40 and int(task.loss.queue_txt.count) == 40
    assert task.loss.queue_img.contents()[1].tolist() == b["image_id"].tolist()
    task.on_epoch_start(1, 2)
    _, rep = task(data.train.__getitems__(list(range(40, 80))))
    assert float(rep["concept_loss"]) > 0
    moved = [n for n, p in task.loss.key.key.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # the EMA reached every key parameter, not only the first few
    task.eval()
    with torch.no_grad():
        task.losses(b)
    assert int(task.loss.queue_img.count) == 80  # evaluation never enqueues


def test_evaluate_scores_every_image_against_every_caption(data):
    task = build_task(data, "clip")
    ctx = EvalContext(torch.device("cpu"), batch_size=7)
    res = task.evaluate(data.test, ctx)
    emb = task.embeddings(data.test, ctx)
    assert emb["image"].shape == (data.test.num_images, 32) and emb["text"].shape == (len(data.test), 32)
    sim = (emb["image"] @ emb["text"].t()).numpy()
    ref = retrieval_metrics(sim, data.test.caption_to_image, ties="expected")  # the task's default rule
    assert {k: res[k] for k in ref} == pytest.approx(ref)
    assert task.protocol() == {"ties": "expected"}
    for rule in ("optimistic", "pessimistic", "published"):  # the other rules beside the headline
        other = retrieval_metrics(sim, data.test.caption_to_image, ties=rule)
        assert {k: res[f"{rule}_{k}"] for k in ("i2t_R@1", "t2i_R@10", "mR")} == pytest.approx(
            {k: other[k] for k in ("i2t_R@1", "t2i_R@10", "mR")})
    assert res["pessimistic_mR"] <= res["mR"] <= res["optimistic_mR"]
    # Embeddings in batches of 7 equal one pass over everything.
    whole = task.model.encode_image({"levels": data.test.levels})
    torch.testing.assert_close(emb["image"], whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["vsepp", "clip", "fisvl", "kamcl"])
def test_each_method_trains_end_to_end(cache, tmp_path, method):
    opts = {"method": method, **QUICK, "epochs": 2, "batch_size": 64, "progress": False,
            **({"num_tags": 32, "queue_size": 256} if method == "kamcl" else {})}
    res = train_task("retrieval", opts, run_name=method, runs_root=tmp_path)
    final = json.loads((tmp_path / method / "metrics.json").read_text())
    assert set(final["test"]) >= {"i2t_R@1", "t2i_R@10", "mR"} and 0 <= final["test"]["mR"] <= 100
    hist = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    if method == "fisvl":  # 2 epochs: stage 1 then the value stage
        assert hist[0]["train_value_loss"] == 0 and hist[1]["train_value_loss"] > 0
    assert res.test["mR"] == pytest.approx(final["test"]["mR"])
    # Every record names the tie rule behind its numbers.
    assert final["ties"] == "expected" and final["protocol"] == {"ties": "expected"}
    assert all(h["ties"] == "expected" for h in hist)


def test_runs_are_rescored_under_any_tie_rule_and_tabled_with_their_rule(cache, tmp_path, capsys):
    from rswb.cli import main
    from rswb.engine.experiments import tie_table
    from rswb.engine.runs import compare

    opts = {"method": "clip", **QUICK, "epochs": 2, "batch_size": 64, "progress": False}
    train_task("retrieval", opts, run_name="clip", runs_root=tmp_path)
    final = json.loads((tmp_path / "clip" / "metrics.json").read_text())["test"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "clip"), "--ties", "pessimistic", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ties"] == "pessimistic"
    assert printed["test"]["mR"] == pytest.approx(final["pessimistic_mR"])  # re-scored, not retrained
    assert printed["test"]["expected_mR"] == pytest.approx(final["mR"])
    table = tie_table({"clip": tmp_path / "clip"})
    assert table.loc["clip", "ties"] == "expected"
    assert table.loc["clip", "mR expected"] == pytest.approx(final["mR"])
    lo, hi = table.loc["clip", "mR pessimistic"], table.loc["clip", "mR optimistic"]
    assert lo <= table.loc["clip", "mR expected"] <= hi and lo <= table.loc["clip", "mR published"] <= hi
    assert compare([tmp_path / "clip"]).loc["clip", "ties"] == "expected"


def test_search_and_where_the_model_looks(cache, tmp_path, capsys):
    opts = {"method": "clip", **QUICK, "epochs": 3, "batch_size": 64, "progress": False, "lr": 3e-3}
    train_task("retrieval", opts, run_name="clip", runs_root=tmp_path)
    bundle = load_run(tmp_path / "clip")
    split = bundle.test
    emb = split_embeddings(bundle.task, split)
    query = split.captions[0]
    hits = search_text(bundle.task, split, query, k=4, embeddings=emb)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(3))
    # The query's score for an image is the dot product of the two embeddings the evaluation uses.
    cap_emb = emb["text"][0]
    assert hits[0]["score"] == pytest.approx(float(emb["image"][hits[0]["image"]] @ cap_emb), abs=1e-4)
    caps = search_image(bundle.task, split, 0, k=3, embeddings=emb)
    assert len(caps) == 3 and caps[0]["score"] >= caps[-1]["score"]
    own = [c for c in caps if c["own"]]
    assert all(split.caption_to_image[split.captions.index(c["caption"])] == 0 for c in own)
    heat = token_similarity(bundle.task, split, 0, query)
    assert heat.shape == (2, 2) and np.all(np.abs(heat) <= 1 + 1e-5)
    # Each word's share of the score and its stride-8 / stride-16 maps.
    from rswb.infer import word_region_maps

    words = word_region_maps(bundle.task, split, hits[0]["image"], query)
    assert words["score"] == pytest.approx(hits[0]["score"], abs=1e-4)
    n = len(words["tokens"])
    assert 0 < n <= len(query.split()) + 5 and "[CLS]" not in words["tokens"] and words["share"].shape == (n,)
    assert words["maps"]["low"].shape == (n, 8, 8) and words["maps"]["mid"].shape == (n, 4, 4)
    assert all(0 <= m.min() and m.max() <= 1 for m in words["maps"].values())
    assert words["maps"]["high"].shape == (n, 2, 2)
    assert words["cam"].shape == (n, *words["image"].shape[:2]) and words["method"] == "gradcam"
    # The share of the first word is the score minus the score of the caption without it, encoded by hand.
    text = split.query_encoder([query])
    mask = text["mask"].clone()
    mask[0, 1] = False  # position 0 is [CLS]; the first word is at position 1
    with torch.no_grad():
        without = bundle.task.model.encode_text({**text, "mask": mask})[0]
    assert words["share"][0] == pytest.approx(hits[0]["score"] - float(emb["image"][hits[0]["image"]] @ without),
                                              abs=1e-4)
    # rswb search prints the same ranking.
    from rswb.cli import main

    capsys.readouterr()
    assert main(["search", str(tmp_path / "clip"), query, "--k", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [h["image"] for h in printed] == [h["image"] for h in hits]
    assert main(["search", str(tmp_path / "nowhere"), query]) == 2


def test_the_fine_tuning_profile_trains_encoders_inside_the_model(cache, tmp_path):
    # freeze_backbone=False: images are loaded (with random dihedral views) and the backbone trains; gru_text: a
    # vocabulary of the training captions and a GRU inside the model.
    opts = {"method": "fisvl", **QUICK, "freeze_backbone": False, "text_encoder": "gru_text", "epochs": 1,
            "batch_size": 64, "lr": 1e-3, "progress": False, "max_images": 60}
    res = train_task("retrieval", opts, run_name="ft", runs_root=tmp_path)
    model = res.task.model
    assert model.backbone is not None and model.text_encoder is not None
    assert any(p.requires_grad for p in model.backbone.parameters())
    final = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert 0 <= final["test"]["mR"] <= 100
    bundle = load_run(tmp_path / "ft")
    b = bundle.train.__getitems__([0, 1])
    assert "image" in b and "tokens" in b and b["image"].shape[-1] == 64


def test_a_truncated_test_image_fails_before_any_feature_is_extracted(cache, tmp_path, monkeypatch):
    import rswb.data.features as features

    root = ensure_embedded("captions")
    dst = precomp_without_val(root, tmp_path / "captions")
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    test_cs = read_captions(dst, "test")
    victim = next(p for p in images.rglob("*") if p.is_file() and p.name == test_cs.image_names[-1].split("/")[-1])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the images were checked")

    monkeypatch.setattr(features, "extract_images", no_extraction)
    with pytest.raises(CorruptImageError, match="truncated") as err:
        prepare_data(RetrievalConfig(data=str(dst), images=str(images), num_tags=0, **QUICK))
    assert err.value.path == victim


@pytest.mark.parametrize("method", ["clip", "fisvl"])
def test_a_small_split_of_one_scene_keeps_the_class_folders(cache, tmp_path, method):
    from tests.data.fakes import make_ucm_captions

    train, _, image_root = make_ucm_captions(tmp_path)
    # max_images=4: the carved training split holds agricultural images only; the test split (81, 82, 2100) two scenes.
    d = prepare_data(RetrievalConfig(data=str(train.root), images=str(image_root), method=method, max_images=4,
                                     num_tags=0, **QUICK))
    assert d.class_names == ["agricultural", "tenniscourt"]
    assert set(d.train.labels.tolist()) == {0}
    assert sorted(d.test.labels.tolist()) == [0, 0, 1]


def test_partial_fine_tuning_of_both_encoders_on_cached_cuts(cache, tmp_path, capsys):
    opts = {"method": "fisvl", **QUICK, "epochs": 1, "batch_size": 64, "progress": False, "train_from": "stage4",
            "views": 2, "text_train_last": 1, "encoder_lr_mult": 0.1}
    res = train_task("retrieval", opts, run_name="p", runs_root=tmp_path)
    assert "cached stage4 activations (train)" in capsys.readouterr().out
    model = res.task.model
    trained_bb = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained_bb and all(n.startswith("stages.3") for n in trained_bb)
    trained_txt = {n.split(".")[3] for n, p in model.text_encoder.named_parameters()
                   if p.requires_grad and n.startswith("transformer.encoder.layer.")}
    assert trained_txt == {str(model.text_encoder.num_layers - 1)}  # only the last layer of the text transformer
    groups = res.task.param_groups()
    assert [g.get("lr_mult", 1.0) for g in groups] == [1.0, 0.1]
    from rswb.data.scenes import image_to_tensor, load_image

    bundle = load_run(tmp_path / "p")  # the cached path and the images give the same embeddings
    split = bundle.test
    x = torch.stack([image_to_tensor(load_image(split.image_paths[i], split.image_size)) for i in range(3)])
    with torch.no_grad():
        a = bundle.task.model.encode_image(split.image_inputs(np.arange(3)))
        b = bundle.task.model.encode_image({"image": x})
    torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)  # the cache is float16


def test_an_option_of_another_method_is_refused_in_seconds_and_not_recorded(tmp_path, capsys, monkeypatch):
    """`--fgis-steps` with `--method clip` names the option and the method before any data is read; a run records
    only the options its method used."""
    import time

    import rswb.tasks.retrieval as retrieval
    from rswb.cli import main

    def no_data(*_a, **_k):
        raise AssertionError("data was prepared before the options were checked")

    monkeypatch.setattr(retrieval, "prepare_data", no_data)
    t0 = time.perf_counter()
    code = main(["train", "retrieval", "--method", "clip", "--fgis-steps", "3", "--name", "x", "--runs-root",
                 str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 10
    assert "--fgis-steps is an option of fisvl; --method clip does not use it" in err
    assert main(["train", "retrieval", "--method", "vsepp", "--temperature", "0.1", "--name", "x", "--runs-root",
                 str(tmp_path)]) == 2
    assert "--temperature is an option of clip and fisvl and kamcl; --method vsepp does not use it" in \
        capsys.readouterr().err
    from rswb.config import used_dict

    saved = used_dict(RetrievalConfig(method="clip"))
    assert "temperature" in saved and not {"fgis_steps", "margin", "queue_size", "num_tags"} & set(saved)


def test_text_groups_join_identical_caption_strings():
    from rswb.tasks.retrieval.data import text_groups

    groups = text_groups(["A plane is parked.", "a plane is parked", "Two tanks.", "a plane is parked ."])
    assert groups.tolist()[0] == groups.tolist()[1] and groups[2] != groups[0] and groups.dtype == np.int64


def test_kamcl_with_duplicate_captions_takes_a_shared_string_as_a_positive(cache, tmp_path):
    opts = {"method": "kamcl", **QUICK, "num_tags": 32, "queue_size": 64, "duplicate_captions": True}
    cfg = RetrievalConfig(**opts)
    data = prepare_data(cfg, progress=False)
    assert data.train.text_groups is not None and data.val.text_groups is None
    assert len(set(data.train.text_groups.tolist())) < len(data.train)  # the embedded set repeats strings too
    b = data.train.__getitems__(list(range(40)))
    assert b["text_group"].shape == b["image_id"].shape
    _, loss, _ = method_parts(cfg, data)
    assert loss.duplicate_captions and tuple(loss.queue_img.ids.shape) == (64, 2)
    res = train_task("retrieval", {**opts, "epochs": 1, "batch_size": 64, "progress": False}, run_name="dup",
                     runs_root=tmp_path)
    assert np.isfinite(res.test["mR"])
    with pytest.raises(ValueError, match="--duplicate-captions is an option of kamcl"):
        train_task("retrieval", {**QUICK, "method": "clip", "duplicate_captions": True}, run_name="x",
                   runs_root=tmp_path)
    b.pop("text_group")
    model = method_parts(cfg, data)[0]
    with pytest.raises(ValueError, match="needs batches with text_group"):
        loss(**model(b), **b)
