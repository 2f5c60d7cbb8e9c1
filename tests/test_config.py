"""rswb.config: TrainConfig defaults, type coercion, CLI overrides and (atomic) YAML files."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from rswb import io as io_mod
from rswb.config import (
    TrainConfig,
    apply_overrides,
    field_help,
    from_dict,
    option,
    parse_cli_overrides,
    to_dict,
)
from rswb.io import atomic_write_text, load_yaml, new_file_mode, save_yaml


@dataclasses.dataclass
class Toy:
    """Every kind of field _coerce handles."""

    n: int = option(1, "an int")
    x: float = option(0.5, "a float")
    flag: bool = option(False, "a bool")
    name: str = option("a", "a str")
    maybe_int: int | None = option(None, "an optional int")
    maybe_str: str | None = option("s", "an optional str")
    ints: list[int] = option([1, 2], "a list of ints")
    floats: tuple[float, ...] = option((1.0,), "a tuple of floats")
    pair: tuple[int, str] = option((0, "z"), "a fixed pair")
    nested: list[list[int]] = option([[1], [2]], "a nested list")
    table: dict[str, int] = option({"a": 1}, "a dict")
    anything: Any = option(None, "any value")


# --------------------------------------------------------------------------- TrainConfig / option / helpers


def test_train_config_defaults():
    cfg = TrainConfig()
    expected = {
        "epochs": 10, "batch_size": 64, "eval_batch_size": None, "optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 1e-4, "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 0.0, "min_lr_ratio": 0.0,
        "step_epochs": 30, "step_gamma": 0.1, "grad_clip": None, "precision": "auto", "device": None,
        "val_fraction": 0.1, "monitor": None, "early_stop_patience": None, "eval_every": 1, "seed": 0,
        "deterministic": False, "num_workers": 0, "drop_last": False, "progress": True,
    }
    assert to_dict(cfg) == expected
    # Every field is documented, in declaration order.
    helps = field_help(TrainConfig)
    assert list(helps) == list(expected)
    assert all(isinstance(h, str) and h.strip() for h in helps.values())


def test_from_dict_empty_and_none_keep_defaults():
    assert from_dict(TrainConfig, None) == TrainConfig()
    assert from_dict(TrainConfig, {}) == TrainConfig()


def test_option_mutable_defaults_are_independent_copies():
    a, b = Toy(), Toy()
    assert a.ints == [1, 2] and a.ints is not b.ints
    a.ints.append(3)
    a.nested[0].append(99)  # nested lists must not be shared either
    a.table["b"] = 2
    assert b.ints == [1, 2] and b.nested == [[1], [2]] and b.table == {"a": 1}
    assert Toy().ints == [1, 2] and Toy().nested == [[1], [2]]  # the declared default itself is untouched
    assert field_help(Toy)["ints"] == "a list of ints"


def test_to_dict_of_mapping_and_bad_type():
    assert to_dict({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="dataclass instance or a mapping"):
        to_dict(TrainConfig)  # the class, not an instance
    with pytest.raises(TypeError):
        to_dict(3)


# --------------------------------------------------------------------------- from_dict coercion


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", "5", 5),
        ("epochs", 5.0, 5),
        ("lr", "1e-3", 1e-3),
        ("lr", "0.5", 0.5),
        ("lr", 2, 2.0),
        ("warmup_epochs", "0.25", 0.25),
        ("deterministic", "true", True),
        ("deterministic", "False", False),
        ("deterministic", "yes", True),
        ("deterministic", "off", False),
        ("deterministic", 1, True),
        ("deterministic", 0, False),
        ("grad_clip", "none", None),
        ("grad_clip", "None", None),
        ("grad_clip", "null", None),
        ("grad_clip", None, None),
        ("grad_clip", "2.5", 2.5),
        ("grad_clip", 1, 1.0),
        ("eval_batch_size", "128", 128),
        ("eval_batch_size", "none", None),
        ("early_stop_patience", 3, 3),
        ("device", "cuda:1", "cuda:1"),
        ("device", "none", None),
        ("optimizer", "sgd", "sgd"),
    ],
)
def test_from_dict_coerces_train_config(key, value, expected):
    cfg = from_dict(TrainConfig, {key: value})
    got = getattr(cfg, key)
    assert got == expected
    assert type(got) is type(expected)
    # The other fields keep their defaults.
    rest = {k: v for k, v in to_dict(cfg).items() if k != key}
    assert rest == {k: v for k, v in to_dict(TrainConfig()).items() if k != key}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ints", "1, 2,3", [1, 2, 3]),
        ("ints", ["4", 5], [4, 5]),
        ("ints", (6,), [6]),
        ("floats", [1, "2.5"], (1.0, 2.5)),
        ("floats", "1e-3,2", (1e-3, 2.0)),
        ("pair", ["7", 8], (7, "8")),
        ("pair", "3,b", (3, "b")),
        ("maybe_int", "12", 12),
        ("maybe_int", "NONE", None),
        ("maybe_str", "x", "x"),
        ("maybe_str", "none", None),
        ("name", 3, "3"),
        ("anything", {"k": [1]}, {"k": [1]}),
    ],
)
def test_from_dict_coerces_containers_and_optionals(key, value, expected):
    got = getattr(from_dict(Toy, {key: value}), key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "ten"),
        ("epochs", 2.5),
        ("epochs", True),
        ("epochs", None),
        ("epochs", [1]),
        ("lr", "fast"),
        ("lr", True),
        ("lr", None),
        ("deterministic", "maybe"),
        ("deterministic", 2),
        ("optimizer", None),
        ("optimizer", ["adam"]),
        ("optimizer", {"a": 1}),
        ("grad_clip", "big"),
        ("early_stop_patience", 1.5),
    ],
)
def test_from_dict_wrong_type_names_the_field(key, value):
    with pytest.raises(ValueError, match=rf"\b{key}\b") as info:
        from_dict(TrainConfig, {key: value}, source="my.yaml")
    assert "my.yaml" in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("ints", ["a"]), ("ints", 3), ("pair", [1, "b", 2]), ("pair", ["x", 1])])
def test_from_dict_wrong_container_names_the_field(key, value):
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        from_dict(Toy, {key: value})


def test_from_dict_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        from_dict(TrainConfig, {"lr": 0.1, "learning_rate": 0.1, "epoch": 3}, source="cfg.yaml")
    msg = str(info.value)
    assert "cfg.yaml" in msg and "learning_rate" in msg and "epoch," in msg  # both unknown keys, sorted
    assert "TrainConfig" in msg
    valid = msg.split("valid:", 1)[1]
    for f in dataclasses.fields(TrainConfig):
        assert f.name in valid


def test_apply_overrides_copies_and_coerces():
    base = TrainConfig(epochs=3)
    new = apply_overrides(base, {"lr": "1e-2", "grad_clip": "none", "deterministic": "true"})
    assert (new.epochs, new.lr, new.grad_clip, new.deterministic) == (3, 0.01, None, True)
    assert base.lr == 1e-3 and base.deterministic is False  # the original is unchanged
    with pytest.raises(ValueError, match="nope"):
        apply_overrides(base, {"nope": 1})


# --------------------------------------------------------------------------- command-line overrides


def test_parse_cli_overrides_forms():
    got = parse_cli_overrides(
        ["--a", "1", "--b=x", "--flag", "--no-flag2", "--some-dash", "3", "--lr", "1e-3", "--clip", "none",
         "--neg", "-2", "--t", "true", "--s=", "--xs", "1,2", "--ys", "[1]", "--kv", "a: b", "--zero", "010"]
    )
    assert got == {
        "a": 1, "b": "x", "flag": True, "flag2": False, "some_dash": 3, "lr": 1e-3, "clip": None, "neg": -2,
        "t": True, "s": None, "xs": "1,2", "ys": [1], "kv": "a: b", "zero": 10,
    }
    assert type(got["a"]) is int and type(got["lr"]) is float
    # Values after `=` may themselves contain `=` and dashes.
    assert parse_cli_overrides(["--data=a=b", "--name=--x"]) == {"data": "a=b", "name": "--x"}
    assert parse_cli_overrides([]) == {}
    # A trailing flag and a flag followed by another option are both True.
    assert parse_cli_overrides(["--x", "--y"]) == {"x": True, "y": True}


@pytest.mark.parametrize("tokens", [["lr", "1"], ["--lr", "1", "2"], ["-x"], ["--"], ["--=3"], ["--a", "1", "b"]])
def test_parse_cli_overrides_bad_tokens(tokens):
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_cli_overrides(tokens)


def test_cli_overrides_feed_from_dict():
    opts = parse_cli_overrides(["--lr", "1e-3", "--grad-clip", "none", "--no-progress", "--deterministic",
                                "--warmup-epochs=0.5", "--eval-batch-size", "32"])
    cfg = from_dict(TrainConfig, opts)
    assert (cfg.lr, cfg.grad_clip, cfg.progress, cfg.deterministic) == (1e-3, None, False, True)
    assert (cfg.warmup_epochs, cfg.eval_batch_size) == (0.5, 32)
    with pytest.raises(ValueError, match="learning_rate"):
        from_dict(TrainConfig, parse_cli_overrides(["--learning-rate", "1"]))


# --------------------------------------------------------------------------- YAML files


def test_load_yaml_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
        load_yaml(tmp_path)  # a folder is not a config file


def test_load_yaml_invalid(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: [1, 2\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*not valid YAML"):
        load_yaml(path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"bin\.yaml"):
        load_yaml(binary)


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("3\n", "int"), ("just text\n", "str")])
def test_load_yaml_non_mapping(tmp_path, text, kind):
    path = tmp_path / "seq.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"seq\.yaml.*mapping.*{kind}"):
        load_yaml(path)


def test_load_yaml_empty_and_mapping(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_yaml(empty) == {}
    ok = tmp_path / "ok.yaml"
    ok.write_text("lr: 1e-3\nepochs: 4\nname: é\n", encoding="utf-8")
    data = load_yaml(str(ok))
    assert data == {"lr": "1e-3", "epochs": 4, "name": "é"}  # YAML 1.1 keeps 1e-3 a string ...
    assert from_dict(TrainConfig, {k: data[k] for k in ("lr", "epochs")}).lr == 1e-3  # ... that from_dict converts


def test_save_yaml_round_trip(tmp_path):
    data = {
        "train": to_dict(TrainConfig(lr=0.01, grad_clip=1.0)),
        "tuple": (1, 2, (3, "x")),
        "path": Path("/data/x.tif"),
        "version": torch.__version__,
        "np_float": np.float64(0.25),
        "np_float32": np.float32(0.5),
        "np_int": np.int64(7),
        "np_bool": np.bool_(True),
        "np_str": np.str_("abc"),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.5]),
        "scalar_tensor": torch.tensor(4),
        1: "int key",
        "nested": [{"a": (Path("p"),)}],
        "none": None,
    }
    path = save_yaml(data, tmp_path / "sub" / "config.yaml")  # the folder is created
    assert path == tmp_path / "sub" / "config.yaml"
    text = path.read_text()
    assert "!!" not in text  # only plain YAML types, no python tags
    back = load_yaml(path)
    assert back == {
        "train": to_dict(TrainConfig(lr=0.01, grad_clip=1.0)),
        "tuple": [1, 2, [3, "x"]],
        "path": "/data/x.tif",
        "version": str(torch.__version__),
        "np_float": 0.25,
        "np_float32": 0.5,
        "np_int": 7,
        "np_bool": True,
        "np_str": "abc",
        "array": [0, 1, 2],
        "tensor": [1.5, 2.5],
        "scalar_tensor": 4,
        "1": "int key",
        "nested": [{"a": ["p"]}],
        "none": None,
    }
    assert type(back["version"]) is str and type(back["np_int"]) is int and type(back["np_float"]) is float
    # Key order is kept (sort_keys=False).
    assert list(back) == [str(k) for k in data]


def test_save_yaml_dataclass_round_trip(tmp_path):
    cfg = TrainConfig(lr=3e-4, epochs=2, grad_clip=0.5, device="cpu", deterministic=True)
    path = save_yaml(cfg, tmp_path / "c.yaml")
    assert from_dict(TrainConfig, load_yaml(path), source=str(path)) == cfg
    toy = Toy(floats=(1.0, 2.0), pair=(3, "q"))
    back = from_dict(Toy, load_yaml(save_yaml(toy, tmp_path / "t.yaml")))
    assert back == toy and isinstance(back.floats, tuple)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text("first\n", target)
    inode_first = target.stat().st_ino
    assert target.read_text() == "first\n"
    atomic_write_text("second ü\n", target)
    assert target.read_text(encoding="utf-8") == "second ü\n"
    assert target.stat().st_ino != inode_first  # replaced by a rename, not rewritten in place
    assert _listing(tmp_path) == ["out.txt"]
    # The mode a plain open() would give (mkstemp's 0600 must not leak through).
    assert stat.S_IMODE(target.stat().st_mode) == new_file_mode()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == new_file_mode()


def test_new_file_mode_follows_umask():
    old = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
    finally:
        os.umask(old)
    assert new_file_mode() == 0o666 & ~old


def test_atomic_write_text_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    atomic_write_text("old", target)

    def broken_replace(src, dst):
        # The temp file is complete and sits beside the target when the rename fails.
        assert Path(src).parent == tmp_path and Path(src).name.startswith(".keep.txt.")
        assert Path(src).read_text() == "new"
        raise OSError("disk gone")

    monkeypatch.setattr(io_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text("new", target)
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["keep.txt"]


def test_atomic_write_text_concurrent_reader_never_sees_partial(tmp_path, monkeypatch):
    """While the new text is being written, the target still holds the complete old text."""
    target = tmp_path / "c.txt"
    atomic_write_text("A" * 1000, target)
    seen = []
    real_fsync = os.fsync

    def spying_fsync(fd):
        seen.append(target.read_text())  # between write and rename
        real_fsync(fd)

    monkeypatch.setattr(io_mod.os, "fsync", spying_fsync)
    atomic_write_text("B" * 2000, target)
    assert seen == ["A" * 1000]
    assert target.read_text() == "B" * 2000


def test_save_yaml_output_is_safe_yaml(tmp_path):
    path = save_yaml({"a": (1,), "b": Path("x")}, tmp_path / "s.yaml")
    assert yaml.safe_load(path.read_text()) == {"a": [1], "b": "x"}
