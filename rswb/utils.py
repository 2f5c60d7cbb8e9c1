"""Small helpers every floor of rswb may use (this module imports nothing of rswb)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "progress_bars", "show_progress"]

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
