"""Registries of named builders: models, datasets and training tasks.

A builder is registered once (``@register_model def pha_v3(**kw)``) and created by name
(``create_model("pha_v3", embed_dim=128)``), so every model version and every task is one greppable function and
notebooks never import a class directly. Names can also be written ``"package.module:name"``: the module is imported
first (it registers its builders on import), which is how users plug their own tasks into ``rswb train``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
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

    Use as ``@register_task("name")``, ``@register_task()`` or bare ``@register_task`` (the function's name).
    """
    def checked(builder: Callable[..., Any]) -> Callable[..., Any]:
        # Task options must not shadow training options: one flag, one meaning, one line in --help.
        from rswb.engine.launch import check_option_names, task_config_class

        check_option_names(task_config_class(builder), f"task {getattr(builder, '__name__', builder)!r}")
        return builder

    if callable(name):  # bare @register_task: `name` is the builder itself
        return register("task")(checked(name))
    deco = register("task", name)
    return lambda builder: deco(checked(builder))


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
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown {kind} {name!r}.{hint} Registered: {', '.join(sorted(registry)) or '(none)'}")
    return registry[name]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build ``name`` from the ``kind`` registry with keyword overrides."""
    return get(kind, name)(**kwargs)


def create_model(name: str, **overrides: Any) -> Any:
    """The one way to build a model: ``create_model("pha_v3", num_classes=8)``."""
    return create("model", name, **overrides)


def create_loss(name: str, **options: Any) -> Any:
    """A method's loss module by name: ``create_loss("fisvl", margin=0.2)``."""
    return create("loss", name, **options)


def list_names(kind: str, pattern: str = "*") -> list[str]:
    """Sorted registered names of ``kind`` matching a shell-style ``pattern``."""
    return sorted(n for n in _check_kind(kind) if fnmatch.fnmatch(n, pattern))


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching ``pattern`` (e.g. ``"pha_v*"``)."""
    return list_names("model", pattern)
