"""`rswb train hash`: the DHCL task end to end on embedded scenes, and a quick real UC Merced run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from rswb.cli import main
from rswb.data.errors import CorruptImageError
from rswb.data.features import FeatureSet
from rswb.data.transforms import dihedral
from rswb.tasks.hashing import HashConfig, hash_task


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = torch.arange(9.0).reshape(1, 3, 3)
    views = [dihedral(x, v) for v in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(dihedral(x, 0), x)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_bundle_splits_follow_the_protocol(tmp_path):
    b = hash_task(HashConfig(backbone="small_cnn", pretrained=False, image_size=32, views=2, bits=8,
                             per_class=20, cache_dir=str(tmp_path)))
    assert isinstance(b.train, FeatureSet) and isinstance(b.test, FeatureSet)
    # Embedded scenes, 20 per class of 10 classes from NN 00-79 (train, 10 % validation) and NN 80-99 (query = db).
    assert len(b.val) == 20 and len(b.train) == 2 * 180 and len(b.test) == 200
    assert set(b.train.index.tolist()).isdisjoint(b.val.index.tolist())  # no image in both, in any view
    # The validation block: the first 2 (0.125 of 20) training images of each class, as the test split is a block.
    assert b.val.index.tolist() == [c * 20 + i for c in range(10) for i in range(2)]
    refit = hash_task(HashConfig(backbone="small_cnn", pretrained=False, image_size=32, views=2, bits=8,
                                 per_class=20, cache_dir=str(tmp_path), val_rule="none"))
    assert refit.val is None and len(refit.train) == 2 * 200  # every training image trains; the last epoch is kept
    assert b.train_defaults["lr"] == 1e-3
    groups = b.task.param_groups()
    assert groups[1]["lr_mult"] == 100.0 and groups[1]["params"][0] is b.task.loss.proxies
    assert list(tmp_path.rglob("*.pt"))  # features were cached


def test_train_hash_cli_on_embedded_scenes(tmp_path):
    args = ["train", "hash", "--backbone", "small_cnn", "--pretrained", "false", "--image-size", "32", "--bits", "16",
            "--epochs", "3", "--views", "1", "--per-class", "20", "--runs-root", str(tmp_path), "--name", "h",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    final = json.loads((tmp_path / "h" / "metrics.json").read_text())
    keys = {"mAP@20", "P@20", "P@r2", "R@r2", "mAP@20_nocue", "dhcl_MAP@20", "class_acc"}
    assert keys <= set(final["test"]) and final["monitor"] == "mAP@20"
    lengths = {"hash_bits", "cue_bits", "code_bits"}
    for key, v in final["test"].items():
        assert key in lengths or 0.0 <= v <= 1.0
    # The code's length as stored: 16 hash bits plus ceil(log2 10) = 4 class bits (not 16 + 4 x 17 repeats).
    assert (final["test"]["hash_bits"], final["test"]["cue_bits"], final["test"]["code_bits"]) == (16, 4, 20)


def test_train_cli_runs_a_profile_under_the_users_options(tmp_path, capsys):
    """--profile NAME starts from the recipe a table names; the config file and --options override it."""
    import yaml

    from rswb.tasks.hashing import PROFILES

    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("per_class: 12\n")
    args = ["train", "hash", "--profile", "quick", "--config", str(cfg_file), "--backbone", "small_cnn",
            "--pretrained", "false", "--epochs", "2", "--runs-root", str(tmp_path), "--name", "q", "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "q" / "config.yaml").read_text())
    quick = PROFILES["quick"]
    assert saved["profile"] == "quick"  # the recipe's name is recorded beside the options it set
    assert saved["task_config"]["image_size"] == quick["image_size"] and saved["task_config"]["views"] == 1
    assert saved["train"]["lr"] == quick["lr"]  # from the recipe
    assert saved["train"]["epochs"] == 2 and saved["task_config"]["per_class"] == 12  # the user's, not the recipe's
    assert main(["train", "hash", "--profile", "fastest", "--runs-root", str(tmp_path), "--name", "z"]) == 2
    err = capsys.readouterr().err
    assert "--profile fastest: task hash has no such profile; its profiles: quick, cpu, finetune, full" in err
    assert not (tmp_path / "z").exists()


def test_fine_tuning_profile_trains_the_backbone_with_frozen_bn(tmp_path):
    from rswb.engine import fit

    b = hash_task(HashConfig(backbone="small_cnn", pretrained=False, freeze_backbone=False, image_size=32, bits=8,
                             per_class=6))
    assert len(b.train) == 50 and len(b.test) == 60  # images, not cached features: 6 per class minus validation
    before = {k: v.clone() for k, v in b.task.model.backbone.state_dict().items()}
    fit(b.task, b.train, val=b.val, test=b.test, config={**b.train_defaults, "epochs": 1, "batch_size": 10,
                                                         "lr": 1e-2, "progress": False}, run_dir=tmp_path / "ft")
    after = b.task.model.backbone.state_dict()
    conv = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert any(not torch.equal(before[k], after[k]) for k in conv)  # the backbone trained
    stats = [k for k in before if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # batch-norm statistics stayed frozen


def test_eval_rescores_a_run_to_its_recorded_metrics(tmp_path, capsys):
    args = ["train", "hash", "--backbone", "small_cnn", "--pretrained", "false", "--image-size", "32", "--bits", "8",
            "--epochs", "2", "--views", "1", "--per-class", "10", "--runs-root", str(tmp_path), "--name", "e",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", "e", "--root", str(tmp_path), "--json", "--split", "both"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    final = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert rescored["test"] == pytest.approx(final["test"]) and rescored["val"] == pytest.approx(final["val"])
    assert main(["eval", "missing", "--root", str(tmp_path)]) == 2


@pytest.mark.realdata
@pytest.mark.slow
def test_quick_profile_on_uc_merced(shared_data, tmp_path):
    """Frozen ImageNet EfficientNet-Lite0, 20 images per class: mAP@20 far above chance (1/21)."""
    args = ["train", "hash", "--data", str(shared_data("UCMerced_LandUse")), "--bits", "32", "--per-class", "20",
            "--views", "1", "--epochs", "40", "--batch-size", "32", "--lr", "3e-3", "--runs-root", str(tmp_path),
            "--name", "u", "--no-progress",
            "--cache-dir", str(tmp_path / "cache"), "--val-share", "0.2"]
    assert main(args) == 0
    test = json.loads((tmp_path / "u" / "metrics.json").read_text())["test"]
    # Measured 0.82 / 0.80 (chance: about 0.05); the cue helps once the classifier is good.
    assert test["mAP@20"] > 0.6 and test["class_acc"] > 0.6


def test_profile_run_reuses_a_finished_run_with_the_same_options(tmp_path, monkeypatch):
    from rswb.engine import experiments
    from rswb.infer import load_codes

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    tiny = {**experiments.PROFILES["hash"]["quick"], "image_size": 32, "per_class": 10}
    monkeypatch.setitem(experiments.PROFILES["hash"], "tiny", tiny)
    run_dir = tmp_path / "runs" / "tiny-8bit"

    def run(epochs):
        return experiments.profile_run("hash", "tiny", run_dir, progress=False, bits=8, data=None, epochs=epochs,
                                       seed=0)

    assert run(1) == run_dir and (run_dir / "metrics.json").exists()
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    assert run(1) == run_dir
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # reused, not retrained
    run(2)  # other options: retrained
    assert (run_dir / "metrics.json").stat().st_mtime_ns != stamp
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    codes = load_codes(run_dir)
    n = 10 * 10  # 10 query images of each of the 10 embedded classes
    assert codes["bits"].shape == (n, 8) and codes["code"].shape[0] == n and codes["code"].shape[1] > 8
    assert set(codes["code"].ravel().tolist()) <= {-1, 1}
    assert len(codes["paths"]) == n and codes["label"].tolist() == sorted(codes["label"].tolist())
    assert len(codes["class_names"]) == 10 and codes["metrics"]["mAP@20"] >= 0.0
    with pytest.raises(KeyError, match="quick"):
        experiments.profile_options("hash", "nope")
    loaded = experiments.load_run(run_dir)
    assert loaded.metrics["test"] == codes["metrics"] and len(loaded.history) == 2 and loaded.test is not None


def test_notebook_runs_are_named_by_their_options_log_to_the_run_and_show_no_bars(tmp_path, monkeypatch, capfd):
    from rswb.engine import experiments

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    tiny = {**experiments.PROFILES["hash"]["quick"], "image_size": 32, "per_class": 10}
    monkeypatch.setitem(experiments.PROFILES["hash"], "tiny", tiny)
    out = tmp_path / "runs"

    def run(epochs):
        return experiments.notebook_run("hash", "tiny", out, "8bit-s0", progress=False, bits=8, data=None,
                                        epochs=epochs, seed=0)

    one = run(1)
    printed = capfd.readouterr()
    assert printed.out == ""  # the final table and cache lines went to the run's log
    assert "%|" not in printed.err  # --progress false: no bar, feature extraction included
    log = (one / "train.log").read_text()
    assert "best epoch 1 by val mAP@20" in log
    assert one.name.startswith("tiny-8bit-s0-") and run(1) == one  # same options: same folder, reused
    two = run(2)
    assert two != one and (one / "metrics.json").exists() and (two / "metrics.json").exists()  # both kept
    assert experiments.run_name("x", {"a": 1, "b": 2}) == experiments.run_name("x", {"b": 2, "a": 1})


def test_a_truncated_query_image_fails_in_seconds_before_the_training_features(tmp_path, monkeypatch, capsys):
    import rswb.data.features as features
    from tests.data.fakes import make_aid, truncate_file

    root = make_aid(tmp_path, classes=("Airport", "Beach", "Forest"), per_class=12, size=16)
    victim = truncate_file(root / "Forest" / "forest_11.jpg", keep=0.3)  # in the query half (numbers 7-12)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the images were checked")

    monkeypatch.setattr(features, "extract_images", no_extraction)
    with pytest.raises(CorruptImageError) as err:
        hash_task(HashConfig(data=str(root), backbone="small_cnn", pretrained=False, image_size=16,
                             cache_dir=str(tmp_path / "cache")))
    assert err.value.path == victim
    code = main(["train", "hash", "--data", str(root), "--backbone", "small_cnn", "--pretrained", "false",
                 "--runs-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2 and "forest_11.jpg" in capsys.readouterr().err
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "cache").rglob("*"))


def test_load_codes_builds_only_the_test_split(tmp_path, monkeypatch):
    import rswb.data.features as features

    args = ["train", "hash", "--backbone", "small_cnn", "--pretrained", "false", "--image-size", "32", "--bits", "8",
            "--epochs", "1", "--views", "2", "--per-class", "10", "--runs-root", str(tmp_path), "--name", "h",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    shutil_cache = tmp_path / "cache" / "images"
    for f in shutil_cache.glob("*.pt"):
        f.unlink()  # a cold cache: whatever load_codes needs is computed again
    computed = []
    real = features.extract_images

    def recording(backbone, dataset, *args, views=None, **kwargs):
        computed.append((len(dataset), views))
        return real(backbone, dataset, *args, views=views, **kwargs)

    monkeypatch.setattr(features, "extract_images", recording)
    from rswb.infer import load_codes

    out = load_codes(tmp_path / "h")
    assert computed == [(100, 1)]  # the 10 x 10 query images, once; not the 10 x 10 x 2 training views
    final = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert out["code"].shape[0] == 100 and out["metrics"] == final["test"]
    # the codes are the trained model's: scoring them gives the recorded test mAP@20
    from rswb.metrics.hashing import hash_metrics

    codes, labels = out["code"].astype("float32"), out["label"]
    got = hash_metrics(codes, codes, labels, labels, topk=(20,), query_db_index=np.arange(100))
    assert got["mAP@20"] == pytest.approx(final["test"]["mAP@20"], abs=1e-6)
    # Grad-CAM runs the same trained model on the images themselves: its predicted class is the one in the codes.
    from rswb.infer import hash_grad_cam

    cams = hash_grad_cam(tmp_path / "h", [0, 57, 99])  # LayerCAM over strides 8 and 16, at the image's size
    assert cams["images"].shape == (3, 32, 32, 3) and cams["code"].shape == cams["cue"].shape == (3, 32, 32)
    assert cams["method"] == "LayerCAM, strides 8/16" and len(cams["paths"]) == 3
    coarse = hash_grad_cam(tmp_path / "h", [0, 57, 99], method="gradcam", strides=None)
    assert coarse["cue"].shape == (3, 1, 1) and coarse["method"] == "Grad-CAM, stride 32"
    assert cams["pred"].tolist() == out["pred"][[0, 57, 99]].tolist()
    assert cams["label"].tolist() == out["label"][[0, 57, 99]].tolist()


def test_partial_fine_tuning_trains_the_stages_after_the_cut_on_cached_views(tmp_path, capsys):
    from rswb.engine.launch import train_task
    from rswb.infer import load_codes

    opts = {"backbone": "small_cnn", "pretrained": False, "image_size": 32, "views": 2, "per_class": 10, "epochs": 2,
            "bits": 8, "train_from": "stage3", "progress": False, "cache_dir": str(tmp_path / "cache")}
    res = train_task("hash", opts, run_name="p", runs_root=tmp_path)
    out = capsys.readouterr().out
    assert "cached stage3 activations: 100 images x 2 views" in out  # the cache and its size are reported
    model = res.task.model
    trained = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("stages.2", "stages.3")) for n in trained)
    codes = load_codes(tmp_path / "p")  # the query split is rebuilt from the cache with the trained stages
    assert codes["metrics"] == json.loads((tmp_path / "p" / "metrics.json").read_text())["test"]
    from rswb.metrics.hashing import hash_metrics

    c, labels = codes["code"].astype("float32"), codes["label"]
    got = hash_metrics(c, c, labels, labels, topk=(20,), query_db_index=np.arange(len(labels)))
    assert got["mAP@20"] == pytest.approx(codes["metrics"]["mAP@20"], abs=1e-6)
    with pytest.raises(ValueError, match=r"--train-from must be a piece of small_cnn \(stage1, stage2, stage3, stage4"):
        train_task("hash", {**opts, "train_from": "stage9"}, run_name="bad", runs_root=tmp_path)


def test_a_run_made_before_val_rule_is_rebuilt_with_its_random_validation(tmp_path, monkeypatch):
    from rswb.engine import experiments
    from rswb.engine.runs import RunFolder
    from rswb.io import atomic_write_text

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    args = ["train", "hash", "--backbone", "small_cnn", "--pretrained", "false", "--image-size", "16", "--bits", "8",
            "--epochs", "1", "--views", "1", "--per-class", "20", "--runs-root", str(tmp_path), "--name", "old",
            "--no-progress"]
    assert main(args) == 0
    run = RunFolder(tmp_path / "old")
    saved = run.read_config()
    assert saved["task_config"]["val_rule"] == "block"  # every run records its rule
    options = {"backbone": "small_cnn", "bits": 8, "per_class": 20}
    assert experiments.finished_with(run.path, "hash", options)
    del saved["task_config"]["val_rule"]  # what a run written before the option looks like
    atomic_write_text(yaml.safe_dump(saved), run.config)
    loaded = experiments.load_run(run.path, splits=("val",))
    assert loaded.task_config.val_rule == "random"
    block = [c * 20 + i for c in range(10) for i in range(2)]
    assert loaded.val.index.tolist() != block
    # A notebook asking for today's defaults does not reuse it: it was not trained with the block validation.
    assert not experiments.finished_with(run.path, "hash", options)


def test_test_time_views_average_the_codes_of_every_cached_view(tmp_path):
    from rswb.data.features import CachedViews
    from rswb.engine.launch import load_run, train_task
    from rswb.utils import eval_mode

    opts = {"backbone": "small_cnn", "pretrained": False, "image_size": 32, "views": 2, "per_class": 10, "epochs": 1,
            "bits": 8, "train_from": "stage3", "progress": False, "cache_dir": str(tmp_path / "cache")}
    res = train_task("hash", {**opts, "tta_views": 2}, run_name="t", runs_root=tmp_path)
    model = res.task.model
    loaded = load_run(tmp_path / "t", splits=("val", "test"))
    test = loaded.test
    assert isinstance(test, CachedViews) and test[0]["cut"].dim() == 4 and test[0]["cut"].shape[0] == 2
    assert loaded.val[0]["cut"].shape == test[0]["cut"].shape  # the epoch is selected as the test is scored
    batch = {"cut": torch.stack([test[i]["cut"] for i in range(3)]), "taps": {}}
    with eval_mode(model):
        both = model(batch)
        one = [model({"cut": batch["cut"][:, v], "taps": {}}) for v in range(2)]
    for key in ("code", "logits"):  # the mean over the views, not view 0
        assert torch.allclose(both[key], (one[0][key] + one[1][key]) / 2, atol=1e-6)
        assert not torch.allclose(both[key], one[0][key], atol=1e-6)
    for bad, match in (({"tta_views": 3}, "more than --views 2"),
                       ({"tta_views": 2, "train_from": None}, "needs --train-from")):
        with pytest.raises(ValueError, match=match):
            train_task("hash", {**opts, **bad}, run_name="bad", runs_root=tmp_path)


def test_crop_views_mixup_and_teacher_targets_on_the_same_views(tmp_path, capsys):
    from rswb.data.features import CachedViews
    from rswb.engine.launch import load_run, train_task
    from rswb.utils import eval_mode

    opts = {"backbone": "small_cnn", "pretrained": False, "image_size": 32, "views": 2, "per_class": 10, "epochs": 2,
            "bits": 8, "train_from": "stage3", "progress": False, "cache_dir": str(tmp_path / "cache")}
    train_task("hash", opts, run_name="teacher", runs_root=tmp_path)
    student = {**opts, "crop_views": 2, "mixup": 0.4, "teachers": [str(tmp_path / "teacher")],
               "distill_temperature": 2.0}
    res = train_task("hash", student, run_name="student", runs_root=tmp_path)
    out = capsys.readouterr().out
    assert "100 images as crop 0" in out and "100 images as crop 1" in out
    history = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["train_distill_loss"] > 0 for h in history if "train_distill_loss" in h)
    assert any("train_distill_loss" in h for h in history)
    assert res.task.mixup == 0.4

    loaded = load_run(tmp_path / "student", splits=("train",))
    train = loaded.train
    assert isinstance(train, CachedViews) and train.cut.shape[1] == 4  # 2 dihedral views + 2 crops
    assert not torch.equal(train.cut[:, 2], train.cut[:, 3]) and not torch.equal(train.cut[:, 0], train.cut[:, 2])
    # Each target is the teacher's softened score on the very view the item carries (the same trunk: seed 0).
    teacher = load_run(tmp_path / "teacher", splits=()).task.model
    soft = train.targets["soft_target"]
    assert torch.allclose(soft.sum(-1), torch.ones(soft.shape[:2]), atol=1e-5)
    with eval_mode(teacher):
        for v in range(4):
            logits = teacher({"cut": train.cut[:5, v].float(), "taps": {}})["logits"]
            assert torch.allclose(soft[:5, v], torch.softmax(logits / 2.0, 1), atol=1e-5)
    item = train[0]
    assert item["soft_target"].shape == (10,)

    # Reading the teacher back (which seeds with its seed) leaves the student's random state alone: with the term
    # weighted 0 the student is the teacher's run again, to the bit.
    train_task("hash", {**opts, "teachers": [str(tmp_path / "teacher")], "distill_weight": 0.0}, run_name="zero",
               runs_root=tmp_path)
    final = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("teacher", "zero")}
    assert final["zero"]["test"] == final["teacher"]["test"] and final["zero"]["val"] == final["teacher"]["val"]

    for bad, match in (({"crop_views": 1, "train_from": None}, "--crop-views needs --train-from"),
                       ({"distill_weight": 0.5}, "need --teachers"),
                       ({"teachers": [str(tmp_path / "nothing")]}, "is not a run folder"),
                       ({"teachers": [str(tmp_path / "teacher")], "per_class": 8}, "another split")):
        capsys.readouterr()
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            train_task("hash", {**opts, **bad}, run_name="bad", runs_root=tmp_path)
        assert "cached" not in capsys.readouterr().out  # refused before any activation is computed or cached


def test_mixup_mixes_inputs_and_every_loss_term_alike(tmp_path):
    from rswb.tasks.hashing.task import mix_inputs

    bundle = hash_task(HashConfig(backbone="small_cnn", pretrained=False, image_size=16, bits=8, per_class=4,
                                  views=1, train_from="stage3", cache_dir=str(tmp_path)))
    task = bundle.task
    batch = torch.utils.data.default_collate([bundle.train[i] for i in range(8)])
    perm = torch.tensor([3, 2, 1, 0, 7, 6, 5, 4])
    same = mix_inputs(batch, 1.0, perm)
    assert torch.equal(same["cut"], batch["cut"]) and torch.equal(same["label"], batch["label"])
    half = mix_inputs(batch, 0.25, perm)
    assert torch.allclose(half["cut"], 0.25 * batch["cut"] + 0.75 * batch["cut"][perm])
    task.mixup = 0.5
    torch.manual_seed(7)
    got = task.losses(batch)
    torch.manual_seed(7)
    lam = float(torch.distributions.Beta(0.5, 0.5).sample())
    p = torch.randperm(8)
    out = task.model(mix_inputs(batch, lam, p))
    a, b = task.loss(**out, **batch), task.loss(**out, **{**batch, "label": batch["label"][p]})
    for k in ("proxy_loss", "cls_loss", "quant_loss"):
        assert torch.allclose(got[k], lam * a[k] + (1 - lam) * b[k], atol=1e-6)
    task.mixup = 0.0
    assert torch.allclose(task.losses(batch)["cls_loss"], task.loss(**task.model(batch), **batch)["cls_loss"])
