"""Image-text retrieval models: what every method shares, and :func:`retrieval_net`, which builds one by name.

``encode_image`` and ``encode_text`` map images and captions to L2-normalised embeddings of one size, so the
similarity of an image and a caption is a dot product and :mod:`rswb.metrics.retrieval` scores the similarity matrix.

Every method is a :class:`RetrievalNet` subclass in a module of its own, registered under the method's name:
:mod:`rswb.models.dual` (``vsepp``, ``clip``: the baselines), :mod:`rswb.models.fisvl` (``fisvl``) and
:mod:`rswb.models.kamcl` (``kamcl``). The image side reads a backbone's feature levels (:func:`feature_levels`:
``low`` stride 8, ``mid`` stride 16, ``high`` stride 32 maps and the ``pooled`` vector); the text side reads token
states ``[B, L, D_t]`` with a padding mask. Both come from a frozen encoder's cache (the CPU profile: only the heads
train) or from a backbone / text encoder inside the model (fine-tuning). A model's forward returns
``{"image_emb", "text_emb"}`` (plus KAMCL's concept logits), the arguments its loss (:mod:`rswb.losses`) takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rswb.models.backbones import make_backbone
from rswb.registry import create_model, get, register_model

__all__ = [
    "METHODS", "RetrievalNet", "build_encoders", "feature_levels", "level_channels", "level_names",
    "make_text_encoder", "map_tokens", "register_retrieval_method", "retrieval_methods", "retrieval_net",
]

METHODS = ("vsepp", "clip", "fisvl", "kamcl")
"""The built-in retrieval methods (:func:`retrieval_methods` lists these and any added since)."""

_METHODS: list[str] = []  # every registered retrieval method, in registration order


def register_retrieval_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a retrieval method: its model builder under the function's name, and that name as a ``--method``.

    The method's loss is the loss builder registered under the same name (:func:`rswb.registry.register_loss`). The
    model builder takes ``channels``, ``text_dim``, ``embed_dim``, the method's own switches and the encoder options
    of :func:`build_encoders` (as ``**encoders``), and returns a :class:`RetrievalNet`; its loss builder takes the
    method's own options (those marked ``methods=`` with its name in the task config, none for a new method) and
    returns a module mapping the model's outputs and the batch to named ``*_loss`` terms. ``docs/architecture.md``
    has the checklist.
    """
    register_model(fn)
    if fn.__name__ not in _METHODS:
        _METHODS.append(fn.__name__)
    return fn


def retrieval_methods() -> tuple[str, ...]:
    """The retrieval methods ``--method`` accepts: the built-in ones, then any registered since (or installed)."""
    import rswb.models  # noqa: F401  (registers the built-in methods)

    return tuple(_METHODS)


def level_names(backbone: nn.Module) -> dict[str, str]:
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
    names = level_names(backbone)
    chans = {f.name: f.channels for f in backbone.feature_info}
    return {**{k: chans[v] for k, v in names.items()}, "pooled": int(backbone.num_features)}


def feature_levels(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature levels the retrieval heads read, from one backbone pass over images ``[B, 3, H, W]`` in [0, 1].

    Returns:
        ``low`` ``[B, C8, H/8, W/8]``, ``mid`` (stride 16), ``high`` (stride 32) and ``pooled`` ``[B, F]``.
    """
    out = backbone.forward_features(images)
    return {**{k: out[v] for k, v in level_names(backbone).items()}, "pooled": out["pooled"]}


def map_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` map -> ``[B, H*W, C]`` tokens."""
    return x.flatten(2).transpose(1, 2)


class RetrievalNet(nn.Module):
    """What every retrieval method shares: its inputs (cached or computed), and the encode / forward API.

    A method subclass builds its heads in ``__init__`` (after calling this one, so the encoders come first) and
    implements :meth:`image_head`, :meth:`text_head` and :meth:`pooled_projection`.

    Args:
        embed_dim: size of the joint embedding space.
        backbone: a backbone to compute the feature levels from images (fine-tuning); ``None``: batches carry them.
        text_encoder: a text encoder with ``token_states`` (fine-tuning); ``None``: batches carry the states.
    """

    method: str = ""

    def __init__(self, embed_dim: int = 512, backbone: nn.Module | None = None,
                 text_encoder: nn.Module | None = None):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.backbone, self.text_encoder = backbone, text_encoder

    # --- inputs -----------------------------------------------------------------------------------------------
    def _levels(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "levels" in batch:
            return {k: v.float() for k, v in batch["levels"].items()}
        if self.backbone is None:
            raise KeyError("the batch has no 'levels' and the model has no backbone to compute them from 'image'")
        if "cut" in batch:  # partial fine-tuning: the backbone continues from its cached cut
            out = self.backbone.forward_from(batch["cut"], self.backbone.partial_cut, batch.get("taps"))
            return {**{k: out[v] for k, v in level_names(self.backbone).items()}, "pooled": out["pooled"]}
        return feature_levels(self.backbone, batch["image"])

    def _states(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "states" in batch:
            return batch["states"].float(), batch["mask"].bool()
        if self.text_encoder is None:
            raise KeyError("the batch has no 'states' and the model has no text encoder to compute them from 'tokens'")
        if "hidden" in batch:  # partial fine-tuning: the last layers continue from the cached hidden states
            mask = batch["mask"].bool()
            enc = self.text_encoder
            return enc.token_states_from(batch["hidden"].float(), mask.long(), enc.partial_layer), mask
        tok = batch["tokens"]
        return self.text_encoder.token_states(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"].bool()

    # --- the method's heads -----------------------------------------------------------------------------------
    def image_head(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image_emb": [B, D]}`` (plus the method's extra outputs) from feature levels."""
        raise NotImplementedError

    def text_head(self, states: torch.Tensor, mask: torch.Tensor,
                  tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"text_emb": [B, D]}`` (plus the method's extra outputs) from token states and their mask."""
        raise NotImplementedError

    def pooled_projection(self) -> nn.Module:
        """The linear map the image embedding applies to the pooled backbone vector (see ``rswb.infer``)."""
        raise NotImplementedError

    # --- public API -------------------------------------------------------------------------------------------
    def encode_image(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalised image embeddings ``[B, D]`` of a batch with ``levels`` (or ``image``)."""
        return self.image_head(self._levels(batch))["image_emb"]

    def encode_text(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalised caption embeddings ``[B, D]`` of a batch with ``states``/``mask`` (or ``tokens``)."""
        states, mask = self._states(batch)
        return self.text_head(states, mask, batch.get("tags"))["text_emb"]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Both sides of a batch of pairs: ``{"image_emb", "text_emb"}`` ``[B, D]`` (+ KAMCL's concept logits)."""
        states, mask = self._states(batch)
        return {**self.image_head(self._levels(batch)), **self.text_head(states, mask, batch.get("tags"))}


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


def build_encoders(channels: dict[str, int] | None, text_dim: int, backbone: str | None = None,
                   pretrained: bool = True, backbone_path: str | None = None, text_encoder: str | None = None,
                   freeze_text: bool = True, vocab_size: int | None = None, text_path: str | None = None,
                   train_from: str | None = None, text_train_last: int = 0,
                   ) -> tuple[nn.Module | None, nn.Module | None, dict[str, int], int]:
    """The encoders a method model holds inside (none: cached inputs) and the input sizes of its heads.

    Partial fine-tuning: ``train_from`` freezes the backbone's pieces before that cut (batches then carry their
    cached output, ``"cut"``) and its batch-norm statistics; ``text_train_last`` trains only the text transformer's
    last N layers (batches carry the cached hidden states entering them, ``"hidden"``).

    Returns:
        ``(backbone or None, text encoder or None, feature-level channels, token-state width)``; a backbone's
        channels and a text encoder's width replace the given ones.

    Raises:
        ValueError: neither channels nor a backbone.
    """
    bb = None
    if backbone is not None:
        bb = make_backbone(backbone, pretrained, backbone_path)
        channels = level_channels(bb)
        if train_from is not None:
            bb.fine_tune_from(train_from)
    if channels is None:
        raise ValueError("pass the feature-level channels of the cached features, or a backbone")
    txt = None
    if text_encoder is not None:
        txt = make_text_encoder(text_encoder, freeze_text and not text_train_last, text_path, vocab_size)
        text_dim = txt.state_dim
        txt.partial_layer = None
        if text_train_last:
            txt.train_last(text_train_last)
            txt.partial_layer = txt.num_layers - text_train_last
    return bb, txt, channels, text_dim


@register_model
def retrieval_net(method: str = "clip", **options: Any) -> RetrievalNet:
    """The model of retrieval method ``method`` (one of :func:`retrieval_methods`).

    ``options`` are exactly what that builder takes: channels, text_dim, embed_dim, the method's own switches and the
    encoder options of :func:`build_encoders`.

    Raises:
        ValueError: an unknown method, or an option the method does not take (e.g. ``fgis_steps`` for ``clip``):
            nothing is dropped silently.
    """
    if method not in retrieval_methods():
        raise ValueError(f"unknown retrieval method {method!r}; use one of {', '.join(retrieval_methods())}")
    builder = get("model", method)
    params = inspect.signature(builder).parameters
    takes = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # the encoder options, passed to build_encoders
        takes |= set(inspect.signature(build_encoders).parameters) - {"channels", "text_dim"}
    extra = sorted(set(options) - takes)
    if extra:
        raise ValueError(f"retrieval method {method} does not take {', '.join(extra)}; it takes "
                         f"{', '.join(sorted(takes))}")
    return builder(**options)
