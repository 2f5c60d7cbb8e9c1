"""fit(): run folder, model selection, resume, NaN errors, early stopping, schedules, AMP."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rswb.engine import (
    ClassificationTask,
    NonFiniteLossError,
    RunExistsError,
    TrainConfig,
    fit,
    load_checkpoint,
    seed_everything,
)
from tests.engine.fixtures import MLP, Blobs

BASE = {"epochs": 3, "batch_size": 32, "lr": 0.01, "progress": False, "deterministic": True}


def make_task(**kw) -> ClassificationTask:
    seed_everything(0)
    return ClassificationTask(MLP(**kw), num_classes=4, info={"method": "mlp", "version": "v0", "data": "blobs"})


def run(tmp_path, name="r", task=None, train=None, **cfg):
    task = task or make_task()
    return fit(task, train or Blobs(240), test=Blobs(120, seed=1), config={**BASE, **cfg}, run_dir=tmp_path / name)


def state(task):
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_run_folder_contents(tmp_path):
    res = run(tmp_path)
    d = res.run_dir
    assert {p.name for p in d.iterdir()} == {"config.yaml", "metrics.jsonl", "metrics.json", "checkpoint.pt", "best.pt",
                                             "checkpoint.pt.sha256", "best.pt.sha256",  # their digests
                                             ".lock"}  # the writer's lock file (free once the run ended)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["task"] == {"method": "mlp", "version": "v0", "data": "blobs"}
    assert cfg["splits"] == {"train": 216, "val": 24, "test": 120}  # 10 % carved from train, stratified
    lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    expected = {"train_loss", "train_cls_loss", "train_acc", "lr", "val_OA", "val_AA", "val_kappa", "time_s"}
    assert expected <= set(lines[0])
    final = json.loads((d / "metrics.json").read_text())
    assert final["best_epoch"] == res.best_epoch and final["test"] == res.test
    best = max(lines, key=lambda r: r["val_OA"])  # first epoch with the highest val OA
    assert res.best_epoch == best["epoch"] and res.val["OA"] == best["val_OA"]
    assert res.test["OA"] > 0.7  # the blobs are learnable: the loop really trains
    ckpt = load_checkpoint(d / "checkpoint.pt")
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3
    assert load_checkpoint(d / "best.pt")["epoch"] == res.best_epoch


def test_selected_weights_are_the_best_epochs(tmp_path):
    res = run(tmp_path, epochs=4)
    best = load_checkpoint(res.run_dir / "best.pt")["task"]
    for k, v in res.task.state_dict().items():
        assert torch.equal(v.cpu(), best[k])


def test_test_split_is_evaluated_once_after_training(tmp_path, monkeypatch):
    calls = []
    task = make_task()
    original = task.evaluate

    def spy(dataset, ctx):
        calls.append((ctx.desc, len(dataset)))
        return original(dataset, ctx)

    monkeypatch.setattr(task, "evaluate", spy)
    run(tmp_path, task=task)
    assert calls == [("validate", 24)] * 3 + [("test", 120)]


def test_same_seed_same_result_and_deterministic(tmp_path):
    a, b = run(tmp_path, "a"), run(tmp_path, "b")
    assert a.test == b.test
    for (k, v), w in zip(a.task.state_dict().items(), b.task.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = run(tmp_path, "full", epochs=5)

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(make_task(), Blobs(240), test=Blobs(120, seed=1), config={**BASE, "epochs": 5},
            run_dir=tmp_path / "part", callbacks=[stop_after_two])
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 2
    # A fresh task object with different initial weights: everything must come from the checkpoint.
    seed_everything(99)
    task = ClassificationTask(MLP(), num_classes=4, info={"method": "mlp", "version": "v0", "data": "blobs"})
    resumed = fit(task, Blobs(240), test=Blobs(120, seed=1), config={**BASE, "epochs": 5},
                  run_dir=tmp_path / "part", resume=True)
    assert resumed.test == full.test and resumed.best_epoch == full.best_epoch
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for (k, v), w in zip(full.task.state_dict().items(), resumed.task.state_dict().values()):
        assert torch.equal(v, w), k
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5]


def test_resume_refuses_a_changed_config(tmp_path):
    run(tmp_path, epochs=2)
    with pytest.raises(ValueError, match=r"config.yaml.*lr: 0.01 -> 0.1"):
        fit(make_task(), Blobs(240), config={**BASE, "epochs": 2, "lr": 0.1}, run_dir=tmp_path / "r", resume=True)


def test_existing_run_is_not_overwritten_silently(tmp_path):
    run(tmp_path, epochs=1)
    with pytest.raises(RunExistsError, match="resume"):
        run(tmp_path, epochs=1)
    res = fit(make_task(), Blobs(240), config={**BASE, "epochs": 1}, run_dir=tmp_path / "r", overwrite=True)
    assert len(res.history) == 1


def test_nan_loss_names_epoch_step_and_term(tmp_path):
    task = make_task(nan_at=9)  # the 9th training forward: epoch 2 (7 steps per epoch), step 2
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2/7 \(global step 9\).*cls_loss=nan"):
        run(tmp_path, task=task)
    # The checkpoint of epoch 1 is intact and the message pointed at it.
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1


def test_early_stopping(tmp_path):
    # lr 0 never improves after the first evaluation, so patience 2 stops after epoch 3.
    res = run(tmp_path, epochs=10, lr=0.0, early_stop_patience=2)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1


def test_warmup_cosine_lr_reaches_min(tmp_path):
    res = run(tmp_path, epochs=4, warmup_epochs=1, min_lr_ratio=0.1)
    lrs = [r["lr"] for r in res.history]
    assert lrs[0] == pytest.approx(0.01)  # end of warm-up: the full lr
    assert lrs[-1] == pytest.approx(0.001)  # end of cosine: min_lr_ratio x lr
    assert lrs[1] > lrs[2] > lrs[3]


def test_param_group_lr_multipliers(tmp_path):
    task = make_task()
    head = list(task.model.net[2].parameters())
    task.param_groups = lambda: [{"params": list(task.model.net[0].parameters())},
                                 {"params": head, "lr_mult": 100.0}]
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return orig(self, *a, **kw)

    torch.optim.AdamW.step = spy
    try:
        run(tmp_path, task=task, epochs=1, schedule="constant")
    finally:
        torch.optim.AdamW.step = orig
    assert seen and all(s == pytest.approx([0.01, 1.0]) for s in seen)


def test_grad_clip_bounds_the_update(tmp_path):
    task = make_task()
    before = state(task)
    fit(task, Blobs(32), config={**BASE, "epochs": 1, "optimizer": "sgd", "momentum": 0.0, "lr": 1.0,
                                 "weight_decay": 0.0, "grad_clip": 1e-3, "val_fraction": 0.0, "schedule": "constant"},
        run_dir=tmp_path / "c")
    delta = torch.cat([(task.state_dict()[k] - before[k]).flatten() for k in before])
    assert delta.norm() <= 1e-3 + 1e-7  # one SGD step of lr 1 moves at most the clipped norm


def test_no_validation_selects_last_epoch(tmp_path):
    res = run(tmp_path, val_fraction=0.0)
    assert res.best_epoch == 3 and res.val == {}
    assert load_checkpoint(res.run_dir / "best.pt")["epoch"] == 3


def test_explicit_val_split_and_monitor(tmp_path):
    res = fit(make_task(), Blobs(240), val=Blobs(60, seed=5), config={**BASE, "monitor": "kappa"},
              run_dir=tmp_path / "m")
    cfg = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert cfg["splits"]["val"] == 60 and cfg["monitor"] == {"metric": "kappa", "mode": "max"}
    with pytest.raises(KeyError, match="monitor metric 'nope'"):
        fit(make_task(), Blobs(240), config={**BASE, "monitor": "nope"}, run_dir=tmp_path / "n")


def test_bf16_autocast_on_cpu_trains(tmp_path):
    res = run(tmp_path, precision="bf16", deterministic=False)
    assert res.test["OA"] > 0.5
    assert json.loads((res.run_dir / "metrics.json").read_text())["precision"] == "bf16"


def test_training_split_smaller_than_a_batch(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(make_task(), Blobs(8), config={**BASE, "batch_size": 32, "drop_last": True, "val_fraction": 0.0},
            run_dir=tmp_path / "s")


def test_config_mapping_is_validated(tmp_path):
    with pytest.raises(ValueError, match="unknown option.*epoch_count"):
        fit(make_task(), Blobs(64), config={"epoch_count": 3}, run_dir=tmp_path / "v")
    assert TrainConfig().precision == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_run(tmp_path):
    res = run(tmp_path, device="cuda", deterministic=False)
    final = json.loads((res.run_dir / "metrics.json").read_text())
    assert final["device"].startswith("cuda") and final["precision"] in ("bf16", "fp16")
    assert res.test["OA"] > 0.7
