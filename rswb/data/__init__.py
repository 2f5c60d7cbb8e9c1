"""Data layer: readers for the real formats (dict samples), validation errors, and embedded synthetic data."""

from rswb.data.captions import CaptionSet, ImageResolver, read_captions, read_karpathy, read_precomp
from rswb.data.errors import (
    CaptionMismatchError,
    CorruptImageError,
    DataError,
    DataFormatError,
    DatasetNotFoundError,
    InvalidPixelError,
    LabelRangeError,
    ShapeMismatchError,
)
from rswb.data.image_text import RetrievalSplit
from rswb.data.mspan import MSPANScene, load_mspan
from rswb.data.patches import PatchCache, PatchSampler, PatchStore, PixelPatches
from rswb.data.scenes import SceneFolder, load_image
from rswb.data.wald import WaldSceneDataset, wald_simulate
from rswb.utils import deprecated_names

__all__ = [
    "CaptionMismatchError", "CaptionSet", "CorruptImageError", "DataError", "DataFormatError", "DatasetNotFoundError",
    "ImageResolver", "InvalidPixelError", "LabelRangeError", "MSPANScene", "PatchCache", "PatchSampler", "PatchStore",
    "PixelPatches", "RetrievalSplit", "SceneFolder", "ShapeMismatchError", "WaldSceneDataset", "load_image",
    "load_mspan", "read_captions", "read_karpathy", "read_precomp", "wald_simulate",
]


# The former names, served with a FutureWarning.
__getattr__ = deprecated_names("rswb.data", {"PixelSet": "PatchStore",
                                             "ImageTextDataset": "RetrievalSplit.from_root"},
                               {**globals(), "RetrievalSplit.from_root": RetrievalSplit.from_root})
