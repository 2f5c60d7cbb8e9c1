"""Image-text retrieval models: the plain dual encoder and the method heads of VSE++, CLIP, FISVL and KAMCL.

``encode_image`` and ``encode_text`` map images and captions to L2-normalised embeddings of one size, so the
similarity of an image and a caption is a dot product and :mod:`rswb.metrics.retrieval` scores the similarity matrix.

* :class:`DualEncoder`: any registered backbone + a text encoder (:mod:`rswb.models.text`), each with a linear
  projection of its pooled output.
* :class:`RetrievalNet`: the four methods of the retrieval table on one skeleton. Its image side reads a backbone's
  feature levels (:func:`feature_levels`: ``low`` stride 8, ``mid`` stride 16, ``high`` stride 32 maps and the
  ``pooled`` vector); its text side reads token states ``[B, L, D_t]`` with a padding mask. Both can come from a
  frozen encoder's cache (the CPU profile: only the heads train) or from a backbone / text encoder inside the model
  (fine-tuning). The method decides the heads (METHODS.md sections 2 and 3; details in each class):

  - ``vsepp`` / ``clip``: linear projections of the pooled image vector and the mean token state (the baselines);
  - ``fisvl``: a CLS projection plus a graph (:class:`FGIS`) over a global node, a multi-scale local node
    (:class:`SceneFineGrainedBranch`) and the stride-32 tokens;
  - ``kamcl``: a hierarchical aggregator (:class:`HierarchicalAggregator`, GPO over each level, a shared MLP, GPO
    again), GPO over tokens fused with the caption's tag vector, and concept heads whose sigmoid outputs are added
    back to the embedding through learned tag embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.pooling import GPO
from rswb.models.text import masked_mean
from rswb.registry import create_model, register_model

__all__ = [
    "FGIS", "METHODS", "DualEncoder", "HierarchicalAggregator", "RetrievalNet", "SceneFineGrainedBranch",
    "dual_encoder", "feature_levels", "level_channels", "make_backbone", "make_text_encoder", "retrieval_net",
]

METHODS = ("vsepp", "clip", "fisvl", "kamcl")


class DualEncoder(nn.Module):
    """Image backbone + text encoder, each projected to ``embed_dim`` and L2-normalised.

    Args:
        image_backbone: a backbone module (``forward(images) -> [B, num_features]``, ``num_features``).
        text_encoder: a text encoder (``forward(input_ids, attention_mask) -> [B, out_features]``,
            ``out_features``).
        embed_dim: size of the shared embedding space.
    """

    def __init__(self, image_backbone: nn.Module, text_encoder: nn.Module, embed_dim: int = 512):
        super().__init__()
        self.image_backbone, self.text_encoder = image_backbone, text_encoder
        self.image_proj = nn.Linear(image_backbone.num_features, embed_dim)
        self.text_proj = nn.Linear(text_encoder.out_features, embed_dim)
        self.embed_dim = int(embed_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings ``[B, embed_dim]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return F.normalize(self.image_proj(self.image_backbone(images)).float(), dim=1)

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings ``[B, embed_dim]`` of tokenised captions (``input_ids``, ``attention_mask``)."""
        return F.normalize(self.text_proj(self.text_encoder(tokens["input_ids"], tokens["attention_mask"])).float(),
                           dim=1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"image": [B, D], "text": [B, D]}`` for a batch with ``image`` and ``tokens``."""
        return {"image": self.encode_image(batch["image"]), "text": self.encode_text(batch["tokens"])}


@register_model
def dual_encoder(image_backbone: str = "efficientnet_lite0", text_encoder: str = "minilm", embed_dim: int = 512,
                 pretrained: bool = True, vocab_size: int | None = None, freeze_text: bool = True,
                 **text_kwargs: Any) -> DualEncoder:
    """A dual encoder from registered parts.

    Args:
        image_backbone: registered backbone name (``efficientnet_lite0`` | ``small_cnn``).
        text_encoder: ``minilm`` (pretrained, offline) or ``gru_text`` (needs ``vocab_size``).
        embed_dim: size of the shared embedding space.
        pretrained: load the backbone's ImageNet weights (EfficientNet-Lite0).
        vocab_size: vocabulary size of the GRU encoder.
        freeze_text: keep MiniLM's transformer fixed.
        text_kwargs: further options of the text encoder.
    """
    backbone = make_backbone(image_backbone, pretrained)
    if text_encoder == "minilm":
        text = create_model("minilm", freeze=freeze_text, **text_kwargs)
    elif text_encoder == "gru_text":
        if vocab_size is None:
            raise ValueError("the GRU text encoder needs vocab_size (build a Vocabulary from the training captions)")
        text = create_model("gru_text", vocab_size=vocab_size, **text_kwargs)
    else:
        raise ValueError(f"unknown text encoder {text_encoder!r}; use minilm or gru_text")
    return DualEncoder(backbone, text, embed_dim)


# ------------------------------------------------------------------------------------------------- feature levels


def _level_names(backbone: nn.Module) -> dict[str, str]:
    """``low``/``mid``/``high`` -> the backbone's stride-8 / 16 / 32 map names (the last map of each stride)."""
    by_stride = {}
    for info in backbone.feature_info:
        if info.name != "head":  # Lite0's 1,280-channel head is the pooled vector's source, not a token level
            by_stride[info.stride] = info.name
    missing = [s for s in (8, 16, 32) if s not in by_stride]
    if missing:
        raise ValueError(f"backbone {type(backbone).__name__} has no feature map at stride(s) {missing}")
    return {"low": by_stride[8], "mid": by_stride[16], "high": by_stride[32]}


def level_channels(backbone: nn.Module) -> dict[str, int]:
    """Channels of :func:`feature_levels`' outputs for ``backbone`` (``low``, ``mid``, ``high``, ``pooled``)."""
    names = _level_names(backbone)
    chans = {f.name: f.channels for f in backbone.feature_info}
    return {**{k: chans[v] for k, v in names.items()}, "pooled": int(backbone.num_features)}


def feature_levels(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature levels the retrieval heads read, from one backbone pass over images ``[B, 3, H, W]`` in [0, 1].

    Returns:
        ``low`` ``[B, C8, H/8, W/8]``, ``mid`` (stride 16), ``high`` (stride 32) and ``pooled`` ``[B, F]``.
    """
    out = backbone.forward_features(images)
    return {**{k: out[v] for k, v in _level_names(backbone).items()}, "pooled": out["pooled"]}


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` map -> ``[B, H*W, C]`` tokens."""
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------- FISVL heads


class SceneFineGrainedBranch(nn.Module):
    """FISVL's multi-scale local branch on an early feature map (the "scene fine-grained sensing" module).

    Three parallel convolutions (1x1, 3x3 with stride 3, 5x5 with stride 5) look at the map at three granularities;
    each result is average-pooled to ``grid`` x ``grid`` tokens, the three token sets go through one transformer
    block together, and a learned softmax mixing of the three scales' mean tokens, projected to ``dim``, gives the
    local vector.

    Args:
        in_channels: channels of the input map.
        dim: output size.
        width: token width inside the branch (the transformer block's cost grows with its square).
        grid: side of the pooled token grid (the paper pools its stem map to 16 x 16; 4 x 4 per scale keeps the block
            cheap enough for CPU training, 48 tokens in all).
        heads: attention heads of the transformer block.
    """

    def __init__(self, in_channels: int, dim: int, width: int = 128, grid: int = 4, heads: int = 4):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(in_channels, width, 1),
            nn.Conv2d(in_channels, width, 3, stride=3, padding=1),
            nn.Conv2d(in_channels, width, 5, stride=5, padding=2),
        ])
        self.grid = int(grid)
        self.block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.mix = nn.Parameter(torch.zeros(3))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Local vector ``[B, dim]`` of a map ``[B, C, H, W]``."""
        # The 1x1 convolution commutes with average pooling, so it runs on the pooled grid (19 % of a CPU step at
        # full resolution); the strided ones see the full map.
        scales = [_tokens(F.relu(self.convs[0](F.adaptive_avg_pool2d(x, self.grid))))]
        scales += [_tokens(F.adaptive_avg_pool2d(F.relu(conv(x)), self.grid)) for conv in self.convs[1:]]
        n = scales[0].shape[1]
        tokens = self.block(torch.cat(scales, 1))
        means = torch.stack([tokens[:, i * n:(i + 1) * n].mean(1) for i in range(3)], 1)  # [B, 3, width]
        return self.out((torch.softmax(self.mix, 0)[None, :, None] * means).sum(1))


class FGIS(nn.Module):
    """FISVL's fine-grained information supplementation: attention-graph updates over the image's nodes.

    ``steps`` times: ``A = softmax(Q K^T / sqrt(d))`` over the nodes, ``X <- ReLU(W (A X))`` (METHODS.md section 2).
    Our deviation: each update is wrapped in a residual connection and a layer norm, ``X <- LN(X + ReLU(W (A X)))``,
    the usual way to keep a node's own information through repeated attention when the graph is trained from
    scratch on top of frozen features. Returns the refined nodes.
    """

    def __init__(self, dim: int, steps: int = 2):
        super().__init__()
        self.q = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.k = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.w = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(steps)])
        self.scale = dim ** -0.5

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """Refined nodes ``[B, N, dim]`` of ``nodes`` ``[B, N, dim]``."""
        x = nodes
        for q, k, w, norm in zip(self.q, self.k, self.w, self.norm):
            a = torch.softmax(q(x) @ k(x).transpose(1, 2) * self.scale, dim=-1)
            x = norm(x + F.relu(w(a @ x)))
        return x


# ----------------------------------------------------------------------------------------------------- KAMCL heads


class HierarchicalAggregator(nn.Module):
    """KAMCL's hierarchical aggregator over the low, mid and high feature levels and the final vector.

    Each level's tokens are projected and pooled to ``dim`` by their own GPO, stacked with the projected final
    vector, passed through a shared MLP (residual) and pooled again by a GPO.

    Args:
        channels: ``{"low", "mid", "high", "pooled"}`` input channels.
        dim: output size.
    """

    def __init__(self, channels: dict[str, int], dim: int):
        super().__init__()
        self.levels = ("low", "mid", "high")
        # Each map is average-pooled to 4 x 4 tokens first: GPO sorts every channel of the set (torch's CPU sort of
        # many short rows is slow), which over the 28 x 28 stride-8 map (784 tokens) took 80 % of a CPU step, and
        # still 60 % at 7 x 7.
        self.grid = 4
        self.proj = nn.ModuleDict({k: nn.Linear(channels[k], dim) for k in self.levels})
        self.pools = nn.ModuleDict({k: GPO() for k in self.levels})
        self.final = nn.Linear(channels["pooled"], dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.out_pool = GPO()

    def forward(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Image vector ``[B, dim]`` from :func:`feature_levels`' dict."""
        parts = [self.pools[k](self.proj[k](_tokens(F.adaptive_avg_pool2d(levels[k], self.grid))))
                 for k in self.levels]
        parts.append(self.final(levels["pooled"]))
        stack = torch.stack(parts, 1)  # [B, 4, dim]
        return self.out_pool(stack + self.mlp(stack))


# ------------------------------------------------------------------------------------------------ the method model


class RetrievalNet(nn.Module):
    """One retrieval method's image and text heads (see the module docstring), optionally with its encoders.

    Args:
        method: ``vsepp`` | ``clip`` | ``fisvl`` | ``kamcl``.
        channels: ``{"low", "mid", "high", "pooled"}`` channels of the image feature levels.
        text_dim: width of the text token states.
        embed_dim: size of the joint embedding space.
        local_branch: FISVL: use the multi-scale local node (ablation: off).
        fgis_steps: FISVL: graph steps (0: no FGIS; the CLS is refined by an MLP over the mean of its nodes).
        hierarchical: KAMCL: the hierarchical aggregator (off: a projection of the pooled vector, like the baselines).
        num_tags: KAMCL: size of the tag vocabulary (0: no knowledge-aided parts: no tag fusion, no concept heads).
        backbone: a backbone to compute the feature levels from images (fine-tuning); ``None``: batches carry them.
        text_encoder: a text encoder with ``token_states`` (fine-tuning); ``None``: batches carry the states.
        graph_width: FISVL: width of the graph nodes and the local branch.
    """

    def __init__(self, method: str, channels: dict[str, int], text_dim: int, embed_dim: int = 512,
                 local_branch: bool = True, fgis_steps: int = 2, hierarchical: bool = True, num_tags: int = 0,
                 backbone: nn.Module | None = None, text_encoder: nn.Module | None = None, graph_width: int = 128):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown retrieval method {method!r}; use one of {', '.join(METHODS)}")
        self.method, self.embed_dim = method, int(embed_dim)
        self.backbone, self.text_encoder = backbone, text_encoder
        d = self.embed_dim
        self.num_tags = int(num_tags) if method == "kamcl" else 0
        if method in ("vsepp", "clip"):
            self.img_head = nn.Linear(channels["pooled"], d)
            self.txt_head = nn.Linear(text_dim, d)
        elif method == "fisvl":
            # The graph runs at a narrower width than the embedding (its cost grows with the square of the width;
            # at 512 it took 30 s per UC Merced epoch on 2 CPU cores); only the refined CLS node is lifted to D.
            w = graph_width
            self.cls = nn.Linear(channels["pooled"], d)
            self.cls_node = nn.Linear(channels["pooled"], w)
            self.global_node = nn.Linear(channels["mid"], w)
            self.local = SceneFineGrainedBranch(channels["low"], w) if local_branch else None
            self.token_proj = nn.Linear(channels["high"], w)
            self.token_grid = 4  # the stride-32 map (7 x 7 at 224 px) pooled to 16 graph nodes
            self.fgis = FGIS(w, fgis_steps) if fgis_steps > 0 else None
            self.refine = nn.Sequential(nn.Linear(w, d), nn.ReLU(), nn.Linear(d, d))
            self.txt_head = nn.Linear(text_dim, d)
        else:  # kamcl
            self.aggregator = HierarchicalAggregator(channels, d) if hierarchical else None
            self.img_head = None if hierarchical else nn.Linear(channels["pooled"], d)
            self.txt_proj = nn.Linear(text_dim, d)
            self.txt_pool = GPO()
            if self.num_tags:
                self.tag_fuse = nn.Linear(self.num_tags, d)
                self.img_concepts = nn.Linear(d, self.num_tags)
                self.txt_concepts = nn.Linear(d, self.num_tags)
                self.tag_embed = nn.Linear(self.num_tags, d, bias=False)

    # --- inputs -----------------------------------------------------------------------------------------------
    def _levels(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "levels" in batch:
            return {k: v.float() for k, v in batch["levels"].items()}
        if self.backbone is None:
            raise KeyError("the batch has no 'levels' and the model has no backbone to compute them from 'image'")
        return feature_levels(self.backbone, batch["image"])

    def _states(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "states" in batch:
            return batch["states"].float(), batch["mask"].bool()
        if self.text_encoder is None:
            raise KeyError("the batch has no 'states' and the model has no text encoder to compute them from 'tokens'")
        tok = batch["tokens"]
        return self.text_encoder.token_states(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"].bool()

    # --- heads ------------------------------------------------------------------------------------------------
    def image_head(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": [B, D]}`` (plus ``"image_concepts"`` logits for KAMCL with tags) from feature levels."""
        if self.method in ("vsepp", "clip"):
            return {"image": F.normalize(self.img_head(levels["pooled"]), dim=1)}
        if self.method == "fisvl":
            cls = self.cls(levels["pooled"])
            nodes = [self.cls_node(levels["pooled"]), self.global_node(levels["mid"].mean(dim=(2, 3)))]
            if self.local is not None:
                nodes.append(self.local(levels["low"]))
            if self.fgis is not None:
                high = F.adaptive_avg_pool2d(levels["high"], self.token_grid)
                graph = torch.cat([torch.stack(nodes, 1), self.token_proj(_tokens(high))], 1)
                refined = self.fgis(graph)[:, 0]
            else:
                refined = torch.stack(nodes, 1).mean(1)
            return {"image": F.normalize(cls + self.refine(refined), dim=1)}
        latent = self.aggregator(levels) if self.aggregator is not None else self.img_head(levels["pooled"])
        return self._with_concepts(latent, self.img_concepts if self.num_tags else None, "image")

    def text_head(self, states: torch.Tensor, mask: torch.Tensor,
                  tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"text": [B, D]}`` (plus ``"text_concepts"`` for KAMCL with tags) from token states and their mask.

        ``tags`` ``[B, K]``: the caption's own tag words (multi-hot), fused into KAMCL's text vector.
        """
        if self.method != "kamcl":
            return {"text": F.normalize(self.txt_head(masked_mean(states, mask)), dim=1)}
        latent = self.txt_pool(self.txt_proj(states), mask)
        if self.num_tags:
            if tags is None:
                raise KeyError("KAMCL with a tag vocabulary needs each caption's 'tags' vector")
            latent = latent + self.tag_fuse(tags.float())
        return self._with_concepts(latent, self.txt_concepts if self.num_tags else None, "text")

    def _with_concepts(self, latent: torch.Tensor, head: nn.Module | None, key: str) -> dict[str, torch.Tensor]:
        if head is None:
            return {key: F.normalize(latent, dim=1)}
        logits = head(latent)
        return {key: F.normalize(latent + self.tag_embed(torch.sigmoid(logits)), dim=1), f"{key}_concepts": logits}

    # --- public API -------------------------------------------------------------------------------------------
    def encode_image(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalised image embeddings ``[B, D]`` of a batch with ``levels`` (or ``image``)."""
        return self.image_head(self._levels(batch))["image"]

    def encode_text(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalised caption embeddings ``[B, D]`` of a batch with ``states``/``mask`` (or ``tokens``)."""
        states, mask = self._states(batch)
        return self.text_head(states, mask, batch.get("tags"))["text"]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Both sides of a batch of pairs: ``{"image", "text"}`` ``[B, D]`` (+ concept logits for KAMCL)."""
        states, mask = self._states(batch)
        return {**self.image_head(self._levels(batch)), **self.text_head(states, mask, batch.get("tags"))}


def make_backbone(name: str, pretrained: bool = True, path: str | None = None) -> nn.Module:
    """A registered backbone by name.

    ``efficientnet_lite0`` (ImageNet weights when ``pretrained``), ``small_cnn``, or ``hf_backbone`` (a local Hugging
    Face checkpoint folder ``path``).
    """
    if name == "hf_backbone":
        if not path:
            raise ValueError("the hf_backbone needs the checkpoint folder (--backbone-path)")
        return create_model(name, path=path)
    return create_model(name, pretrained=pretrained) if name == "efficientnet_lite0" else create_model(name)


def make_text_encoder(name: str, freeze: bool = True, path: str | None = None, vocab_size: int | None = None,
                      max_length: int = 64) -> nn.Module:
    """A text encoder with ``token_states`` by name.

    ``minilm`` (offline), ``hf_text`` (a local checkpoint folder ``path``) or ``gru_text`` (``vocab_size`` words).
    """
    if name == "minilm":
        return create_model("minilm", freeze=freeze, max_length=max_length)
    if name == "hf_text":
        if not path:
            raise ValueError("the hf_text encoder needs the checkpoint folder (--text-path)")
        return create_model("hf_text", path=path, freeze=freeze, max_length=max_length)
    if name == "gru_text":
        if vocab_size is None:
            raise ValueError("the GRU text encoder needs vocab_size")
        return create_model("gru_text", vocab_size=vocab_size)
    raise ValueError(f"unknown text encoder {name!r}; use minilm, hf_text or gru_text")


@register_model
def retrieval_net(method: str = "clip", channels: dict[str, int] | None = None, text_dim: int = 384,
                  embed_dim: int = 512, local_branch: bool = True, fgis_steps: int = 2, hierarchical: bool = True,
                  num_tags: int = 0, backbone: str | None = None, pretrained: bool = True,
                  text_encoder: str | None = None, freeze_text: bool = True,
                  vocab_size: int | None = None, backbone_path: str | None = None,
                  text_path: str | None = None) -> RetrievalNet:
    """A retrieval method's model (``vsepp``, ``clip``, ``fisvl``, ``kamcl``; see :class:`RetrievalNet`).

    Args:
        method: the method.
        channels: feature-level channels when the batches carry cached levels (``None``: from ``backbone``).
        text_dim: token-state width when the batches carry cached states (MiniLM: 384).
        embed_dim: joint embedding size.
        local_branch: FISVL's multi-scale local node (ablation: off).
        fgis_steps: FISVL's graph steps (0: off).
        hierarchical: KAMCL's hierarchical aggregator (off: a projection of the pooled vector).
        num_tags: KAMCL's tag vocabulary size (0: no knowledge-aided parts).
        backbone: registered backbone to fine-tune inside the model (``None``: cached levels).
        pretrained: load the backbone's ImageNet weights.
        text_encoder: ``minilm``, ``hf_text`` or ``gru_text`` inside the model (``None``: cached states).
        freeze_text: keep the pretrained text transformer fixed.
        vocab_size: vocabulary size of ``gru_text``.
        backbone_path: checkpoint folder of ``hf_backbone``.
        text_path: checkpoint folder of ``hf_text``.
    """
    bb = None
    if backbone is not None:
        bb = make_backbone(backbone, pretrained, backbone_path)
        channels = level_channels(bb)
    if channels is None:
        raise ValueError("pass the feature-level channels of the cached features, or a backbone")
    txt = None
    if text_encoder is not None:
        txt = make_text_encoder(text_encoder, freeze_text, text_path, vocab_size)
        text_dim = txt.state_dim
    return RetrievalNet(method, channels, text_dim, embed_dim, local_branch, fgis_steps, hierarchical, num_tags,
                        backbone=bb, text_encoder=txt)
