"""Small helpers every floor of rswb may use (this module imports nothing of rswb)."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

__all__ = ["deprecated_names", "eval_mode", "progress_bars", "show_progress"]

_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("rswb_progress", default=True)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the ``with`` block, then restore the mode it had (also after an error).

    Inference helpers run during training (validation, figures): switching a model to eval and back to *train*
    unconditionally would wake up dropout in a frozen part that was deliberately kept in eval mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn rswb's progress bars off (``enabled=False``) for the ``with`` block.

    ``--progress false`` silences every bar of a run this way: the data layer's feature extraction and image checks
    and the text encoder's weight loading too, not only the training loop's.
    """
    token = _PROGRESS.set(bool(enabled) and _PROGRESS.get())
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def show_progress(requested: bool = True) -> bool:
    """Whether a bar should be drawn: the caller asked for it and no :func:`progress_bars` block turned bars off."""
    return bool(requested) and _PROGRESS.get()


def deprecated_names(module: str, renamed: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name of ``renamed`` (old -> new) with a ``FutureWarning``.

    Code written against a renamed class or function keeps working, and says what to call it now.
    """
    def __getattr__(name: str) -> Any:
        if name in renamed:
            warnings.warn(f"{module}.{name} was renamed {renamed[name]}", FutureWarning, stacklevel=2)
            return namespace[renamed[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
