"""Checkpoints written atomically (temp file + fsync + rename) and loaded with ``weights_only=True``.

A process killed at any moment leaves either the previous complete checkpoint or the new complete one, never a
truncated file: the bytes go to a temporary file in the same folder, which is renamed over the target only after
it has been flushed to disk. Loading never unpickles arbitrary objects, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rswb.config import new_file_mode

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 would otherwise end up on the checkpoint (POSIX only)
            os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; syncing the folder makes it survive a power cut too.
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


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(..., weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated or holds something other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(obj).__name__}")
    return obj
