"""The counting backends the retrieval tests run on (the compiled kernel is skipped where it does not build)."""

import numpy as np
import pytest

from rswb.metrics._native import native_status, rank_counts_kernel

_NATIVE_OK = rank_counts_kernel(np.float32) is not None
_REASON = f"no compiled kernel: {native_status()}"
#: ``"native"`` as a parameter that is skipped, with the reason, where no compiled kernel is available here.
NATIVE = pytest.param("native", marks=pytest.mark.skipif(not _NATIVE_OK, reason=_REASON))
#: ``("native",)`` where the kernel is available, else ``()``.
NATIVE_IF_BUILT = ("native",) if _NATIVE_OK else ()
