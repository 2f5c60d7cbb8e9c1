"""Where the suite's pieces are: the numbered notebooks, their folder, and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NOTEBOOKS", "notebooks_dir", "shared_data_root"]

NOTEBOOKS = ("01_data_inspection", "02_pha_versions", "03_retrieval_training", "04_hash_evaluation")


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of this checkout."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def shared_data_root() -> Path:
    """The real-data folder: ``$RSWB_SHARED_DATA`` if set, else ``../shared/data`` beside this checkout."""
    env = os.environ.get("RSWB_SHARED_DATA")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data"
