"""Dataclass configs: one help string per field, YAML load/save, and ``--key value`` overrides.

Every config is a dataclass whose fields carry their documentation in ``metadata["help"]`` (declared with
:func:`option`), so the CLI can print them and a run folder's ``config.yaml`` is the resolved dataclass, not whatever
the user happened to type. :func:`from_dict` refuses unknown keys (a typo must not be silently ignored) and converts
values to the declared field types.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "ImageTaskOptions",
    "TrainConfig",
    "allowed",
    "apply_overrides",
    "check_option_names",
    "check_used_options",
    "drop_unused",
    "field_help",
    "from_dict",
    "method_fields",
    "option",
    "parse_cli_overrides",
    "task_config_class",
    "to_dict",
    "used_dict",
    "validate",
]


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,  # noqa: A002
           low_open: bool = False, high_open: bool = False, choices: Sequence[Any] | None = None,
           folder: bool = False, methods: Sequence[str] | None = None) -> Any:
    """A dataclass field with a default, its one-line documentation and the values it allows.

    Args:
        default: the default value (mutable defaults are copied per instance).
        help: one line for ``--help`` (mirrors argparse's keyword).
        low: lower bound of a numeric option (``None``: unbounded), checked by :func:`validate`.
        high: upper bound (``None``: unbounded).
        low_open: exclude the lower bound itself (``low=0, low_open=True``: strictly positive).
        high_open: exclude the upper bound itself.
        choices: the allowed values of an option with a fixed set.
        folder: a path that must be a folder: an existing file there is refused by :func:`validate` (a missing
            path is left to the data layer, whose error says what the folder should hold).
        methods: the values of the config's ``SELECTOR`` field (e.g. ``method``) that use this option (``None``:
            every one). Setting it for another is an error (:func:`check_used_options`), and a run does not record it
            (:func:`used_dict`).
    """
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "choices": tuple(choices) if choices is not None else None, "folder": folder,
            "methods": tuple(methods) if methods is not None else None}
    if isinstance(default, (list, dict, set)):
        # A deep copy: nested lists/dicts must not be shared between instances either.
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def allowed(f: dataclasses.Field) -> str:
    """The values a field allows, in words (``"an integer >= 1"``, ``"one of adamw, adam, sgd"``); ``""`` if any."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(map(str, m["choices"]))
    parts = []
    if m.get("low") is not None:
        parts.append(f"{'>' if m['low_open'] else '>='} {m['low']:g}")
    if m.get("high") is not None:
        parts.append(f"{'<' if m['high_open'] else '<='} {m['high']:g}")
    return " and ".join(parts)


def validate(cfg: Any, *, source: str = "options") -> Any:
    """Check every field of a config against the range or choices its :func:`option` declares.

    Then the config's own ``check()`` (cross-field rules) runs, if it has one. Returns ``cfg``.

    Raises:
        ValueError: the first option out of range, naming its flag, the allowed values and the value given.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        # NaN compares False both ways, so a range check alone lets it through (and inf through an open top).
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{source}: {flag} must be a finite number, got {value!r}")
        if f.metadata.get("folder") and value is not None and Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"{source}: {flag} {value} is a file; it must be a folder ({f.metadata['help']})")
        rule = allowed(f)
        if value is None or not rule:
            continue
        m = f.metadata
        ok = value in m["choices"] if m.get("choices") else _in_range(value, m)
        if not ok:
            raise ValueError(f"{source}: {flag} must be {rule}, got {value!r}")
    lr = getattr(cfg, "lr", None)
    if isinstance(lr, float) and lr > 1.0:
        warnings.warn(f"{source}: --lr {lr:g} is far above the usual 1e-5 .. 1e-1; training will most likely diverge "
                      "or stay at chance", stacklevel=2)
    check = getattr(cfg, "check", None)
    if callable(check):
        check()
    return cfg


def _in_range(value: Any, m: Mapping[str, Any]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True  # not numeric: the type check of from_dict already ran
    lo, hi = m.get("low"), m.get("high")
    if lo is not None and (value <= lo if m["low_open"] else value < lo):
        return False
    return not (hi is not None and (value >= hi if m["high_open"] else value > hi))


@dataclasses.dataclass
class TrainConfig:
    """How :func:`rswb.engine.fit` trains: the same fields for every method (saved in every run's ``config.yaml``)."""

    epochs: int = option(10, "number of passes over the training split", low=1)
    batch_size: int = option(64, "global batch size (divided across processes under torchrun)", low=1)
    eval_batch_size: int | None = option(None, "batch size for validation/test (default: 2 x batch_size)", low=1)
    optimizer: str = option("adamw", "adamw | adam | sgd", choices=("adamw", "adam", "sgd"))
    lr: float = option(1e-3, "base learning rate (parameter groups may scale it, e.g. proxies x100)", low=0)
    weight_decay: float = option(1e-4, "decoupled weight decay (adamw) or L2 penalty (adam, sgd)", low=0)
    momentum: float = option(0.9, "SGD momentum (ignored by adam/adamw)", low=0, high=1, high_open=True)
    schedule: str = option("cosine", "learning-rate schedule after warm-up: cosine | linear | step | constant",
                           choices=("cosine", "linear", "step", "constant"))
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs (fractions allowed)", low=0)
    min_lr_ratio: float = option(0.0, "final lr / base lr for cosine and linear schedules", low=0, high=1)
    step_epochs: int = option(30, "step schedule: multiply the lr by step_gamma every this many epochs", low=1)
    step_gamma: float = option(0.1, "step schedule: the factor applied every step_epochs", low=0, low_open=True,
                               high=1)
    grad_clip: float | None = option(None, "clip the global gradient norm to this value (None: no clipping)", low=0,
                                     low_open=True)
    precision: str = option("auto", "auto (bf16/fp16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16",
                            choices=("auto", "fp32", "bf16", "fp16"))
    device: str | None = option(None, "cuda | mps | cpu | cuda:1 ... (None: the best available, cuda > mps > cpu)")
    val_fraction: float = option(0.1, "share of the training split held out for model selection (0: none)", low=0,
                                 high=1, high_open=True)
    monitor: str | None = option(None, "validation metric that selects best.pt (None: the task's default)")
    early_stop_patience: int | None = option(None, "stop after this many evaluations without improvement", low=1)
    eval_every: int = option(1, "validate every this many epochs (and always after the last)", low=1)
    seed: int = option(0, "seed of initialisation, shuffling and the validation split")
    deterministic: bool = option(False, "deterministic kernels (slower; use for reported numbers and resume tests)")
    num_workers: int = option(0, "DataLoader worker processes", low=0)
    drop_last: bool = option(False, "drop the last incomplete training batch")
    progress: bool = option(True, "show tqdm progress bars")


@dataclasses.dataclass
class ImageTaskOptions:
    """The data and image-backbone options the hash and retrieval tasks share (their configs extend this)."""

    data: str | None = option(None, "dataset folder; None: the embedded synthetic data")
    backbone: str = option("efficientnet_lite0", "registered image backbone (the task's --help lists them)")
    pretrained: bool = option(True, "load the backbone's ImageNet weights")
    freeze_backbone: bool = option(True, "train only the new layers on cached frozen backbone features (CPU profile)")
    image_size: int = option(224, "images are resized to this square size", low=8)
    val_share: float = option(0.1, "share of the training images held out for model selection (this task's own "
                              "split; the engine's --val-fraction is not used)", low=0, low_open=True, high=1,
                              high_open=True)
    val_rule: str = option("block", "how the held-out share is drawn: block (the first share of each class's "
                           "numbered training items, shaped like a block test split) | random (a seeded random share, "
                           "the rule of runs made before the block existed)", choices=("block", "random"))
    split_seed: int = option(0, "seed of the held-out share (--val-rule random)")
    cache_dir: str | None = option(None, "feature cache folder (default: $RSWB_CACHE_DIR or ~/.cache/rswb)",
                                   folder=True)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a (possibly nested) dataclass config."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a dataclass instance or a mapping, got {type(cfg).__name__}")


def _unused(cfg: Any) -> set[str]:
    """Fields of ``cfg`` that its ``SELECTOR`` value (e.g. ``method="clip"``) does not use."""
    selector = getattr(type(cfg), "SELECTOR", None)
    if selector is None:
        return set()
    value = getattr(cfg, selector)
    return {f.name for f in dataclasses.fields(cfg)
            if f.metadata.get("methods") is not None and value not in f.metadata["methods"]}


def check_used_options(cfg: Any, given: Iterable[str]) -> None:
    """Refuse options the user set (``given``) that the config's selected method does not use.

    Raises:
        ValueError: the first such option, naming it, the methods that use it and the method selected.
    """
    unused = _unused(cfg)
    for name in given:
        if name in unused:
            f = next(f for f in dataclasses.fields(cfg) if f.name == name)
            selector = type(cfg).SELECTOR
            raise ValueError(f"--{name.replace('_', '-')} is an option of {' and '.join(f.metadata['methods'])}; "
                             f"--{selector} {getattr(cfg, selector)} does not use it")


def used_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` without the options the selected method does not use: what a run records as having run."""
    unused = _unused(cfg)
    return {k: v for k, v in to_dict(cfg).items() if k not in unused}


def drop_unused(cls: type | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the task options that the method they select does not use.

    For recipes shared by every method (a profile sets KAMCL's queue size for all retrieval runs): what the user
    typed is checked by :func:`check_used_options` instead, and refused.
    """
    selector = getattr(cls, "SELECTOR", None) if cls is not None else None
    if selector is None:
        return dict(options)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    method = options.get(selector, fields[selector].default)
    return {k: v for k, v in options.items()
            if k not in fields or fields[k].metadata.get("methods") is None or method in fields[k].metadata["methods"]}


def method_fields(cls: type, method: str) -> list[str]:
    """The fields of config class ``cls`` that only some methods use and ``method`` is one of them."""
    return [f.name for f in dataclasses.fields(cls)
            if f.metadata.get("methods") is not None and method in f.metadata["methods"]]


def task_config_class(builder: Any) -> type | None:
    """The config dataclass a task builder takes (the annotation of its single parameter), or None."""
    params = list(inspect.signature(builder).parameters.values())
    if not params:
        return None
    hint = typing.get_type_hints(builder).get(params[0].name)
    return hint if dataclasses.is_dataclass(hint) else None


def check_option_names(task_cls: type | None, where: str = "") -> None:
    """Refuse a task config that declares an option with the name of a training option (they would collide).

    Raises:
        TypeError: the shared names (when the task is first used by :mod:`rswb.engine.launch`).
    """
    if task_cls is None:
        return
    shared = sorted(set(field_help(task_cls)) & set(field_help(TrainConfig)))
    if shared:
        raise TypeError(f"{where or task_cls.__name__}: task option(s) {', '.join(shared)} have the name of a "
                        "training option; give them a task-specific name")


def field_help(cls: type) -> dict[str, str]:
    """``{field name: help text}`` of a config dataclass (in declaration order)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


_NULLS = ("none", "null", "~")  # command-line spellings of None
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?(inf|infinity|nan)", re.IGNORECASE)


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """Convert ``value`` to the annotated type ``hint`` (str/int/float/bool/None/list/tuple and their unions)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NULLS)):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name, source)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{source}: {name}={value!r} fits none of {hint}")
    if hint is Any:
        return value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: {name} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and args != ((),):
            # tuple[int, str]: one type per position, and exactly that many items.
            if len(value) != len(args):
                raise ValueError(f"{source}: {name} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, name, source) for v, a in zip(value, args))
        item = args[0] if args and args[0] is not Ellipsis and args != ((),) else Any
        items = [_coerce(v, item, name, source) for v in value]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{source}: {name} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {name} must be an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{source}: {name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {name} must be a number, got {value!r}") from None
    if hint is str:
        if value is None or isinstance(value, (dict, list, tuple, set)):
            raise ValueError(f"{source}: {name} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, source: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``, converting types; unknown keys raise with the valid ones listed.

    Args:
        cls: a config dataclass.
        data: field values (missing fields keep their defaults).
        source: where the values came from, for error messages (e.g. the YAML file's path).

    Raises:
        ValueError: an unknown key or a value that does not fit its field's type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"{source}: unknown option(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(names)}"
        )
    return cls(**{k: _coerce(v, hints[k], k, source) for k, v in data.items()})


def apply_overrides(cfg: T, overrides: Mapping[str, Any], *, source: str = "overrides") -> T:
    """A copy of ``cfg`` with ``overrides`` applied (type conversion and unknown-key check as in :func:`from_dict`)."""
    merged = {**to_dict(cfg), **overrides}
    return from_dict(type(cfg), merged, source=source)


def parse_cli_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--lr", "0.01", "--no-progress", "--data=x", "--deterministic"]`` into a dict of YAML-parsed values.

    ``--flag`` alone means ``True``, ``--no-flag`` means ``False``; dashes in names become underscores. Values are
    parsed as YAML scalars (``1e-3`` -> float, ``none`` -> None), then converted to the field types by
    :func:`from_dict`.

    Raises:
        ValueError: a token that is not an option.
    """
    out: dict[str, Any] = {}
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ValueError(f"unexpected argument {tok!r}: options are written --name value")
        key, eq, val = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not key:
            raise ValueError(f"unexpected argument {tok!r}: options are written --name value")
        if eq:
            out[key] = _yaml_scalar(val)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[key] = _yaml_scalar(tokens[i + 1])
            i += 1
        elif key.startswith("no_"):
            out[key[3:]] = False
        else:
            out[key] = True
        i += 1
    return out


def _yaml_scalar(text: str) -> Any:
    """A command-line value: ``none`` -> None, numbers (``1e-3`` too) -> int/float, ``[..]`` -> list, else YAML."""
    s = text.strip()
    if s.lower() in _NULLS:
        return None
    if _INT.fullmatch(s):
        return int(s)  # decimal, unlike YAML 1.1 which reads "010" as octal 8
    if _FLOAT.fullmatch(s):
        return float(s)  # YAML 1.1 reads "1e-3" (no dot) as a string
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)):
        # Only explicit flow collections ("[1]", "{a: 1}") are collections; "a: b" stays the text it was.
        return value if s[:1] in "[{" else text
    return value
