"""Frozen-encoder outputs computed once and cached on disk, and the datasets that train on them.

The CPU profiles of the hash and retrieval tasks keep the pretrained encoders frozen: their outputs (pooled
backbone features per dihedral view, a backbone's feature levels, a text transformer's token states) are computed
once per input by :func:`extract_images` / :func:`extract_text_states`, stored under ``$RSWB_CACHE_DIR`` (default
``~/.cache/rswb``) by :func:`cached`, and only the layers on top train.

Cache keys (:func:`digest`) cover everything the outputs depend on: the encoder's actual weights, the input files'
paths, sizes and modification times, the settings. A changed file, weight or setting is a new entry, never a stale
hit. Entries are written atomically and read with ``weights_only=True``; an unreadable entry is recomputed.

The encoder runs on the device its caller passes (the training device of the run: ``--device``), in eval mode, and
goes back to the device and mode it had. Extraction leaves the global random state as it found it (a DataLoader
draws from it), so a run gives the same numbers whether its cache was cold or warm.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rswb.data.transforms import dihedral
from rswb.io import CheckpointError, DiskFullError, atomic_save, load_checkpoint
from rswb.utils import eval_mode, show_progress

__all__ = ["CachedViews", "FeatureSet", "PairedViews", "cache_root", "cached", "cached_images", "cached_text",
           "digest", "extract_images", "extract_text_states", "item_ids", "nbytes"]


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: ``override``, else ``$RSWB_CACHE_DIR``, else ``~/.cache/rswb``."""
    return Path(override or os.environ.get("RSWB_CACHE_DIR") or Path.home() / ".cache" / "rswb")


def digest(settings: Any = (), modules: Iterable[nn.Module] = (), files: Iterable[str | Path] = (),
           texts: Iterable[str] = ()) -> str:
    """A hex key over ``repr(settings)``, the modules' state dicts, the files' identity and the texts.

    A file's identity is its resolved path, size and modification time (reading every image's bytes would cost as
    much as decoding them).
    """
    h = hashlib.sha256(repr(settings).encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


HOLDS_KEY = "_holds"  # the entry's record of what it holds, stored in it beside the tensors


def item_ids(paths: Iterable[str | Path]) -> list[str]:
    """Short ids of image files for a cache entry's record: ``"folder/name"`` (class folder and file name)."""
    return [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]


def _described(holds: Mapping[str, Any] | None) -> str:
    if holds is None:
        return "nothing recorded (written before entries recorded what they hold)"
    parts = [f"entry {holds.get('entry')}"]
    if "split" in holds:
        parts.append(f"split {holds['split']}")
    items = holds.get("items")
    if isinstance(items, list):
        parts.append(f"{len(items)} items ({', '.join(map(str, items[:2]))}{', ...' if len(items) > 2 else ''})")
    elif items is not None:
        parts.append(f"{items} items")
    return ", ".join(parts)


def cached(path: str | Path, compute: Callable[[], dict[str, Any]],
           holds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict stored at ``path``, or ``compute()``'s result, stored there atomically first.

    Every entry records what it holds: its own file name (the key, itself a digest of the settings and items) and
    ``holds`` (e.g. ``{"split": "train", "items": item_ids(paths)}``). An entry whose bytes changed (its SHA-256, see
    :func:`rswb.io.load_checkpoint`), or whose record is not what is asked for (two entries swapped or renamed, other
    items), is never used: it is recomputed, with a warning. A full disk costs the cache, not the run: the features
    are returned from memory with a warning.
    """
    path = Path(path)
    want = {"entry": path.name, **dict(holds or {})}
    if path.exists():
        try:
            value = load_checkpoint(path)
            got = value.pop(HOLDS_KEY, None)
            if got == want:
                return value
            raise CheckpointError(f"{path}: holds {_described(got)}; asked for {_described(want)}")
        except Exception as err:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
            warnings.warn(f"rswb: recomputing a cache entry: {err}", stacklevel=2)
    value = compute()
    try:
        atomic_save({**value, HOLDS_KEY: want}, path)
    except DiskFullError as err:
        warnings.warn(f"rswb: {err}; the features are used from memory and will be computed again next time",
                      stacklevel=2)
    return value


def cached_images(encoder: nn.Module, images: Dataset | Callable[[], Dataset], paths: Sequence[str | Path], *,
                  output: str,
                  fn: Callable[[nn.Module, torch.Tensor], Any] | None = None, views: int | None = None,
                  settings: Any = (), weights: nn.Module | None = None, split: str | None = None,
                  cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, desc: str = "features", progress: bool = True
                  ) -> dict[str, torch.Tensor]:
    """A frozen encoder's outputs for every image of ``images`` (and view), from the disk cache or computed once.

    The one way a task caches image features: the cache builds its own key and records what each entry holds, so no
    task composes a key. The key digests ``output``, ``settings``, the views, the weights that shape the outputs
    (``weights``, e.g. ``backbone.trunk(cut)`` for a cut, else the whole ``encoder``) and the image files (paths,
    sizes, modification times); the entry records the split and the item ids (:func:`cached`).

    Args:
        encoder: the frozen network.
        images: the images as dict samples, in the order of ``paths``; or a function making that dataset, called
            only on a miss (for datasets that decode everything when built).
        paths: the image files (their identity is in the key).
        output: what is kept, as a file-name-safe label (``"efficientnet_lite0-pooled"``, ``"...-stage6"``).
        fn: ``fn(encoder, batch)``: the outputs kept (default: the pooled vector).
        views: dihedral views per image (``None``: the images as they are).
        settings: anything else that changes the outputs (image size, taps): part of the key.
        weights: the modules whose weights shape the outputs (default: ``encoder``).
        split: the split the images are (recorded in the entry).
        cache_dir: the cache folder (:func:`cache_root`).
        device: where the encoder runs.
        dtype: the stored precision.
        desc: the progress bar's label.
        progress: show the progress bar.
    """
    paths = list(paths)
    key = digest((output, settings, views), [weights if weights is not None else encoder], paths)
    path = cache_root(cache_dir) / "images" / f"{output}-{key}.pt"
    holds = {"split": split, "items": item_ids(paths), "views": views}
    def compute() -> dict[str, torch.Tensor]:
        dataset = images if isinstance(images, Dataset) else images()
        return extract_images(encoder, dataset, fn, device=device, views=views, dtype=dtype, desc=desc,
                              progress=progress)

    return cached(path, compute, holds)


def cached_text(encoder: nn.Module, captions: Sequence[str], *, output: str, layer: int | None = None,
                split: str | None = None, cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                desc: str = "text", progress: bool = True) -> dict[str, torch.Tensor]:
    """A frozen text encoder's token states (or hidden states entering ``layer``) of ``captions``, cached once.

    The key digests ``output``, the encoder's weights, its maximum length, the layer and the captions themselves;
    the entry records the split and the number of captions.
    """
    key = digest((output, getattr(encoder, "max_length", None), layer), [encoder], texts=captions)
    path = cache_root(cache_dir) / "text" / f"{output}-{key}.pt"
    kw = {"layer": layer} if layer is not None else {}
    return cached(path, lambda: extract_text_states(encoder, captions, device=device, desc=desc, progress=progress,
                                                    **kw), {"split": split, "items": len(captions)})


def _own_random_state(device: torch.device):
    """Restore torch's global random state (CPU, and ``device`` if CUDA) after the block.

    Iterating a DataLoader draws a seed from the global generator. Without this, a run whose cache is cold (features
    extracted in the run) would initialise its model from another random state than a run that found them cached.
    """
    cuda = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def _module_device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


@torch.no_grad()
def extract_images(encoder: nn.Module, dataset: Dataset, fn: Callable[[nn.Module, torch.Tensor], Any] | None = None,
                   *, device: torch.device | str = "cpu", views: int | None = None, batch_size: int = 32,
                   dtype: torch.dtype = torch.float32, desc: str = "features",
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """Run a frozen encoder over every image of ``dataset`` (dict samples with ``"image"``) and keep its outputs.

    Args:
        encoder: the frozen network (eval mode inside; its device and mode are restored afterwards).
        dataset: images as ``{"image": [3, H, W]}`` samples, in the order the outputs keep.
        fn: ``fn(encoder, images) -> tensor | {name: tensor}`` of a batch (default: the backbone's pooled vector,
            ``encoder.forward_features(images)["pooled"]``).
        device: where the encoder runs.
        views: ``None``: the images as they are, outputs ``[N, ...]``; an int: that many dihedral views per image
            (:func:`rswb.data.transforms.dihedral`, convolutions are not rotation-equivariant, so each view is its
            own entry), outputs ``[N, views, ...]``.
        batch_size: images per forward pass.
        dtype: the stored dtype (float16 halves the cache of large feature maps).
        desc: progress-bar label.
        progress: show a progress bar.

    Returns:
        ``{name: [N, ...]}`` on the CPU (``{"features": ...}`` when ``fn`` returns a tensor).
    """
    fn = fn or (lambda enc, x: enc.forward_features(x)["pooled"])
    home = _module_device(encoder)
    device = torch.device(device)
    parts: dict[str, list[torch.Tensor]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with _own_random_state(device), eval_mode(encoder):
        encoder.to(device)
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=not show_progress(progress)):
                img = batch["image"].to(device)
                if views is None:
                    outs = [fn(encoder, img)]
                else:
                    outs = [fn(encoder, dihedral(img, v)) for v in range(views)]
                outs = [o if isinstance(o, dict) else {"features": o} for o in outs]
                for k in outs[0]:
                    vals = [o[k].to("cpu", dtype) for o in outs]
                    parts.setdefault(k, []).append(vals[0] if views is None else torch.stack(vals, 1))
        finally:
            encoder.to(home)
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def extract_text_states(encoder: nn.Module, captions: Sequence[str], *, device: torch.device | str = "cpu",
                        batch_size: int = 256, desc: str = "token states", progress: bool = True,
                        layer: int | None = None) -> dict[str, torch.Tensor]:
    """A frozen text transformer's token states of every caption, padded to the longest (float16), with the mask.

    ``encoder`` has ``tokenize(captions)`` and ``token_states(input_ids, attention_mask)`` (MiniLM, a local Hugging
    Face encoder). Each batch is trimmed to its own longest caption before the forward pass. With ``layer`` the
    states are the hidden states entering that layer (``encoder.hidden_until``, for partial fine-tuning).

    Returns:
        ``{"states": [N, L, D] float16, "mask": [N, L] bool}`` on the CPU.
    """
    home = _module_device(encoder)
    device = torch.device(device)
    toks = encoder.tokenize(list(captions))
    width = int(toks["attention_mask"].sum(1).max())
    states = torch.zeros(len(captions), width, encoder.state_dim, dtype=torch.float16)
    with _own_random_state(device), eval_mode(encoder):
        encoder.to(device)
        try:
            for start in tqdm(range(0, len(captions), batch_size), desc=desc, leave=False,
                              disable=not show_progress(progress)):
                sl = slice(start, start + batch_size)
                am = toks["attention_mask"][sl]
                w = int(am.sum(1).max())
                ids, mask = toks["input_ids"][sl, :w].to(device), am[:, :w].to(device)
                out = (encoder.token_states(ids, mask) if layer is None else encoder.hidden_until(ids, mask, layer))
                states[sl, :w] = out.to("cpu", torch.float16)
        finally:
            encoder.to(home)
    return {"states": states, "mask": toks["attention_mask"][:, :width].bool()}


class FeatureSet(Dataset):
    """Cached features as dict samples ``{"features": [F], "label", "index"}``; every view is one item.

    Args:
        features: ``[N, V, F]`` (``V`` dihedral views per image, see :func:`extract_images`).
        labels: class of every image ``[N]``.
        index: the image's position in its split ``[N]`` (kept per view, so evaluation can tell views apart).
    """

    def __init__(self, features: torch.Tensor, labels: np.ndarray, index: np.ndarray):
        n, v, _ = features.shape
        self.features = features.reshape(n * v, -1)
        self.labels = np.repeat(np.asarray(labels), v)
        self.index = np.repeat(np.asarray(index), v)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "label": int(self.labels[i]), "index": int(self.index[i])}

    def plot(self, sample: dict[str, Any], ax=None):
        """Bar chart of one sample's feature vector (what the trained layers see instead of the image)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 2))[1]
        f = sample["features"].float().numpy()
        ax.bar(np.arange(len(f)), f, width=1.0)
        ax.set_title(f"features of item {sample['index']} (class {sample['label']}, {len(f)} values)")
        return ax


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes the tensors of a cache entry hold (what its size on disk is, give or take the header)."""
    return sum(v.numel() * v.element_size() for v in tensors.values())


class CachedViews(Dataset):
    """Cached activations at a backbone's cut point, one item per image, for partial fine-tuning.

    Each image has ``V`` cached views (the dihedral views of :func:`extract_images`); a training item is one of them at
    random (the same augmentation as fine-tuning on images, with every view computed once), an evaluation item the
    first (the image as it is).

    Args:
        cache: ``{"cut": [N, V, C, H, W], <tap>: [N, V, ...]}`` from ``extract_images(..., views=V)`` over
            ``backbone.forward_until(images, cut)``.
        labels: class of every image ``[N]``.
        index: the image's position in its split ``[N]``.
        random_view: draw a random view per item (training) instead of view 0.
        all_views: every view of the item, stacked (test-time augmentation: the model averages over them).
        targets: per-view training targets ``{name: [N, V, ...]}`` (e.g. a teacher's class scores on each view),
            returned under their names for the same view as the maps.

    A sample is ``{"cut": [C, H, W], "taps": {name: map}, "label", "index"}`` (float32, plus the targets); with
    ``all_views`` the maps are ``[V, C, H, W]``.
    """

    def __init__(self, cache: dict[str, torch.Tensor], labels: np.ndarray, index: np.ndarray,
                 random_view: bool = False, all_views: bool = False,
                 targets: dict[str, torch.Tensor] | None = None):
        self.cut = cache["cut"]
        self.taps = {k: v for k, v in cache.items() if k != "cut"}
        self.targets = dict(targets or {})
        for name, t in self.targets.items():
            if tuple(t.shape[:2]) != tuple(self.cut.shape[:2]):
                raise ValueError(f"target {name!r} has {tuple(t.shape[:2])} images x views, the cache "
                                 f"{tuple(self.cut.shape[:2])}")
        self.labels, self.index = np.asarray(labels), np.asarray(index)
        if random_view and all_views:
            raise ValueError("CachedViews: random_view and all_views exclude each other")
        self.random_view, self.all_views = bool(random_view), bool(all_views)
        if len(self.cut) != len(self.labels):
            raise ValueError(f"{len(self.cut)} cached images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v: int | slice = slice(None) if self.all_views else (
            int(torch.randint(0, self.cut.shape[1], ())) if self.random_view else 0)
        return {"cut": self.cut[i, v].float(), "taps": {k: m[i, v].float() for k, m in self.taps.items()},
                "label": int(self.labels[i]), "index": int(self.index[i]),
                **{k: t[i, v].float() for k, t in self.targets.items()}}

    def plot(self, sample: dict[str, Any], ax=None):
        """The cached activation's channel mean (what the trained stages start from)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(3, 3))[1]
        ax.imshow(sample["cut"].mean(0).numpy(), cmap="magma")
        ax.set_title(f"item {sample['index']} (class {sample['label']}): {tuple(sample['cut'].shape)}")
        ax.axis("off")
        return ax


class PairedViews(Dataset):
    """Cached features of several modalities of the same images, one item per image, the same view for all.

    What the PHA ladder trains on with a frozen pretrained encoder (``rswb train pha --encoder``): each image has ``V``
    cached dihedral views per modality; a training item is one view at random, shared by the modalities (the pair
    stays co-registered, as :func:`rswb.data.transforms.augment_pairs` keeps it on images); an evaluation item is
    view 0 (the image as it is).

    Args:
        cache: ``{modality: [N, V, F]}`` (every modality with the same ``N`` and ``V``).
        labels: class of every image ``[N]``.
        ids: identity of every image ``[N]`` (returned as ``"id"``: the alignment loss recognises an image drawn
            twice in a batch by it).
        repeats: passes over the images per epoch (few shots make very short epochs).
        random_view: draw a random view per item (training) instead of view 0.

    A sample is ``{modality: [F] float32, ..., "label", "index", "id"}`` with ``index`` the image's position here.
    """

    def __init__(self, cache: dict[str, torch.Tensor], labels: np.ndarray, ids: np.ndarray | None = None,
                 repeats: int = 1, random_view: bool = False):
        shapes = {k: tuple(v.shape[:2]) for k, v in cache.items()}
        if not cache or len(set(shapes.values())) != 1:
            raise ValueError(f"every modality needs the same [images, views], got {shapes}")
        self.cache = cache
        self.labels_ = np.asarray(labels, np.int64)
        n, self.views = next(iter(shapes.values()))
        if len(self.labels_) != n:
            raise ValueError(f"{n} cached images but {len(self.labels_)} labels")
        self.ids = np.arange(n) if ids is None else np.asarray(ids, np.int64)
        self.repeats, self.random_view = max(1, int(repeats)), bool(random_view)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item (repeats included)."""
        return np.tile(self.labels_, self.repeats)

    def __len__(self) -> int:
        return len(self.labels_) * self.repeats

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(i) % len(self.labels_)
        v = int(torch.randint(0, self.views, ())) if self.random_view else 0
        return {**{k: f[j, v].float() for k, f in self.cache.items()}, "label": int(self.labels_[j]), "index": j,
                "id": int(self.ids[j])}

    def draw(self, n: int) -> dict[str, torch.Tensor]:
        """A batch of ``n`` items drawn at random with replacement (each with a random view when ``random_view``)."""
        pick = torch.randint(0, len(self.labels_), (n,))
        views = torch.randint(0, self.views, (n,)) if self.random_view else torch.zeros(n, dtype=torch.long)
        out = {k: f[pick, views].float() for k, f in self.cache.items()}
        out["id"] = torch.as_tensor(self.ids[pick.numpy()])
        return out

    def plot(self, sample: dict[str, Any], ax=None):
        """Each modality's feature vector of one sample, as lines (what the trained adapters see instead of images)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 2))[1]
        for k in self.cache:
            ax.plot(sample[k].numpy(), lw=0.6, label=k)
        ax.legend(loc="upper right")
        ax.set_title(f"cached features of image {sample['index']} (class {sample['label']})")
        return ax
