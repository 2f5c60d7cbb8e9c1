"""rswb.engine.checkpoint: atomic writes, weights_only loading and the errors that name the file."""

from __future__ import annotations

import os
import pickle
import stat
from collections import OrderedDict

import pytest
import torch

from rswb import io as ckpt_mod
from rswb.io import CheckpointError, atomic_save, load_checkpoint, new_file_mode


class Custom:
    """Needs arbitrary unpickling: refused by ``weights_only=True``."""

    def __init__(self, v=1):
        self.v = v


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": OrderedDict(w=torch.randn(4, 3, generator=g), b=torch.zeros(3, dtype=torch.float64)),
        "ints": torch.arange(5, dtype=torch.int32),
        "epoch": 3,
        "lr": 1e-3,
        "name": "run-a",
        "flags": [True, False, None],
        "nested": {"history": [{"epoch": 0, "OA": 0.5}, {"epoch": 1, "OA": 0.75}], "tuple": (1, "x", 2.5)},
    }


def _assert_same(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_round_trip(tmp_path):
    state = _state()
    path = atomic_save(state, tmp_path / "deep" / "last.pt")  # parent folders are created
    assert path == tmp_path / "deep" / "last.pt"
    back = load_checkpoint(path)
    _assert_same(state, back)
    assert back["model"]["w"].device.type == "cpu"
    assert _listing(tmp_path / "deep") == ["last.pt", "last.pt.sha256"]  # with the digest that vouches for it
    assert stat.S_IMODE(path.stat().st_mode) == new_file_mode()  # not mkstemp's 0600
    # str paths work as well, and overwriting replaces the file.
    atomic_save(_state(1), str(path))
    _assert_same(load_checkpoint(str(path)), _state(1))
    assert _listing(tmp_path / "deep") == ["last.pt", "last.pt.sha256"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pt.*not found"):
        load_checkpoint(tmp_path / "nothere.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path)  # a folder


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_file(tmp_path, keep):
    path = atomic_save(_state(), tmp_path / "full.pt")
    data = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"broken\.pt.*cannot load"):
        load_checkpoint(broken)


def test_garbage_file(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_checkpoint(path)


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.ones(2), "obj": Custom(5)}, path)
    # It is a valid pickle for a full (unsafe) load ...
    assert torch.load(path, weights_only=False)["obj"].v == 5
    # ... which load_checkpoint never does.
    with pytest.raises(CheckpointError, match=r"evil\.pt.*cannot load"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"obj": Custom()}))
    with pytest.raises(CheckpointError, match=r"plain\.pkl"):
        load_checkpoint(path)


def test_non_dict_is_refused(tmp_path):
    path = atomic_save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt.*expected a checkpoint dict, got list"):
        load_checkpoint(path)


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save(_state(0), target)
    old_bytes = target.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the new bytes go to the temporary file ...
        f.seek(0)
        f.truncate(len(old_bytes) // 2)
        raise OSError("No space left on device")  # ... and then the write fails midway

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_state(1), target)
    assert target.read_bytes() == old_bytes
    _assert_same(load_checkpoint(target), _state(0))
    assert _listing(tmp_path) == ["last.pt", "last.pt.sha256"]
    # The disk fills while the file itself is written: the old file, still vouched for, and no temporary file.
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    real_write = ckpt_mod.atomic_write

    def full_disk(path, write, sync_dir=False):
        def half(f):
            f.write(b"half")
            raise OSError("No space left on device")
        return real_write(path, half, sync_dir)

    monkeypatch.setattr(ckpt_mod, "atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_state(1), target)
    _assert_same(load_checkpoint(target), _state(0))
    assert _listing(tmp_path) == ["last.pt", "last.pt.sha256"]


def test_interrupt_during_write_cleans_up(tmp_path, monkeypatch):
    """A KeyboardInterrupt (not an Exception) must still remove the temporary file."""
    target = tmp_path / "best.pt"

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": 1}, target)
    assert _listing(tmp_path) == []


def test_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"v": torch.tensor(1)}, target)

    real_replace = os.replace

    def broken_replace(src, dst):
        if str(dst).endswith(".pt"):  # the digest file is renamed first; the checkpoint's own rename fails
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_save({"v": torch.tensor(2)}, target)
    assert load_checkpoint(target)["v"].item() == 1  # the digest file lists the old digest too: still accepted
    assert _listing(tmp_path) == ["last.pt", "last.pt.sha256"]


def test_target_holds_old_bytes_until_rename(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"v": torch.tensor(1)}, target)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        if str(dst).endswith(".pt"):  # the checkpoint's rename (the digest file is renamed before and after it)
            seen.append((load_checkpoint(dst)["v"].item(), torch.load(src, weights_only=True)["v"].item()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_save({"v": torch.tensor(2)}, target)
    assert seen == [(1, 2)]  # old complete target, new complete temp file
    assert load_checkpoint(target)["v"].item() == 2


def test_map_location(tmp_path):
    path = atomic_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert load_checkpoint(path, map_location=torch.device("cpu"))["w"].device.type == "cpu"
    assert load_checkpoint(path, map_location=None)["w"].device.type == "cpu"


def test_bytes_changed_after_writing_are_refused_naming_the_file(tmp_path):
    """256 flipped bytes inside a checkpoint whose zip stays valid loaded silently before (issue 30)."""
    import hashlib

    path = atomic_save({"w": torch.arange(10000, dtype=torch.float32)}, tmp_path / "best.pt")
    data = bytearray(path.read_bytes())
    start = data.find(bytes(torch.arange(10000, dtype=torch.float32).numpy().tobytes()[:64]))
    assert start > 0
    for i in range(start + 400, start + 656):  # inside the tensor's bytes: torch.load still succeeds
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"].shape == (10000,)  # the damage is silent to torch itself
    with pytest.raises(CheckpointError, match=r"best\.pt: its bytes do not match the SHA-256"):
        load_checkpoint(path)
    # A kill between writing the digest and the checkpoint leaves the old checkpoint, which the digest still accepts.
    old = atomic_save({"w": torch.ones(3)}, tmp_path / "c.pt")
    side = tmp_path / "c.pt.sha256"
    new_digest = hashlib.sha256(b"the next checkpoint").hexdigest()
    side.write_text(f"{new_digest}\n{side.read_text().split()[0]}\n")  # as atomic_save writes it first
    assert torch.equal(load_checkpoint(old)["w"], torch.ones(3))


def test_kills_between_the_steps_never_make_a_good_file_look_damaged(tmp_path, monkeypatch):
    """A save killed after its digest file but before its rename, then another one killed the same way: the file on
    disk (the first) must still be accepted (found by the SIGKILL test: the second save kept only the first line)."""
    import rswb.io as io_mod

    target = atomic_save({"v": torch.tensor(0)}, tmp_path / "c.pt")
    real = io_mod.atomic_write

    def killed(path, write, sync_dir=False):
        raise KeyboardInterrupt  # the kill lands after the digest file was written, before the checkpoint's rename

    monkeypatch.setattr(io_mod, "atomic_write", killed)
    for v in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            atomic_save({"v": torch.tensor(v)}, target)
        assert load_checkpoint(target)["v"].item() == 0
    monkeypatch.setattr(io_mod, "atomic_write", real)
    atomic_save({"v": torch.tensor(3)}, target)
    assert load_checkpoint(target)["v"].item() == 3 and len((tmp_path / "c.pt.sha256").read_text().split()) == 1
