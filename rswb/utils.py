"""Small helpers every floor of rswb may use (this module imports nothing of rswb)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


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
