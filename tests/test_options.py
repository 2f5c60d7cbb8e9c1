"""Options are checked before any data is touched: ranges and choices, colliding names, renamed spellings, options
that would have no effect; every check names the flag."""

from __future__ import annotations

import dataclasses
import time

import pytest

import rswb.tasks  # noqa: F401  (registers the built-in tasks)
from rswb.cli import main
from rswb.config import TrainConfig, allowed, option, validate
from rswb.engine.launch import renamed, train_task
from rswb.registry import register_task
from rswb.tasks.hashing import HashConfig
from rswb.tasks.retrieval import RetrievalConfig


@pytest.mark.parametrize(("options", "message"), [
    ({"epochs": -3}, "--epochs must be >= 1, got -3"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"lr": -1e-3}, "--lr must be >= 0"),
    ({"optimizer": "lbfgs"}, "--optimizer must be one of adamw, adam, sgd"),
    ({"schedule": "poly"}, "--schedule must be one of cosine, linear, step, constant"),
    ({"step_gamma": 0.0}, "--step-gamma must be > 0 and <= 1"),
    ({"precision": "fp8"}, "--precision must be one of"),
    ({"bits": 0}, "--bits must be >= 1 and <= 4096"),
    ({"views": 9}, "--views must be >= 1 and <= 8"),
    ({"layout": "coco"}, "--layout must be one of auto, ucmerced, aid"),
    ({"val_share": 1.0}, "--val-share must be > 0 and < 1"),
    ({"topk": 0}, "--topk must be >= 1"),
])
def test_bad_hash_options_fail_before_any_data_is_read(tmp_path, options, message):
    # A data path that does not exist: reaching the data would be a different error.
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train_task("hash", {"data": str(tmp_path / "nowhere"), **options}, runs_root=tmp_path)
    assert time.perf_counter() - t0 < 5  # no feature extraction, no data


@pytest.mark.parametrize(("options", "message"), [
    ({"shots": 0}, "--shots must be > 0"),
    ({"val_shots": -1}, "--val-shots must be >= 0"),
    ({"normalize": "zscore"}, "--normalize must be one of minmax, percentile"),
    ({"ms_patch": 0}, "--ms-patch must be >= 1"),
    ({"jitter": 1.0}, "--jitter must be >= 0 and < 1"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"dropout": 1.0}, "--dropout must be >= 0 and < 1"),
    ({"ratio": 1}, "--ratio must be >= 2"),
    ({"mtf_gain": 0.0}, "--mtf-gain must be > 0 and < 1"),
    ({"align_schedule": "shallow"}, "--align-schedule must be one of equal, deep, progressive"),
    ({"version": "pha_v9"}, "--version must be one of ms_only"),
    ({"widths": "16,32"}, "--widths must be three comma-separated positive integers"),
    ({"widths": "16,x,64"}, "--widths must be three"),
    ({"version": "pha_v1", "stage_fusion": True}, "--stage-fusion needs an aligned version"),
])
def test_bad_pha_options_fail_before_any_data_is_read(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        train_task("pha", {"data": str(tmp_path / "nowhere"), **options}, runs_root=tmp_path)
    assert not (tmp_path / "nowhere").exists() and not list(tmp_path.iterdir())  # no run folder was started


def test_retrieval_options_and_the_cli_exit_code(tmp_path, capsys):
    for opts, message in (({"method": "foo"}, "--method must be one of vsepp, clip, fisvl, kamcl"),
                          ({"ties": "random"}, "--ties must be one of"),
                          ({"ema_momentum": 1.0}, "--ema-momentum must be >= 0 and < 1"),
                          ({"temperature": 0.0}, "--temperature must be > 0")):
        with pytest.raises(ValueError, match=message):
            train_task("retrieval", {"data": str(tmp_path / "nowhere"), **opts}, runs_root=tmp_path)
    assert main(["train", "hash", "--epochs", "-3", "--data", str(tmp_path / "nowhere")]) == 2
    assert "--epochs must be >= 1, got -3" in capsys.readouterr().err


def test_options_that_would_do_nothing_are_refused(tmp_path):
    with pytest.raises(ValueError, match="KAMCL's EMA momentum is --ema-momentum"):
        train_task("retrieval", {"method": "kamcl", "momentum": 0.99}, runs_root=tmp_path)
    with pytest.raises(ValueError, match="--val-fraction has no effect here.*--val-share"):
        train_task("hash", {"val_fraction": 0.2}, runs_root=tmp_path)
    with pytest.raises(ValueError, match="--val-fraction has no effect here"):
        train_task("pha", {"val_fraction": 0.2}, runs_root=tmp_path)


def test_renamed_options_read_old_runs_and_name_the_new_spelling():
    assert renamed(RetrievalConfig, {"momentum": 0.99, "val_fraction": 0.2, "method": "kamcl"}) == {
        "ema_momentum": 0.99, "val_share": 0.2, "method": "kamcl"}
    assert renamed(HashConfig, {"val_fraction": 0.3}) == {"val_share": 0.3}


@dataclasses.dataclass
class Clash:
    """A task config that reuses a training option's name."""

    epochs: int = option(3, "an option the engine already has")


def clash_task(cfg: Clash):
    raise AssertionError("never built")


def test_a_task_option_named_like_a_training_option_is_refused_when_the_task_is_used():
    """The registry imports nothing from rswb, so the check runs when the task is fetched to be used."""
    from rswb.engine.launch import task_builder

    register_task("clash_task_for_test")(clash_task)
    with pytest.raises(TypeError, match="epochs.*name of a training option"):
        task_builder("clash_task_for_test")


def test_every_builtin_task_lists_each_option_once(capsys):
    for task in ("hash", "retrieval", "pha"):
        main(["train", task, "--help"])
        out = capsys.readouterr().out
        flags = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
        assert len(flags) == len(set(flags)) and flags, task
        assert "--val-fraction" not in flags, task  # refused for tasks with their own validation: not offered


def test_allowed_and_validate_on_a_plain_config():
    @dataclasses.dataclass
    class C:
        n: int = option(1, "a count", low=1)
        p: float = option(0.5, "a share", low=0, high=1, high_open=True)
        k: str = option("a", "a choice", choices=("a", "b"))
        free: float = option(0.0, "anything")

        def check(self):
            if self.n > 10 and self.k == "b":
                raise ValueError("--n above 10 needs --k a")

    f = {x.name: x for x in dataclasses.fields(C)}
    assert allowed(f["n"]) == ">= 1" and allowed(f["p"]) == ">= 0 and < 1" and allowed(f["k"]) == "one of a, b"
    assert allowed(f["free"]) == ""
    validate(C(n=5, p=0.0, k="b", free=-7.0))
    for bad, msg in ((C(n=0), "--n must be >= 1, got 0"), (C(p=1.0), "--p must be >= 0 and < 1, got 1.0"),
                     (C(k="c"), "--k must be one of a, b, got 'c'"), (C(n=11, k="b"), "--n above 10")):
        with pytest.raises(ValueError, match=msg):
            validate(bad, source="test")
    validate(TrainConfig())  # the defaults are valid


def test_a_deprecated_option_still_works_with_a_warning():
    from rswb.engine.launch import renamed, split_options

    with pytest.warns(FutureWarning, match="--cue-weight is deprecated; use --cue-repeats"):
        _, task = split_options({"cue_weight": 3, "bits": 8}, HashConfig)
    assert task == {"cue_repeats": 3, "bits": 8}
    with pytest.raises(ValueError, match="old name of --cue-repeats"):
        split_options({"cue_weight": 3, "cue_repeats": 2}, HashConfig)
    assert renamed(HashConfig, {"cue_weight": 5}) == {"cue_repeats": 5}  # run configs saved before the rename
