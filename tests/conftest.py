"""Shared fixtures: the real-data root (``$RSWB_SHARED_DATA`` or ``<repo>/../shared/data``) and a headless backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from rswb.notebooks import shared_data_root  # the one rule: $RSWB_SHARED_DATA, else <repo>/../shared/data

matplotlib.use("Agg")  # headless: plot() tests must never open a window


def require_shared(*parts: str) -> Path:
    """The path ``parts`` under the real-data root, or skip the test with a reason saying where it looked."""
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path}: set RSWB_SHARED_DATA to the folder holding {parts[0]}/")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("UCMerced_LandUse", "Images")`` -> that real-data path, or a skip with a visible reason."""
    return require_shared


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test leaves open."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread (restored afterwards).

    Tiny convolutions run about 100x slower with two threads on a contended 2-core machine; modules of tiny-model
    tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter):
    """The fault battery's summary line: how many fault cases ran and how many were handled as promised."""
    outcome = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "keywords", {}).get("fault") and getattr(rep, "when", None) in ("setup", "call"):
                if rep.failed or rep.skipped or rep.when == "call":  # setup counts only when it ends the case
                    outcome[rep.nodeid] = "handled" if rep.passed else ("skipped" if rep.skipped else "failed")
    if outcome:
        handled = sum(v == "handled" for v in outcome.values())
        skipped = sum(v == "skipped" for v in outcome.values())
        line = f"fault battery: {len(outcome) - skipped} faults, {handled} handled"
        terminalreporter.write_line(line + (f" ({skipped} skipped here)" if skipped else ""))
