"""PHA: few-shot MS+PAN classification as a ladder of registered model versions (docs/methods.md, PHA).

Every version is one :class:`PHANet` configuration; each step of the ladder changes one thing and its builder's
docstring says what and why (keyword arguments override a version's settings, which is how ablations such as
``pha_v4`` without stage fusion are built: ``create_model("pha_v4", stage_fusion=False)``);
``docs/pha_versions.md`` collects them with the measured effect:

=============  ==========================================================================================
``ms_only``    MS branch + classifier (single-modality baseline)
``pan_only``   PAN branch (stride-4 stem) + classifier (single-modality baseline)
``pha_v1``     both branches, late fusion (concatenated deep features), cross-entropy
``pha_v2``     + cross-modal InfoNCE on the deepest stage only
``pha_v3``     + hierarchical alignment: InfoNCE at the shallow, middle and deep stage, equal weights
``pha_v4``     + progressive schedule (alignment emphasis moves shallow -> deep) and stage-wise fusion
``pha_v5``     + modality-compensated dictionary: deep alignment acts on shared sparse codes, the specific parts
               are kept (reconstruction + decorrelation) and compensated back into the fused feature
``pha_v6``     + self-supervised pre-training of both branches on the unlabelled items before the few shots
               (two-view contrast within each modality, MS <-> PAN contrast, shared/specific decorrelation;
               :mod:`rswb.tasks.pha.pretrain`), then v5's fine-tuning
=============  ==========================================================================================

**Geometry (why the models are dense).** The MS branch starts with a 1x1 stem; the PAN branch with a
``ratio x ratio`` convolution of stride ``ratio``, so its stages sit on the MS grid, position for position. Each of
the three stages is two *unpadded* 3x3 convolutions, so a 16x16 MS patch (and its 64x64 PAN footprint) ends as a
4x4 map whose average is the patch's feature. Because nothing is zero-padded and everything after the average is a
per-vector operation, running the same network over a whole (reflect-padded) scene and averaging every 4x4 window
(:meth:`PHANet.dense`) gives *exactly* the per-patch result for every pixel at once, instead of recomputing the
overlapping patches of neighbouring pixels. The same models also take whole images (the UC Merced Wald check):
:meth:`PHANet.forward` averages whatever final map it gets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rswb.data.mspan import MSPANScene
from rswb.data.patches import PatchSampler, patch_padding
from rswb.registry import register_model
from rswb.utils import eval_mode

__all__ = [
    "dense_predict", "patch_predict",
    "CompensatedDictionary", "FeatureBranch", "PHANet",
    "ms_only", "pan_only", "pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6",
    "PHA_VERSIONS", "PRETRAIN_OBJECTIVES", "PretrainHeads",
]

PHA_VERSIONS = ("ms_only", "pan_only", "pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6")
"""The ladder in order (what ``rswb train pha --version`` accepts and notebook 02 trains)."""

PRETRAIN_OBJECTIVES = ("none", "within", "cross")
"""What a version's branches are pre-trained with before the few shots (:mod:`rswb.tasks.pha.pretrain`): nothing;
two-view contrast within each modality only (the control); or that plus MS <-> PAN contrast and the shared/specific
decorrelation."""

STAGE_NAMES = ("shallow", "middle", "deep")
CONVS_PER_STAGE = 2


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=0, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Branch(nn.Module):
    """One modality's encoder: a stem onto the MS grid, then three stages of two unpadded 3x3 convolutions."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int], stem_stride: int = 1):
        super().__init__()
        k = stem_stride if stem_stride > 1 else 1
        self.stem = _conv_bn_relu(in_channels, widths[0], kernel=k, stride=stem_stride)
        chans = (widths[0], *widths)
        self.stages = nn.ModuleList(
            nn.Sequential(*[_conv_bn_relu(chans[i] if j == 0 else chans[i + 1], chans[i + 1])
                            for j in range(CONVS_PER_STAGE)])
            for i in range(len(widths)))


class FeatureBranch(nn.Module):
    """One modality's branch on a frozen pretrained encoder: a trainable adapter per stage on cached pooled features.

    The encoder's pooled features at three depths (e.g. EfficientNet's stride-8, stride-16 and head features) arrive
    concatenated, ``[B, sum(dims)]``; stage ``s`` is ``ReLU(BN(Linear(dims[s] -> widths[s])))`` of its slice. The
    ladder (alignment per stage, stage fusion, the dictionary) then acts on these adapted stage features exactly as
    on the pooled maps of a :class:`Branch`.
    """

    def __init__(self, dims: tuple[int, int, int], widths: tuple[int, int, int]):
        super().__init__()
        if len(dims) != len(widths):
            raise ValueError(f"feature_dims {dims} and widths {widths} must have one entry per stage")
        self.dims = tuple(int(d) for d in dims)
        self.stages = nn.ModuleList(nn.Sequential(nn.Linear(d, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True))
                                    for d, w in zip(self.dims, widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Adapted stage features ``[[B, widths[s]] per stage]`` of concatenated encoder features ``[B, sum(dims)]``."""
        if x.ndim != 2 or x.shape[1] != sum(self.dims):
            raise ValueError(f"expected encoder features [B, {sum(self.dims)}] (pooled levels {self.dims}), "
                             f"got {tuple(x.shape)}")
        return [stage(part) for stage, part in zip(self.stages, x.split(self.dims, dim=1))]


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of every k x k window (stride 1) of a feature map, computed in channels-last memory format."""
    return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, stride=1)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class CompensatedDictionary(nn.Module):
    """Modality-compensated dictionary on per-pixel deep features (``pha_v5``).

    A shared dictionary ``D`` (``atoms x dim``, unit-norm atoms) is used by both modalities. Each modality ``m``
    gets non-negative codes ``a_m = relu(E_m f_m)`` (kept sparse by an L1 term), its shared part
    ``s_m = a_m D`` and a specific part ``p_m = P_m f_m``. Training asks ``s_m + p_m`` to rebuild ``f_m``
    (reconstruction) and ``p_m`` to be uncorrelated with ``s_m`` (decorrelation); cross-modal alignment acts on the
    codes only. The fused feature is ``[ (s_ms + s_pan) / 2, p_ms, p_pan ]``: the common content once, plus what
    each modality alone knows, compensated back.

    Args:
        dim: feature size of both modalities.
        atoms: dictionary size.
    """

    def __init__(self, dim: int, atoms: int = 64):
        super().__init__()
        self.atoms = nn.Parameter(torch.randn(atoms, dim) / dim ** 0.5)
        self.encode = nn.ModuleDict({m: nn.Linear(dim, atoms) for m in ("ms", "pan")})
        self.specific = nn.ModuleDict({m: nn.Linear(dim, dim) for m in ("ms", "pan")})
        self.out_features = 3 * dim

    def forward(self, f_ms: torch.Tensor, f_pan: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes, shared and specific parts of ``[N, dim]`` features, and the compensated fusion ``[N, 3 dim]``."""
        d = F.normalize(self.atoms, dim=1)
        out: dict[str, torch.Tensor] = {}
        for m, f in (("ms", f_ms), ("pan", f_pan)):
            a = F.relu(self.encode[m](f))
            out[f"codes_{m}"] = a
            out[f"shared_{m}"] = a @ d
            out[f"specific_{m}"] = self.specific[m](f)
        out["fused"] = torch.cat([0.5 * (out["shared_ms"] + out["shared_pan"]), out["specific_ms"],
                                  out["specific_pan"]], 1)
        return out


class PHANet(nn.Module):
    """The configurable two-branch network behind every version (build it through the registered builders).

    Args:
        num_classes: classes ``C``.
        bands: MS bands.
        ratio: PAN/MS resolution ratio (PAN stem stride).
        modalities: ``("ms", "pan")``, ``("ms",)`` or ``("pan",)``.
        widths: channels of the shallow, middle and deep stage.
        align_stages: stages (0 shallow, 1 middle, 2 deep) with cross-modal projection heads and InfoNCE.
        align_schedule: ``"none"``, ``"equal"`` (fixed equal weights) or ``"progressive"`` (see
            :func:`rswb.losses.pha.progressive_weights`).
        stage_fusion: fuse MS and PAN at every stage, not only the deepest: a fusion layer per shallower stage
            (linear + ReLU on the concatenated pooled MS and PAN features of that stage) whose outputs join the
            classifier's input. The branches themselves stay separate.
        dictionary_atoms: size of the modality-compensated dictionary (0: none).
        proj_dim: size of the alignment embeddings.
        dropout: dropout before the classifier.
        patch: MS patch size the pixel classifier is defined on (sets the dense-mode window).
        feature_dims: sizes of a frozen pretrained encoder's pooled features at three depths: the branches become
            :class:`FeatureBranch` adapters and the model takes those features (``batch["ms"]``, ``batch["pan"]``:
            ``[B, sum(feature_dims)]``) instead of images; ``None``: the convolutional branches on images.
        pretrain: what the branches are pre-trained with before the few shots (one of
            :data:`PRETRAIN_OBJECTIVES`). The model only records it; the task runs the pre-training
            (:mod:`rswb.tasks.pha.pretrain`) and loads the branches' weights before fine-tuning.
        pseudo_threshold: self-training on the unlabelled items during fine-tuning (an ablation, no rung: it did
            not help, ``benchmarks/results/pha.md``): an unlabelled item whose predicted class has at least this
            probability is trained on as that class (0: none; :class:`rswb.losses.pha.PHALoss`).
    """

    def __init__(self, num_classes: int, bands: int = 4, ratio: int = 4, modalities: tuple[str, ...] = ("ms", "pan"),
                 widths: tuple[int, int, int] = (32, 64, 96), align_stages: tuple[int, ...] = (),
                 align_schedule: str = "none", stage_fusion: bool = False, dictionary_atoms: int = 0,
                 proj_dim: int = 64, dropout: float = 0.2, patch: int = 16,
                 feature_dims: tuple[int, int, int] | None = None, pretrain: str = "none",
                 pseudo_threshold: float = 0.0):
        super().__init__()
        if not 0.0 <= pseudo_threshold < 1.0:
            raise ValueError(f"pseudo_threshold must be in [0, 1), got {pseudo_threshold}")
        self.pseudo_threshold = float(pseudo_threshold)
        if pretrain not in PRETRAIN_OBJECTIVES:
            raise ValueError(f"pretrain must be one of {', '.join(PRETRAIN_OBJECTIVES)}, got {pretrain!r}")
        if pretrain == "cross" and len(modalities) != 2:
            raise ValueError("cross-modal pre-training needs both modalities")
        self.pretrain = pretrain
        if not modalities or set(modalities) - {"ms", "pan"}:
            raise ValueError(f"modalities must be a non-empty subset of ('ms', 'pan'), got {modalities}")
        two = len(modalities) == 2
        if not two and (align_stages or stage_fusion or dictionary_atoms):
            raise ValueError("alignment, stage fusion and the dictionary need both modalities")
        if align_schedule not in ("none", "equal", "deep", "progressive"):
            raise ValueError(f"align_schedule must be none|equal|deep|progressive, got {align_schedule!r}")
        self.num_classes, self.bands, self.ratio = int(num_classes), int(bands), int(ratio)
        self.modalities = tuple(modalities)
        self.widths = tuple(int(w) for w in widths)
        self.align_stages = tuple(sorted(align_stages))
        self.align_schedule = align_schedule if self.align_stages else "none"
        self.patch = int(patch)
        self.window = self.patch - 2 * CONVS_PER_STAGE * len(widths)
        if self.window < 1:
            raise ValueError(f"patch {patch} is too small for {len(widths)} stages of unpadded 3x3 convolutions")
        self.feature_dims = None if feature_dims is None else tuple(int(d) for d in feature_dims)
        self.branches = nn.ModuleDict()
        if self.feature_dims is not None:
            for m in modalities:
                self.branches[m] = FeatureBranch(self.feature_dims, widths)
        else:
            if "ms" in modalities:
                self.branches["ms"] = Branch(bands, widths)
            if "pan" in modalities:
                self.branches["pan"] = Branch(1, widths, stem_stride=ratio)
        # Stage-wise fusion reads the branches and never writes back into them: an earlier design added 1x1
        # convolutions from each branch into the other after every stage, and with alignment on top the two branches
        # collapsed into one representation (deep linear CKA 0.95) and lost 3.6 OA points (docs/pha_versions.md).
        self.stage_fuse = None
        if stage_fusion:
            self.stage_fuse = nn.ModuleList(nn.Sequential(nn.Linear(2 * w, w), nn.ReLU(inplace=True))
                                            for w in widths[:-1])
        self.proj = nn.ModuleDict({
            f"{m}{s}": _mlp(widths[s], 2 * proj_dim, proj_dim) for s in self.align_stages for m in ("ms", "pan")
            if not (dictionary_atoms and s == len(widths) - 1)  # v5: the deep stage aligns dictionary codes
        })
        deep = widths[-1]
        self.dictionary = CompensatedDictionary(deep, dictionary_atoms) if dictionary_atoms else None
        fused = self.dictionary.out_features if self.dictionary else deep * len(modalities)
        fused += sum(widths[:-1]) if stage_fusion else 0
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused, num_classes))
        self.stages = len(widths)

    # --- feature maps -----------------------------------------------------------------------------------------
    def stage_maps(self, ms: torch.Tensor | None, pan: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """Feature maps of every stage per modality: ``{"ms": [shallow, middle, deep], "pan": [...]}``."""
        if self.feature_dims is not None:
            raise ValueError("a model on encoder features has no feature maps (it takes pooled features, not images)")
        x = {}
        if "ms" in self.branches:
            x["ms"] = self.branches["ms"].stem(ms)
        if "pan" in self.branches:
            x["pan"] = self.branches["pan"].stem(pan)
        if ms is not None and pan is not None and tuple(pan.shape[-2:]) != tuple(self.ratio * n for n in ms.shape[-2:]):
            raise ValueError(f"PAN is {tuple(pan.shape[-2:])} but the MS grid is {tuple(ms.shape[-2:])}: PAN must be "
                             f"{self.ratio} x the MS size")
        maps: dict[str, list[torch.Tensor]] = {m: [] for m in x}
        for s in range(self.stages):
            for m in x:
                x[m] = self.branches[m].stages[s](x[m])
                maps[m].append(x[m])
        return maps

    def classify(self, feats: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per-vector head: pooled stage features ``{"ms": [[N, w_s] per stage], "pan": ...}`` -> logits.

        Uses the deep features (through the dictionary when there is one) and, with stage fusion, the fused
        shallower stages. With the dictionary the output also holds its codes and parts.
        """
        deep = {m: fs[-1] for m, fs in feats.items()}
        if self.dictionary is not None:
            out = self.dictionary(deep["ms"], deep["pan"])
            parts = [out.pop("fused")]
        else:
            out = {}
            parts = [deep[m] for m in self.modalities]
        if self.stage_fuse is not None:
            parts += [f(torch.cat([feats["ms"][s], feats["pan"][s]], 1)) for s, f in enumerate(self.stage_fuse)]
        out["logits"] = self.head(torch.cat(parts, 1))
        return out

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ms = batch.get("ms") if "ms" in self.branches else None
        pan = batch.get("pan") if "pan" in self.branches else None
        for name, t in (("ms", ms), ("pan", pan)):
            if name in self.branches and (t is None or t.ndim != 4):
                raise ValueError(f"batch[{name!r}] must be a [B, C, H, W] tensor for {self.modalities}")
        return ms, pan

    # --- per patch / per image ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Classify patches (or whole images): the final map of each is averaged into one vector.

        Returns:
            ``logits`` ``[B, C]``; ``stage_features`` ``{m: [B, w_s] per stage}`` (pooled stage maps); ``embed``
            ``{stage: (ms, pan)}`` alignment embeddings of the aligned stages; with the dictionary also ``codes_*``,
            ``shared_*``, ``specific_*`` and ``deep_*`` (the features they decompose).
        """
        if self.feature_dims is not None:
            pooled = {m: self.branches[m](batch[m]) for m in self.modalities}
        else:
            maps = self.stage_maps(*self._inputs(batch))
            pooled = {m: [f.mean((2, 3)) for f in fs] for m, fs in maps.items()}
        deep = {m: fs[-1] for m, fs in pooled.items()}
        out: dict[str, Any] = self.classify(pooled)
        out["stage_features"] = pooled
        embed = {}
        for s in self.align_stages:
            if self.dictionary is not None and s == self.stages - 1:
                embed[s] = (out["codes_ms"], out["codes_pan"])
            else:
                embed[s] = (self.proj[f"ms{s}"](pooled["ms"][s]), self.proj[f"pan{s}"](pooled["pan"][s]))
        out["embed"] = embed
        if self.dictionary is not None:
            out["deep_ms"], out["deep_pan"] = deep["ms"], deep["pan"]
        return out

    # --- whole scenes -------------------------------------------------------------------------------------------
    def dense(self, ms: torch.Tensor | None, pan: torch.Tensor | None) -> torch.Tensor:
        """Per-pixel logits of a padded scene tile in one pass.

        Args:
            ms: ``[B, C, h + patch - 1, w + patch - 1]``, the MS tile with the patch padding around it.
            pan: ``[B, 1, r (h + patch - 1), r (w + patch - 1)]``, the matching PAN tile.

        Returns:
            ``[B, num_classes, h, w]``: for every pixel exactly what :meth:`forward` gives for its patch.
        """
        # Channels-last: oneDNN's convolutions keep it, and window averaging is several times faster in it.
        ms, pan = (None if t is None else t.contiguous(memory_format=torch.channels_last) for t in (ms, pan))
        maps = self.stage_maps(ms, pan)
        # A patch's stage-s map is (patch - 4 (s + 1)) pixels wide; averaging every window of that size over the
        # scene's stage-s map gives each pixel's pooled stage feature, all on the same output grid.
        used = range(self.stages) if self.stage_fuse is not None else [self.stages - 1]
        pooled = {m: {s: _box_mean(fs[s], self.patch - 2 * CONVS_PER_STAGE * (s + 1)) for s in used}
                  for m, fs in maps.items()}
        b, _, h, w = pooled[self.modalities[0]][self.stages - 1].shape
        flat = {m: [v[s].permute(0, 2, 3, 1).reshape(b * h * w, -1) if s in v else None for s in range(self.stages)]
                for m, v in pooled.items()}
        logits = self.classify(flat)["logits"]
        return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    # --- where the model looks --------------------------------------------------------------------------------
    @torch.no_grad()
    def agreement_maps(self, ms: torch.Tensor, pan: torch.Tensor) -> list[torch.Tensor]:
        """Where MS and PAN agree: per stage, the cosine of the two branches' features at every position.

        The features go through the stage's alignment projection heads when the version aligns that stage (what its
        InfoNCE compares; ``pha_v5``'s deep stage: the dictionary codes), else the raw stage features are compared.
        Positions are the per-position features before a patch's window average, so a map shows agreement at the
        stage's own resolution (on the MS grid, shrinking by 4 pixels per stage: unpadded convolutions).

        Args:
            ms: ``[B, bands, h, w]`` (a scene tile or patches).
            pan: ``[B, 1, r h, r w]``, the matching PAN.

        Returns:
            ``[B, h - 4 (s + 1), w - 4 (s + 1)]`` per stage ``s``, values in [-1, 1].
        """
        if len(self.modalities) != 2:
            raise ValueError("agreement maps need both modalities")
        with eval_mode(self):
            maps = self.stage_maps(ms, pan)
            out = []
            for s in range(self.stages):
                b, c, h, w = maps["ms"][s].shape
                v = {m: maps[m][s].permute(0, 2, 3, 1).reshape(b * h * w, c) for m in ("ms", "pan")}
                if self.dictionary is not None and s == self.stages - 1:
                    v = {m: F.relu(self.dictionary.encode[m](x)) for m, x in v.items()}
                elif f"ms{s}" in self.proj:
                    v = {m: self.proj[f"{m}{s}"](x) for m, x in v.items()}
                out.append(F.cosine_similarity(v["ms"], v["pan"], dim=1, eps=1e-8).reshape(b, h, w))
        return out

    @torch.no_grad()
    def atom_maps(self, ms: torch.Tensor, pan: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pha_v5``: every dictionary atom's activation ``relu(E_m f_m)`` at every deep-stage position, per modality.

        Returns:
            ``{"ms": [B, atoms, h', w'], "pan": [B, atoms, h', w']}`` on the deep stage's grid.
        """
        if self.dictionary is None:
            raise ValueError("atom maps need the modality-compensated dictionary (pha_v5)")
        with eval_mode(self):
            maps = self.stage_maps(ms, pan)
            out = {}
            for m in ("ms", "pan"):  # the dictionary's own encoder, applied at every position (channels last)
                codes = F.relu(self.dictionary.encode[m](maps[m][-1].permute(0, 2, 3, 1)))
                out[m] = codes.permute(0, 3, 1, 2)
        return out

    def describe(self) -> dict[str, Any]:
        """What this configuration contains (for tables and the notebook)."""
        return {"modalities": "+".join(self.modalities), "align_stages": [STAGE_NAMES[s] for s in self.align_stages],
                "align_schedule": self.align_schedule, "stage_fusion": self.stage_fuse is not None,
                "dictionary_atoms": self.dictionary.atoms.shape[0] if self.dictionary is not None else 0,
                "branches": "encoder features" if self.feature_dims is not None else "convolutional",
                "pretrain": self.pretrain, "pseudo_threshold": self.pseudo_threshold,
                "parameters": sum(p.numel() for p in self.parameters())}


@register_model
def ms_only(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """MS-only baseline: the MS branch (1x1 stem, three stages) and a linear classifier.

    Why: the floor any fused model must clear. On the embedded scene MS sees spectra but not textures, so it
    confuses the class pairs that share a spectrum.
    """
    return PHANet(num_classes, bands, ratio, modalities=("ms",), **kw)


@register_model
def pan_only(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """PAN-only baseline: the PAN branch (stride-``ratio`` stem onto the MS grid, three stages) and a classifier.

    Why: the other floor. PAN sees texture and brightness but not the spectrum.
    """
    return PHANet(num_classes, bands, ratio, modalities=("pan",), **kw)


@register_model
def pha_v1(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """v1: two branches (PAN with a stride-``ratio`` stem so its stages sit on the MS grid), late fusion.

    Change: both modalities; their pooled deep features are concatenated and classified with cross-entropy.
    Why: the plain fusion baseline every later idea is measured against.
    """
    return PHANet(num_classes, bands, ratio, **kw)


@register_model
def pha_v2(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """v2: v1 + cross-modal alignment of the deepest features only.

    Change: projection heads on the deep MS and PAN features and a symmetric InfoNCE between the two embeddings of
    the same pixel (other pixels of the batch, labelled and unlabelled, are negatives).
    Why: the usual way to make two modalities agree; alignment needs no labels, so it also learns from unlabelled
    pixels, which few-shot training has plenty of.
    """
    return PHANet(num_classes, bands, ratio, **{"align_stages": (2,), "align_schedule": "deep", **kw})


@register_model
def pha_v3(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """v3: v2 + hierarchical alignment at the shallow, middle and deep stage, equal weights (1/3 each).

    Change: per-stage projection heads and an InfoNCE term per stage.
    Why: misalignment at shallow stages propagates upward; aligning only the top cannot fix it (PHA problem 1).
    """
    return PHANet(num_classes, bands, ratio, **{"align_stages": (0, 1, 2), "align_schedule": "equal", **kw})


@register_model
def pha_v4(num_classes: int = 8, bands: int = 4, ratio: int = 4, **kw: Any) -> PHANet:
    """v4: v3 + the progressive schedule and stage-wise cross-modal fusion.

    Change 1 (schedule): stage weights ``w_s(t) ∝ exp(-(s - 2t)^2 / (2 * 0.5^2))``, ``t`` = epoch / (epochs - 1),
    normalised to sum 1: epoch 0 weights (shallow, middle, deep) = (0.88, 0.12, 0.00), the middle of training
    (0.11, 0.79, 0.11), the last epoch (0.00, 0.12, 0.88).
    Change 2 (fusion): the classifier also sees the shallow and middle stage, each fused across modalities (a
    linear + ReLU layer on that stage's concatenated pooled MS and PAN features); the branches stay separate.
    Why: align the foundations first, then build on them; and let the decision use the aligned features of every
    depth instead of only the deepest.
    """
    return PHANet(num_classes, bands, ratio, **{"align_stages": (0, 1, 2), "align_schedule": "progressive",
                                                "stage_fusion": True, **kw})


@register_model
def pha_v5(num_classes: int = 8, bands: int = 4, ratio: int = 4, atoms: int = 64, **kw: Any) -> PHANet:
    """v5: v4 + the modality-compensated dictionary (:class:`CompensatedDictionary`).

    Change: the deep features of each modality are split into a shared part (sparse non-negative codes over one
    dictionary shared by MS and PAN) and a specific part; deep alignment acts on the codes only; reconstruction
    (shared + specific = feature) and decorrelation (specific uncorrelated with shared) terms; the classifier sees
    the shared part once plus both specific parts.
    Why: over-alignment erases what only one modality knows (PHA problem 2). Here alignment can only pull the
    shared codes together, while the specific parts keep the rest and are given back to the classifier.
    """
    return PHANet(num_classes, bands, ratio, **{"align_stages": (0, 1, 2), "align_schedule": "progressive",
                                                "stage_fusion": True, "dictionary_atoms": atoms, **kw})


@register_model
def pha_v6(num_classes: int = 8, bands: int = 4, ratio: int = 4, atoms: int = 64, **kw: Any) -> PHANet:
    """v6: v5 whose branches are first pre-trained without labels on the unlabelled items (``pretrain="cross"``).

    Change: before the few shots arrive, both branches train on every unlabelled item of the scene (pixel mode: pixel
    patches outside the test map; scene mode: every training image, labels unused) with two-view InfoNCE within each
    modality (on a specific head), MS <-> PAN InfoNCE (on a shared head) and a decorrelation term that keeps the
    shared and the specific embedding apart; overlapping pixel patches are soft, not hard, negatives
    (:mod:`rswb.tasks.pha.pretrain`). Fine-tuning then starts from those branches with v5's alignment and dictionary.
    Why: the alignment terms of v2-v5 act on the 5-10 labelled items per class (plus a few unlabelled ones per
    step), where there is almost nothing to align; the unlabelled items are free and plentiful, so the alignment is
    learnt there, before the labels, and the few shots only fine-tune it.
    """
    return PHANet(num_classes, bands, ratio, **{"align_stages": (0, 1, 2), "align_schedule": "progressive",
                                                "stage_fusion": True, "dictionary_atoms": atoms, "pretrain": "cross",
                                                **kw})


class PretrainHeads(nn.Module):
    """Projection heads of the self-supervised pre-training, on each modality's pooled deep feature.

    Per modality a *shared* head (its embeddings are contrasted across modalities, MS <-> PAN) and a *specific*
    head (contrasted between two views of the same modality); the pre-training loss keeps the two embeddings of a
    modality decorrelated, so the branch keeps what only its modality knows next to what the two share. The heads
    are thrown away after pre-training (the classifier never sees them), as in SimCLR-style pre-training.
    """

    def __init__(self, dim: int, modalities: tuple[str, ...] = ("ms", "pan"), proj_dim: int = 64):
        super().__init__()
        self.modalities = tuple(modalities)
        self.shared = nn.ModuleDict({m: _mlp(dim, 2 * proj_dim, proj_dim) for m in self.modalities})
        self.specific = nn.ModuleDict({m: _mlp(dim, 2 * proj_dim, proj_dim) for m in self.modalities})

    def forward(self, deep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"shared_<m>": [B, P], "specific_<m>": [B, P]}`` for every modality ``m`` of ``deep`` ``{m: [B, D]}``."""
        out = {}
        for m, f in deep.items():
            out[f"shared_{m}"] = self.shared[m](f)
            out[f"specific_{m}"] = self.specific[m](f)
        return out


# ---------------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def dense_predict(model: PHANet, scene: MSPANScene, tile: int = 256, device: str | torch.device | None = None,
                  progress: bool = False, return_logits: bool = False) -> np.ndarray:
    """Classify every pixel of a (normalised) scene by running the model densely over tiles.

    Each output tile of ``tile x tile`` pixels reads its input tile plus the patch padding (reflect, the same as the
    patch sampler's), so the result equals per-patch inference pixel for pixel; tiles only bound memory.

    Returns:
        ``[H, W]`` int64 0-based predicted classes (or ``[C, H, W]`` float32 logits with ``return_logits``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    r, p = scene.ratio, model.patch
    (mb, ma), (pb, pa) = patch_padding(p, r * p, r)
    ms = torch.as_tensor(np.pad(scene.ms, ((0, 0), (mb, ma), (mb, ma)), mode="reflect"))
    pan = torch.as_tensor(np.pad(scene.pan, ((0, 0), (pb, pa), (pb, pa)), mode="reflect"))
    h, w = scene.shape
    out = torch.empty((model.num_classes, h, w)) if return_logits else torch.empty((h, w), dtype=torch.long)
    tiles = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    with eval_mode(model):
        for y, x in tqdm(tiles, desc="dense", leave=False, disable=not progress):
            th, tw = min(tile, h - y), min(tile, w - x)
            ms_t = ms[None, :, y:y + th + p - 1, x:x + tw + p - 1].to(device)
            pan_t = pan[None, :, r * y:r * (y + th + p - 1), r * x:r * (x + tw + p - 1)].to(device)
            logits = model.dense(ms_t if "ms" in model.branches else None,
                                 pan_t if "pan" in model.branches else None)[0].float().cpu()
            out[..., y:y + th, x:x + tw] = logits if return_logits else logits.argmax(0)
    return out.numpy()


@torch.no_grad()
def patch_predict(model: PHANet, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, batch_size: int = 1024,
                  progress: bool = False, return_logits: bool = False) -> np.ndarray:
    """Classify pixels one patch each, in batches (the reference :func:`dense_predict` is measured against)."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in tqdm(range(0, len(rows), batch_size), desc="patches", leave=False, disable=not progress):
            b = sampler.gather(rows[start:start + batch_size], cols[start:start + batch_size])
            logits = model({k: v.to(device) for k, v in b.items()})["logits"].float().cpu()
            out.append(logits if return_logits else logits.argmax(1))
    return torch.cat(out).numpy()
