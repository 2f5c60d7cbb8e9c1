"""Patches of an MS+PAN scene: the vectorised sampler, its cache, and the pixel datasets training uses.

A labelled MS pixel ``(r, c)`` gives an MS patch of ``ms_patch`` pixels around it (``(ms_patch-1)//2`` before, the
rest after: 7/8 for 16) and the PAN patch that covers the same ground, centred on the PAN footprint of the MS patch
(28/32 for 64 at ratio 4). Borders use reflect padding.

The :class:`PatchSampler` pads the scene once and gathers whole batches of patches with one ``index_select`` per
modality over an overlapping "row segment" view of the padded scene: every patch row is one contiguous
memcpy, so a batch costs a small multiple of copying its bytes, with no Python loop over pixels. The same code runs on
CUDA with the scene kept on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rswb.data.mspan import MSPANScene, load_mspan
from rswb.utils import deprecated_names

__all__ = ["PatchCache", "PatchSampler", "PixelPatches", "PatchStore", "patch_padding"]


def patch_padding(ms_patch: int, pan_patch: int, ratio: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Reflect-padding ``(before, after)`` for the MS grid and the PAN grid.

    The MS patch of pixel r spans ``r - before .. r + after`` with ``before = (ms_patch - 1) // 2``. The PAN patch is
    centred on the ground footprint of that MS patch, so with ``pan_patch = ratio * ms_patch`` it is exactly that
    footprint (16 -> 7/8, 64 -> 28/32 at ratio 4).
    """
    ms_before = (ms_patch - 1) // 2
    ms_after = ms_patch - 1 - ms_before
    pan_before = ratio * ms_before + (pan_patch - ratio * ms_patch) // 2
    pan_after = pan_patch - pan_before - ratio
    if pan_before < 0 or pan_after < 0:
        raise ValueError(f"PAN patch {pan_patch} is smaller than one MS pixel footprint at ratio {ratio}")
    return (ms_before, ms_after), (pan_before, pan_after)


class PatchSampler:
    """Vectorised MS/PAN patch-pair gathering from one scene, on CPU or on the scene's device.

    The scene is padded once (reflect) and kept as an HWC MS tensor and a PAN tensor on ``device``. A batch of
    ``B`` pixels is gathered with two ``index_select`` calls over overlapping row-segment views, so each patch row is
    one contiguous copy and no per-pixel Python code runs. MS patches come out as ``[B, C, p, p]`` in channels-last
    memory format (the natural layout of an HWC gather; convolutions accept it directly), PAN as ``[B, 1, P, P]``.

    Args:
        scene: the scene; use :meth:`MSPANScene.normalized` first if the model expects [0, 1] inputs.
        ms_patch: MS patch size p (default 16).
        pan_patch: PAN patch size P (default ``ratio * ms_patch``).
        device: where the padded scene lives and batches are produced (default CPU).
        dtype: floating dtype of the stored scene and the patches.
    """

    def __init__(self, scene: MSPANScene, ms_patch: int = 16, pan_patch: int | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        self.scene = scene
        self.ratio = r = scene.ratio
        self.ms_patch = p = ms_patch
        self.pan_patch = q = pan_patch if pan_patch is not None else r * ms_patch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        (mb, ma), (pb, pa) = patch_padding(p, q, r)
        c, h, w = scene.ms.shape
        ms = np.pad(np.moveaxis(scene.ms, 0, -1), ((mb, ma), (mb, ma), (0, 0)), mode="reflect")
        pan = np.pad(scene.pan[0], ((pb, pa), (pb, pa)), mode="reflect")
        # Widen PAN to a multiple of the ratio so that a patch starting at PAN column ratio*c is segment number
        # y * (width / ratio) + c of a view whose segments start every `ratio` elements. The extra columns are
        # never read (every patch ends inside the reflect padding).
        extra = (-pan.shape[1]) % r
        if extra:
            pan = np.pad(pan, ((0, 0), (0, extra)), mode="edge")
        self._ms = torch.as_tensor(np.ascontiguousarray(ms), dtype=dtype).to(self.device)
        self._pan = torch.as_tensor(np.ascontiguousarray(pan), dtype=dtype).to(self.device)
        self._ms_w = ms.shape[1]
        self._pan_segw = pan.shape[1] // r
        self._ms_seg = self._ms.as_strided(((self._ms.numel() - p * c) // c + 1, p * c), (c, 1))
        self._pan_seg = self._pan.as_strided(((self._pan.numel() - q) // r + 1, q), (r, 1))
        self._p_off = torch.arange(p, device=self.device)
        self._q_off = torch.arange(q, device=self.device)
        self.bands, self.height, self.width = c, h, w

    def gather(self, rows: torch.Tensor | np.ndarray, cols: torch.Tensor | np.ndarray,
               out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Patches around MS pixels ``(rows[i], cols[i])``.

        Args:
            rows: MS pixel rows ``[B]``.
            cols: MS pixel columns ``[B]``.
            out: optional preallocated contiguous ``{"ms": [B, p, p, C], "pan": [B, 1, P, P]}`` to write into (the
                MS buffer is pixel-major HWC, the gather's natural layout); :class:`PatchCache` fills itself this way.

        Returns:
            ``{"ms": [B, C, p, p], "pan": [B, 1, P, P]}`` on the sampler's device.
        """
        rows = torch.as_tensor(rows, device=self.device, dtype=torch.long)
        cols = torch.as_tensor(cols, device=self.device, dtype=torch.long)
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.height or cols.min() < 0 or cols.max() >= self.width):
            raise IndexError(f"pixel outside the {self.height}x{self.width} MS grid")
        b, c, p, q = rows.numel(), self.bands, self.ms_patch, self.pan_patch
        ms_idx = (rows[:, None] + self._p_off) * self._ms_w + cols[:, None]  # [B, p] segment ids
        pan_idx = (rows[:, None] * self.ratio + self._q_off) * self._pan_segw + cols[:, None]  # [B, P]
        if out is None:
            ms = self._ms_seg.index_select(0, ms_idx.reshape(-1)).view(b, p, p, c)
            pan = self._pan_seg.index_select(0, pan_idx.reshape(-1)).view(b, 1, q, q)
        else:
            ms, pan = out["ms"], out["pan"]
            torch.index_select(self._ms_seg, 0, ms_idx.reshape(-1), out=ms.view(b * p, p * c))
            torch.index_select(self._pan_seg, 0, pan_idx.reshape(-1), out=pan.view(b * q, q))
        return {"ms": ms.permute(0, 3, 1, 2), "pan": pan}

    @property
    def pair_bytes(self) -> int:
        """Bytes of one delivered MS + PAN patch pair."""
        return self._pan.element_size() * (self.bands * self.ms_patch ** 2 + self.pan_patch ** 2)

    def cache(self, rows: np.ndarray, cols: np.ndarray, chunk: int = 2048,
              max_bytes: int | None = None) -> PatchCache | None:
        """Extract the patches of a fixed pixel set once into contiguous memory (see :class:`PatchCache`).

        Args:
            rows: MS pixel rows ``[N]``.
            cols: MS pixel columns ``[N]``.
            chunk: pixels gathered per step while filling.
            max_bytes: return ``None`` instead when the cache would need more memory than this (or there are no
                pixels); ``None`` means no limit.
        """
        if max_bytes is not None and not 0 < len(rows) * self.pair_bytes <= max_bytes:
            return None
        return PatchCache(self, rows, cols, chunk=chunk)

    def batches(self, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 128,
                shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate over training batches ``{"ms", "pan", "label", "row", "col"}`` of the given pixels.

        Args:
            rows: MS pixel rows ``[N]``.
            cols: MS pixel columns ``[N]``.
            labels: 0-based class index per pixel ``[N]`` (optional).
            batch_size: pixels per batch.
            shuffle: visit pixels in a seeded random order.
            seed: seed of that order (its own generator: it does not touch the global RNG).
            drop_last: drop a last incomplete batch.
        """
        order = _epoch_order(len(rows), shuffle, seed)
        rows_t = torch.as_tensor(np.asarray(rows)[order], device=self.device, dtype=torch.long)
        cols_t = torch.as_tensor(np.asarray(cols)[order], device=self.device, dtype=torch.long)
        lab_t = None if labels is None else torch.as_tensor(np.asarray(labels)[order], device=self.device)
        for sl in _batch_slices(len(order), batch_size, drop_last):
            r, c = rows_t[sl], cols_t[sl]
            batch = self.gather(r, c)
            batch["row"], batch["col"] = r, c
            if lab_t is not None:
                batch["label"] = lab_t[sl]
            yield batch


def _epoch_order(n: int, shuffle: bool, seed: int) -> np.ndarray:
    """The order in which one epoch visits ``n`` items: seeded by its own generator (the global RNG is untouched)."""
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


def _batch_slices(n: int, batch_size: int, drop_last: bool) -> Iterator[slice]:
    """Consecutive batches of an epoch's order (every item is permuted once per epoch, then batches are views)."""
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield slice(start, start + batch_size)


def _empty_like_scene(sampler: PatchSampler, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of the sampler's dtype and device.

    On the CPU it is allocated through NumPy, which asks Linux for transparent huge pages on large arrays (torch's
    allocator does not): reading 16 KiB patches at random from a cache on 4 KiB pages costs a TLB miss per page and
    stops the hardware prefetcher at every page boundary, which measured 13-20 % slower per epoch.
    """
    dtype = sampler._pan.dtype
    if sampler.device.type != "cpu" or dtype not in (torch.float32, torch.float64, torch.float16):
        return torch.empty(shape, dtype=dtype, device=sampler.device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


class PatchCache:
    """The patch pairs of a fixed pixel set, extracted once into contiguous memory.

    Training visits the same labelled pixels every epoch. Gathering a patch from the scene reads 80 separate row
    segments (16 MS + 64 PAN rows, each on its own memory page); random 256-byte reads run at about 40 % of the
    streaming bandwidth on a CPU, so on-the-fly gathering stays 2.5-3.5x slower than a plain copy of the same bytes
    (``benchmarks/results/patch_sampler.md``). A cache pays one on-the-fly pass, after which every epoch reads each
    pair as two contiguous blocks (4 KiB MS + 16 KiB PAN), within 2x of that copy. It costs
    ``len(rows) * sampler.pair_bytes`` of memory (20 KiB per pixel at the default sizes in float32) on the sampler's
    device.

    Args:
        sampler: the scene's sampler (patch sizes, dtype and device come from it).
        rows, cols: MS pixel coordinates ``[N]``.
        chunk: pixels gathered per step while filling.
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, chunk: int = 2048):
        rows, cols = np.asarray(rows, np.int64).reshape(-1), np.asarray(cols, np.int64).reshape(-1)
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in length ({len(rows)} vs {len(cols)})")
        n, c, p, q = len(rows), sampler.bands, sampler.ms_patch, sampler.pan_patch
        self.sampler = sampler
        self.rows = torch.as_tensor(rows, device=sampler.device)
        self.cols = torch.as_tensor(cols, device=sampler.device)
        self._ms = _empty_like_scene(sampler, (n, p, p, c))
        self._pan = _empty_like_scene(sampler, (n, 1, q, q))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            sampler.gather(rows[start:stop], cols[start:stop],
                           out={"ms": self._ms[start:stop], "pan": self._pan[start:stop]})

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached patches."""
        return self._ms.nbytes + self._pan.nbytes

    def gather(self, index: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Cached patches of items ``index`` (positions in the pixel set), as :meth:`PatchSampler.gather` returns."""
        index = torch.as_tensor(index, device=self._ms.device, dtype=torch.long)
        return {"ms": self._ms.index_select(0, index).permute(0, 3, 1, 2), "pan": self._pan.index_select(0, index)}

    def batches(self, labels: np.ndarray | None = None, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches ``{"ms", "pan", "label", "row", "col"}`` of the cached pixels.

        Same arguments and the same seeded order as :meth:`PatchSampler.batches`, so the two deliver identical
        batches; ``labels`` are the cached pixels' 0-based classes.
        """
        order = _epoch_order(len(self), shuffle, seed)
        order_t = torch.as_tensor(order, device=self._ms.device)
        rows_t, cols_t = self.rows[order_t], self.cols[order_t]
        lab_t = None if labels is None else torch.as_tensor(np.asarray(labels)[order], device=self._ms.device)
        for sl in _batch_slices(len(order), batch_size, drop_last):
            batch = self.gather(order_t[sl])
            batch["row"], batch["col"] = rows_t[sl], cols_t[sl]
            if lab_t is not None:
                batch["label"] = lab_t[sl]
            yield batch


class PatchStore:
    """A fixed set of pixels of one scene whose patch pairs are fetched by position in the set.

    The first :meth:`gather` extracts every pixel's patches into a :class:`PatchCache` when they fit in
    ``cache_bytes`` (datasets visit the same pixels every epoch, and cached epochs read contiguous memory); a larger
    set is gathered from the scene on every call.

    Args:
        sampler: the scene's sampler.
        rows, cols: MS pixel coordinates ``[N]``.
        cache_bytes: largest cache to build (0 never caches).
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, cache_bytes: int = 512 << 20):
        self.sampler, self.cache_bytes = sampler, cache_bytes
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self._cache: PatchCache | None = None
        self._tried = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cached(self) -> bool:
        """Whether the patches are served from a cache (decided on the first :meth:`gather`)."""
        return self._cache is not None

    def gather(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """Patches of the pixels at positions ``index`` of the set, as :meth:`PatchSampler.gather` returns."""
        if not self._tried:
            self._cache, self._tried = self.sampler.cache(self.rows, self.cols, max_bytes=self.cache_bytes), True
        if self._cache is not None:
            return self._cache.gather(index)
        return self.sampler.gather(self.rows[index], self.cols[index])


class PixelPatches(torch.utils.data.Dataset):
    """Labelled pixels of a scene as MS+PAN patch pairs: dict samples, and whole batches at once.

    A sample is ``{"ms": [C,p,p], "pan": [1,P,P], "label", "row", "col", "id"}`` (``label`` the 0-based class);
    ``__getitems__`` gathers a whole batch dict in one pass (what training uses), so a ``DataLoader`` over it takes
    ``collate_fn=PixelPatches.collate``. The same pixels are visited every epoch, so a
    :class:`~rswb.data.patches.PatchStore` extracts their patches once on first use when they fit in ``cache_bytes``
    (a few-shot split always does); larger pixel sets are gathered from the scene on the fly.
    :meth:`from_scene` builds one from a scene folder or ``.mat`` pair and a split (the reader's interface).

    Args:
        sampler: the scene's patch sampler (shared by every split).
        rows, cols, labels: the pixels and their 0-based classes.
        repeats: the dataset is this many passes over the pixels (index ``i`` is pixel ``i % n``).
        cache_bytes: largest patch cache to build (0 disables it).
        transforms: optional callable applied to each sample dict, and to each batch dict in ``__getitems__``.
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray,
                 repeats: int = 1, cache_bytes: int = 512 << 20, transforms=None):
        self.sampler, self.repeats, self.transforms = sampler, max(1, int(repeats)), transforms
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.pixel_labels = np.asarray(labels, np.int64)
        self.pixels = PatchStore(sampler, self.rows, self.cols, cache_bytes)

    @classmethod
    def from_scene(cls, root: str | Path | MSPANScene, split: str = "train", transforms=None, ms_patch: int = 16,
                   pan_patch: int | None = None, normalize: str | None = "minmax",
                   cache_bytes: int = 512 << 20) -> PixelPatches:
        """The labelled pixels of one split of a scene.

        Args:
            root: lab-format folder or ``.mat`` pair, or an already loaded :class:`MSPANScene`.
            split: label map to take pixels from (``"train"``, ``"test"`` or ``"label"``).
            transforms: optional callable applied to each sample (and batch) dict.
            ms_patch: MS patch size.
            pan_patch: PAN patch size (default: ratio x ``ms_patch``).
            normalize: ``"minmax"``, ``"percentile"`` or ``None`` (raw values).
            cache_bytes: extract the split's patches once when they fit in this many bytes (0: never).
        """
        scene = root if isinstance(root, MSPANScene) else load_mspan(root)
        if normalize:
            scene = scene.normalized(normalize)
        rows, cols, labels = scene.labelled_pixels(split)
        return cls(PatchSampler(scene, ms_patch, pan_patch), rows, cols, labels, cache_bytes=cache_bytes,
                   transforms=transforms)

    @staticmethod
    def collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``collate_fn`` of a ``DataLoader`` over this dataset: the batch dict is already whole."""
        return batch

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item (repeated ``repeats`` times)."""
        return np.tile(self.pixel_labels, self.repeats)

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def _gather(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, np.int64) % len(self.rows)
        batch = self.pixels.gather(idx)
        batch["ms"] = batch["ms"].contiguous()
        batch["label"] = torch.as_tensor(self.pixel_labels[idx])
        batch["row"], batch["col"] = torch.as_tensor(self.rows[idx]), torch.as_tensor(self.cols[idx])
        batch["id"] = batch["row"] * self.sampler.width + batch["col"]  # pixel identity (duplicates in a batch)
        return batch

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self._gather(indices)
        return self.transforms(batch) if self.transforms else batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {k: v[0] for k, v in self._gather([index]).items()}
        return self.transforms(sample) if self.transforms else sample

    def plot(self, sample: dict[str, Any], bands: Sequence[int] | None = None):
        """Show one sample's MS composite and PAN patch with its class; returns the figure."""
        import matplotlib.pyplot as plt

        ms = sample["ms"].detach().cpu().numpy()
        bands = list(bands or ((3, 2, 1) if ms.shape[0] == 4 else (0, 1, 2)[: ms.shape[0]]))
        img = np.moveaxis(ms[bands], 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
        axes[0].set_title(f"MS {ms.shape[1]}x{ms.shape[2]}")
        axes[1].imshow(sample["pan"][0].detach().cpu().numpy(), cmap="gray")
        axes[1].set_title(f"PAN {sample['pan'].shape[-1]}x{sample['pan'].shape[-1]}")
        names = self.sampler.scene.class_names
        label = int(sample["label"])
        fig.suptitle(f"class {label + 1}" + (f" ({names[label]})" if names else "") +
                     f" at ({int(sample['row'])}, {int(sample['col'])})")
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        return fig


# The former names, served with a FutureWarning.
__getattr__ = deprecated_names("rswb.data.patches", {"PixelSet": "PatchStore"},
                               globals())
