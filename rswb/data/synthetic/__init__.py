"""Deterministic embedded demo data, written in the real on-disk formats.

The generators here WRITE files in exactly the layouts that the real readers of :mod:`rswb.data` consume, so
the demo data exercises the same code paths as real data (a generator that returned arrays directly would let
reader bugs hide). Three parts are produced:

``mspan/``
    One MS+PAN scene in the lab format: ``ms4.tif`` (4 bands, H x W), ``pan.tif`` (1 band, ratio*H x ratio*W),
    ``train.npy`` / ``test.npy`` (uint8 label maps on the MS grid, 0 = unlabelled), ``classes.txt``,
    ``README.txt``. The eight classes are built so that NEITHER modality alone separates them: every class
    shares its spectrum with exactly one other class (told apart only by PAN texture) and its texture with
    exactly one other class (told apart only by MS spectrum).
``scenes/``
    A scene-classification folder in the UC Merced layout, ``Images/<class>/<class>NN.png``.
``captions/``
    An image-caption set: ``images/img_00000.png`` ..., a Karpathy-style ``dataset.json`` and the precomp text
    files ``{split}_caps.txt`` / ``{split}_filename.txt``.

Everything is seeded and byte-identical across runs with the same seed on the same platform: random numbers
come from :func:`numpy.random.default_rng` keyed by ``(seed, part, item)``, and neither PNG nor GeoTIFF writes
embed a timestamp. :func:`synth_all` builds each part in a temporary sibling folder and renames it into place,
so an interrupted run never leaves a half-written dataset behind.
"""

from rswb.data.synthetic.captions import synth_captions
from rswb.data.synthetic.common import DEFAULT_SEED, GENERATOR_VERSION, MARKER_NAME, PARTS, default_data_dir
from rswb.data.synthetic.embedded import ensure_embedded, synth_all
from rswb.data.synthetic.mspan import PAN_WEIGHTS, mspan_spectra, mspan_texture_tiles, synth_mspan_scene
from rswb.data.synthetic.scenes import synth_scene_folder

__all__ = [
    "DEFAULT_SEED", "GENERATOR_VERSION", "MARKER_NAME", "PAN_WEIGHTS", "PARTS", "default_data_dir", "ensure_embedded",
    "mspan_spectra", "mspan_texture_tiles", "synth_all", "synth_captions", "synth_mspan_scene", "synth_scene_folder",
]
