"""Checkpoints written atomically (temp file + fsync + rename) and loaded with ``weights_only=True``.

A process killed at any moment leaves either the previous complete checkpoint or the new complete one, never a
truncated file: the bytes go to a temporary file in the same folder, which is renamed over the target only after
it has been flushed to disk. Loading never unpickles arbitrary objects, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rswb.io import atomic_write

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, folder entry synced too; returns the path."""
    return atomic_write(path, lambda f: torch.save(obj, f), sync_dir=True)


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
