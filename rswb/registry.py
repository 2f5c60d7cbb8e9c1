"""Registries of named builders: models, datasets and training tasks.

A builder is registered once (``@register_model def pha_v3(**kw)``) and created by name
(``create_model("pha_v3", embed_dim=128)``), so every model version and every task is one greppable function and
notebooks never import a class directly.

Names resolve only among installed code, never a path or a module named by a file:

* rswb's own builders (registered when :mod:`rswb.models`, :mod:`rswb.losses` or :mod:`rswb.tasks` is imported);
* third-party builders declared as entry points of an installed package, in the groups ``rswb.models``,
  ``rswb.losses``, ``rswb.datasets`` and ``rswb.tasks`` (``[project.entry-points."rswb.tasks"] mytask =
  "mypkg.tasks:mytask"``): loaded the first time their name is asked for;
* builders registered by a module the user imported.

On the command line a task may also be written ``"package.module:name"`` (the user typed it: the module is imported
from the interpreter's path, never the working directory); names read from files (a run's ``config.yaml``, a model
or loss option) never import anything.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "create",
    "create_loss",
    "create_model",
    "get",
    "list_names",
    "list_models",
    "register",
    "register_dataset",
    "register_loss",
    "register_model",
    "register_task",
]

KINDS = ("model", "loss", "dataset", "task")
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
# The packages whose import registers rswb's own builders of each kind (imported on the first unknown name).
_BUILT_IN = {"model": "rswb.models", "loss": "rswb.losses", "task": "rswb.tasks"}
# Entry-point group of each kind: how an installed third-party package offers its builders.
ENTRY_POINT_GROUPS = {"model": "rswb.models", "loss": "rswb.losses", "dataset": "rswb.datasets", "task": "rswb.tasks"}


def _check_kind(kind: str) -> dict[str, Callable[..., Any]]:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry {kind!r}; choose one of {', '.join(KINDS)}")
    return _REGISTRY[kind]


def register(kind: str, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a builder under ``name`` (default: the function's name) in the ``kind`` registry.

    Re-registering the same function (e.g. a module reloaded in a notebook) is allowed; a different builder under a
    taken name raises, so two versions never silently shadow each other.
    """
    registry = _check_kind(kind)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__
        old = registry.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"{kind} {key!r} is already registered by {old.__module__}.{old.__qualname__}")
        registry[key] = fn
        return fn

    return decorator


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a model builder under its function name."""
    return register("model")(fn)


def register_loss(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a loss builder under its function name (a method's loss, named as its model)."""
    return register("loss")(fn)


def register_dataset(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a dataset builder under its function name."""
    return register("dataset")(fn)


def register_task(name: str | Callable[..., Any] | None = None) -> Any:
    """Register a task builder (used by ``rswb train NAME``); see :mod:`rswb.engine.task`.

    Use as ``@register_task("name")``, ``@register_task()`` or bare ``@register_task`` (the function's name). The
    registry imports nothing from rswb: that a task's options do not shadow training options is checked when the task
    is used (:func:`rswb.engine.launch.task_builder`).
    """
    if callable(name):  # bare @register_task: `name` is the builder itself
        return register("task")(name)
    return register("task", name)


def _from_entry_points(kind: str, only: str | None = None) -> None:
    """Register the builders installed packages declare as entry points of ``kind`` (only ``only``, if given)."""
    registry = _REGISTRY[kind]
    for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]):
        if (only is not None and ep.name != only) or ep.name in registry:
            continue
        try:
            builder = ep.load()  # importing the package may register it by its decorator already
        except Exception as err:  # noqa: BLE001 - a broken third-party package must not break rswb's own names
            raise KeyError(f"{kind} {ep.name!r}: the entry point {ep.value!r} of an installed package cannot be "
                           f"loaded ({type(err).__name__}: {err})") from None
        if ep.name not in registry:
            register(kind, ep.name)(builder)


def get(kind: str, name: str, allow_import: bool = True) -> Callable[..., Any]:
    """The builder registered as ``name``; ``"module:name"`` imports ``module`` first (when ``allow_import``).

    The module is looked up on the interpreter's own path (installed packages, or what ``python -m`` put there): the
    working directory is never added, so a ``.py`` file that happens to sit beside a run folder is never imported.

    Args:
        kind: ``"model"``, ``"task"``, ...
        name: a registered name, or ``"module:name"``.
        allow_import: ``False`` for names read from files (a run's ``config.yaml``): ``"module:name"`` then resolves
            only when ``name`` is already registered (the user imported its module), and nothing is imported.

    Raises:
        KeyError: unknown name (the message lists close matches and all names), or a ``"module:name"`` that would
            need an import where none is allowed.
    """
    registry = _check_kind(kind)
    if ":" in name:
        module, _, name = name.partition(":")
        if not allow_import:
            if name in registry:
                return registry[name]
            raise KeyError(f"{kind} {module}:{name} names a module to import, and names read from a file never make "
                           f"rswb import code: import {module!r} yourself (or install it as a package) so that "
                           f"{name!r} is registered, then try again")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise KeyError(f"cannot import {module!r} to find {kind} {name!r}: {err}") from None
    if name not in registry and kind in _BUILT_IN:
        importlib.import_module(_BUILT_IN[kind])  # registers rswb's own builders on first use
    if name not in registry:
        _from_entry_points(kind, name)
    if name not in registry:
        _from_entry_points(kind)  # every installed name, for the list in the message
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown {kind} {name!r}.{hint} Registered: {', '.join(sorted(registry)) or '(none)'}")
    return registry[name]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build ``name`` from the ``kind`` registry with keyword overrides.

    The name comes from options that may have been read from a file, so it never imports a module: a
    ``"module:name"`` resolves only when that module was imported (or is an installed entry point).
    """
    return get(kind, name, allow_import=False)(**kwargs)


def create_model(name: str, **overrides: Any) -> Any:
    """The one way to build a model: ``create_model("pha_v3", num_classes=8)``."""
    return create("model", name, **overrides)


def create_loss(name: str, **options: Any) -> Any:
    """A method's loss module by name: ``create_loss("fisvl", margin=0.2)``."""
    return create("loss", name, **options)


def list_names(kind: str, pattern: str = "*") -> list[str]:
    """Sorted registered names of ``kind`` matching a shell-style ``pattern`` (rswb's own and installed ones)."""
    names = _check_kind(kind)
    if kind in _BUILT_IN:
        importlib.import_module(_BUILT_IN[kind])  # registers rswb's own builders
    _from_entry_points(kind)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching ``pattern`` (e.g. ``"pha_v*"``)."""
    return list_names("model", pattern)
