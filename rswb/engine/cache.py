"""A disk cache for tensors computed by frozen encoders (backbone features, text token states).

The frozen-encoder (CPU) profiles of the hash and retrieval tasks compute an encoder's outputs once per input and
train only the layers on top. Entries live under ``$RSWB_CACHE_DIR`` (default ``~/.cache/rswb``); the key digests
everything the outputs depend on (the encoder's actual weights, the input files' paths, sizes and modification
times, the settings), so a changed file, weight or setting is a new entry and never a stale hit. Entries are written
atomically and read with ``weights_only=True``; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from rswb.engine.checkpoint import atomic_save, load_checkpoint

__all__ = ["cache_root", "cached", "digest"]


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: ``override``, else ``$RSWB_CACHE_DIR``, else ``~/.cache/rswb``."""
    return Path(override or os.environ.get("RSWB_CACHE_DIR") or Path.home() / ".cache" / "rswb")


def digest(settings: Any = (), modules: Iterable[torch.nn.Module] = (), files: Iterable[str | Path] = (),
           texts: Iterable[str] = ()) -> str:
    """A hex key over ``repr(settings)``, the modules' state dicts, the files' identity and the texts.

    A file's identity is its resolved path, size and modification time (reading every image's bytes would cost as
    much as decoding them).
    """
    h = hashlib.sha256(repr(settings).encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def cached(path: str | Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The dict stored at ``path``, or ``compute()``'s result, stored there atomically first."""
    path = Path(path)
    if path.exists():
        try:
            return load_checkpoint(path)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
            pass
    value = compute()
    atomic_save(value, path)
    return value
