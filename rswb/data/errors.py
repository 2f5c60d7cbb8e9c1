"""Error types of :mod:`rswb.data`.

Every reader validates what it opens and raises one of these instead of letting a shape or key error surface from
deep inside numpy. A message always says three things: which file, what is wrong, and what was expected (or how to
fix it). All of them derive from :class:`DataError`, so a caller (the CLI, a notebook) can catch one type.
"""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Base class of every data error; ``path`` is the offending file or folder (or ``None``)."""

    def __init__(self, path: str | Path | None, problem: str, expected: str | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path is not None else ""
        tail = f" (expected {expected})" if expected else ""
        super().__init__(f"{where}{problem}{tail}")


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A file or folder that the reader needs does not exist."""


class DataFormatError(DataError, ValueError):
    """A file exists but its content or layout is not what the format requires."""


class ShapeMismatchError(DataFormatError):
    """Arrays that must line up do not (PAN not ratio x MS, label map not on the MS grid, ...)."""


class LabelRangeError(DataFormatError):
    """Label values outside ``0..C`` (0 = unlabelled) or not integers."""


class InvalidPixelError(DataFormatError):
    """NaN or infinite pixel values."""


class CaptionMismatchError(DataFormatError):
    """Caption and file-name counts disagree, or a caption's image cannot be found."""


class CorruptImageError(DataFormatError):
    """An image file exists but cannot be decoded."""


def require_exists(path: str | Path, what: str) -> Path:
    """Return ``path`` as a :class:`Path`, or raise :class:`DatasetNotFoundError` naming ``what`` it should be."""
    p = Path(path)
    if not p.exists():
        raise DatasetNotFoundError(p, f"{what} not found", "an existing path; check the spelling and the data root")
    return p
