"""Files written safely: atomic writes (temp file + fsync + rename), YAML and JSON helpers.

Everything rswb writes goes through :func:`atomic_write`, so a reader, or a process killed at any moment, sees the
old complete file or the new one, never a partial one. Checkpoints and cached tensors are written by
:func:`atomic_save` (the folder entry synced too) and read by :func:`load_checkpoint` with ``weights_only=True``, so
a file from elsewhere cannot run code.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
import yaml

__all__ = [
    "CheckpointError", "DiskFullError", "NoRoomError", "atomic_save", "atomic_write", "atomic_write_json",
    "atomic_write_text", "check_room", "is_no_space", "load_checkpoint", "load_yaml", "new_file_mode", "save_yaml",
]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document raises an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def save_yaml(data: Mapping[str, Any] | Any, path: str | Path) -> Path:
    """Write ``data`` (a mapping or a dataclass) as YAML atomically: a reader never sees a half-written file."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    text = yaml.safe_dump(_plain(data), sort_keys=False)
    return atomic_write_text(text, path)


def _plain(x: Any) -> Any:
    """Tuples -> lists, paths -> strings and arrays/scalars -> Python values, so ``yaml.safe_dump`` accepts them."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (Path, str)):
        return str(x)  # also str subclasses such as torch.__version__
    if hasattr(x, "tolist") and callable(x.tolist):
        return _plain(x.tolist())  # numpy / torch scalars and arrays (``.item()`` fails on arrays)
    return x


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(data: Any, path: str | Path, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(json.dumps(data, indent=indent) + "\n", path)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], sync_dir: bool = False) -> Path:
    """Write a file atomically through a temporary file in the same folder and ``os.replace``.

    ``write(f)`` fills the temporary file, which is flushed to disk and renamed over ``path`` (atomic on POSIX), so a
    reader, or a process killed at any moment, sees the old complete file or the new one, never a partial one. The
    temporary file is removed if ``write`` fails.

    Args:
        path: the target file (its folder is created).
        write: writes the content to the binary file object it is given.
        sync_dir: also fsync the folder, so that the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask).
        if hasattr(os, "fchmod"):  # POSIX only
            os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync_dir:
            _fsync_dir(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(err):
            raise DiskFullError(path) from None  # the chained OSError names neither the file nor the disk
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; syncing the folder makes it durable too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    try:  # Linux: read it without changing it (os.umask is process-wide, so setting it races with other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file is missing, unreadable or not the bytes that were written; the message names the file.

    Also a ``ValueError``: on the command line it is one line and exit code 2, not a traceback.
    """


def file_system_of(path: str | Path) -> str:
    """``"MOUNT (DEVICE)"``: the mount point holding ``path`` and, where ``/proc/mounts`` says, its device."""
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            devices = {parts[1]: parts[0] for parts in (line.split() for line in f) if len(parts) > 1}
    except OSError:  # not Linux
        devices = {}
    return f"{p} ({devices[str(p)]})" if str(p) in devices else str(p)


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` is the operating system's "no space left" (or "quota exceeded") error."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the message names the file and its file system.

    Raised by :func:`atomic_write` in place of the bare ``ENOSPC`` error, after removing the temporary file: the
    target keeps its previous complete content. :func:`rswb.engine.fit` adds which checkpoint is intact.
    """

    def __init__(self, path: str | Path, advice: str = ""):
        self.path = Path(path)
        message = f"no space left on {file_system_of(self.path.parent)} while writing {self.path}"
        super().__init__(errno.ENOSPC, message + (f"; {advice}" if advice else ""))

    def __str__(self) -> str:
        return self.strerror


class NoRoomError(ValueError):
    """A folder that work is about to write cannot be written, or has too little space: refused before the work."""


def check_room(folder: str | Path, need_bytes: int, what: str) -> Path:
    """Check, before any work, that ``folder`` can be created and written and has ``need_bytes`` free; the folder.

    A real file is created and removed (``os.access`` does not see read-only mounts or ACLs everywhere).

    Args:
        folder: the folder (created if missing, as the work would).
        need_bytes: the space the work is expected to write (an estimate).
        what: what the folder is for, with the option that sets it, for the message.

    Raises:
        NoRoomError: the folder cannot be made or written, or its file system has less than ``need_bytes`` free.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rswb-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NoRoomError(f"{folder}: {what} cannot be written here ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise NoRoomError(f"{folder}: {what} needs about {need_bytes / 2**20:,.0f} MiB and "
                          f"{file_system_of(folder)} has {free / 2**20:,.0f} MiB free; free space or use another "
                          "folder")
    return folder


def digest_file(path: Path) -> Path:
    """The SHA-256 sidecar of a file written by :func:`atomic_save`: ``NAME.sha256``."""
    return path.with_name(path.name + ".sha256")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, folder entry synced too, with its SHA-256 beside it; the path.

    The digest file is written first listing the new digest and every one that vouches for the file now, then the
    checkpoint, then the digest file again with the new one only: a process killed at any moment leaves a checkpoint
    that one of the recorded digests vouches for, and :func:`load_checkpoint` refuses a file whose bytes changed
    afterwards.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    side = digest_file(path)
    # Every digest that vouches for the file now (two after a kill between the steps below), so that the file on
    # disk stays vouched for whichever step a kill interrupts next.
    if not path.exists():
        previous = []
    elif side.exists():
        previous = side.read_text().split()
    else:  # a file written before digests were recorded: vouch for it as it is while it is replaced
        previous = [hashlib.sha256(path.read_bytes()).hexdigest()]
    atomic_write_text("".join(f"{d}\n" for d in dict.fromkeys([digest, *previous])), side)
    atomic_write(path, lambda f: f.write(data), sync_dir=True)
    atomic_write_text(f"{digest}\n", side)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(..., weights_only=True)``, verified against its SHA-256.

    A file written by :func:`atomic_save` has its digest beside it (``NAME.sha256``); a file without one (written
    before digests were recorded) is loaded unverified.

    Raises:
        CheckpointError: the file is missing, truncated, changed since it was written (its digest does not match),
            or holds something other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    side = digest_file(path)
    if side.exists() and hashlib.sha256(data).hexdigest() not in side.read_text().split():
        raise CheckpointError(f"{path}: its bytes do not match the SHA-256 recorded when it was written "
                              f"({side.name}): the file is damaged or was changed")
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(obj).__name__}")
    return obj
