from pathlib import Path

import pytest

import rswb.data as data
from rswb.data import errors
from rswb.data.errors import (
    CaptionMismatchError,
    CorruptImageError,
    DataError,
    DataFormatError,
    DatasetNotFoundError,
    InvalidPixelError,
    LabelRangeError,
    ShapeMismatchError,
    require_exists,
)

SUBCLASSES = [DatasetNotFoundError, DataFormatError, ShapeMismatchError, LabelRangeError, InvalidPixelError,
              CaptionMismatchError, CorruptImageError]


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_every_error_derives_from_data_error(cls):
    assert issubclass(cls, DataError)
    assert issubclass(cls, Exception)


def test_not_found_is_a_file_not_found_error():
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        raise DatasetNotFoundError("x/y.tif", "missing")


@pytest.mark.parametrize("cls", [ShapeMismatchError, LabelRangeError, InvalidPixelError, CaptionMismatchError,
                                 CorruptImageError])
def test_format_errors_are_value_errors(cls):
    assert issubclass(cls, DataFormatError)
    assert issubclass(cls, ValueError)


def test_message_names_file_problem_and_expectation():
    err = ShapeMismatchError(Path("/some/where/pan.tif"), "PAN is 5x5", "PAN of 8x8")
    assert err.path == Path("/some/where/pan.tif")
    assert err.problem == "PAN is 5x5"
    assert err.expected == "PAN of 8x8"
    assert str(err) == "/some/where/pan.tif: PAN is 5x5 (expected PAN of 8x8)"


def test_message_without_path_or_expectation():
    err = DataError(None, "something is off")
    assert err.path is None
    assert str(err) == "something is off"


def test_catching_the_base_type_catches_all():
    for cls in SUBCLASSES:
        with pytest.raises(DataError):
            raise cls("f.txt", "bad")


def test_require_exists(tmp_path):
    f = tmp_path / "here.txt"
    f.write_text("x")
    assert require_exists(str(f), "file") == f
    missing = tmp_path / "not_here.npy"
    with pytest.raises(DatasetNotFoundError) as info:
        require_exists(missing, "label map")
    assert missing.name in str(info.value)
    assert "label map not found" in str(info.value)
    assert info.value.path == missing


def test_package_exports_the_error_types():
    for name in ("DataError", "DatasetNotFoundError", "DataFormatError", "ShapeMismatchError", "LabelRangeError",
                 "InvalidPixelError", "CaptionMismatchError", "CorruptImageError"):
        assert getattr(data, name) is getattr(errors, name)
