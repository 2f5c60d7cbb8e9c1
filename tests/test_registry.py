"""rswb.registry: register / create / list, name clashes, suggestions and the ``"module:name"`` import form."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rswb import registry
from rswb.registry import (
    create,
    create_model,
    get,
    list_models,
    list_names,
    register,
    register_dataset,
    register_model,
    register_task,
)


@pytest.fixture
def uid():
    """A unique suffix; every name registered with it is removed from all registries after the test."""
    suffix = uuid.uuid4().hex[:10]
    yield suffix
    for table in registry._REGISTRY.values():
        for name in [n for n in table if suffix in n]:
            del table[name]


def test_register_create_and_list(uid):
    @register("model", f"net_{uid}_v1")
    def build_v1(width=4, depth=2):
        return {"width": width, "depth": depth}

    @register("model", f"net_{uid}_v2")
    def build_v2(**kw):
        return ("v2", kw)

    assert get("model", f"net_{uid}_v1") is build_v1
    assert create("model", f"net_{uid}_v1", width=8) == {"width": 8, "depth": 2}
    assert create_model(f"net_{uid}_v2", a=1) == ("v2", {"a": 1})
    assert list_models(f"net_{uid}_v*") == [f"net_{uid}_v1", f"net_{uid}_v2"]
    assert list_names("model", f"net_{uid}_v2") == [f"net_{uid}_v2"]
    assert list_names("model", f"*{uid}*1") == [f"net_{uid}_v1"]
    assert list_names("dataset", f"*{uid}*") == []  # registries are separate
    everything = list_models()
    assert everything == sorted(everything) and f"net_{uid}_v1" in everything


def test_decorators_register_under_function_name(uid):
    ns: dict = {}
    exec(  # functions whose __name__ carries the unique suffix
        textwrap.dedent(f"""
        def model_{uid}(): return "m"
        def data_{uid}(): return "d"
        def task_{uid}(): return "t"
        def bare_{uid}(): return "b"
        """),
        ns,
    )
    assert register_model(ns[f"model_{uid}"]) is ns[f"model_{uid}"]  # the decorator returns the function
    register_dataset(ns[f"data_{uid}"])
    register_task()(ns[f"task_{uid}"])
    assert register_task(ns[f"bare_{uid}"]) is ns[f"bare_{uid}"]  # bare @register_task
    assert create_model(f"model_{uid}") == "m"
    assert create("dataset", f"data_{uid}") == "d"
    assert create("task", f"task_{uid}") == "t"
    assert create("task", f"bare_{uid}") == "b"
    assert list_names("task", f"*{uid}") == [f"bare_{uid}", f"task_{uid}"]


def test_register_task_with_name(uid):
    @register_task(f"my_task_{uid}")
    def builder(cfg=None):
        return cfg

    assert get("task", f"my_task_{uid}") is builder
    assert create("task", f"my_task_{uid}", cfg=3) == 3


def test_reregistering_same_function_is_allowed(uid):
    def build():
        return 1

    register("model", f"same_{uid}")(build)
    register("model", f"same_{uid}")(build)
    assert get("model", f"same_{uid}") is build


def test_reloaded_function_replaces_old_one(uid):
    """A module re-executed in a notebook defines a new function object with the same module and qualname."""
    first: dict = {"__name__": f"mod_{uid}"}
    second: dict = {"__name__": f"mod_{uid}"}
    exec(f"def reloadable_{uid}():\n    return 1\n", first)
    exec(f"def reloadable_{uid}():\n    return 2\n", second)
    register_model(first[f"reloadable_{uid}"])
    register_model(second[f"reloadable_{uid}"])
    assert get("model", f"reloadable_{uid}") is second[f"reloadable_{uid}"]
    assert create_model(f"reloadable_{uid}") == 2


def test_different_function_under_taken_name_raises(uid):
    def first():
        return 1

    def second():
        return 2

    register("model", f"taken_{uid}")(first)
    with pytest.raises(ValueError, match=rf"taken_{uid}.*already registered.*first"):
        register("model", f"taken_{uid}")(second)
    assert get("model", f"taken_{uid}") is first  # the original stays
    # The same name in another registry is independent.
    register("dataset", f"taken_{uid}")(second)
    assert get("dataset", f"taken_{uid}") is second


def test_unknown_name_suggests_close_matches(uid):
    register("model", f"resnet_{uid}")(lambda: None)
    register("model", f"vitnet_{uid}")(lambda **kw: None)
    with pytest.raises(KeyError) as info:
        get("model", f"resnt_{uid}")
    msg = str(info.value)
    assert f"unknown model 'resnt_{uid}'" in msg
    assert f"Did you mean resnet_{uid}" in msg
    assert f"vitnet_{uid}" in msg.split("Registered:")[1]  # all names listed
    with pytest.raises(KeyError) as info:
        create_model(f"zzzzzzzzzzzzzzzz_{uid}_qqqqqqqqqqqq")
    assert "Did you mean" not in str(info.value)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match=r"unknown registry 'optimizer'.*model, loss, dataset, task"):
        register("optimizer")
    with pytest.raises(ValueError, match="unknown registry"):
        get("metric", "x")
    with pytest.raises(ValueError, match="unknown registry"):
        list_names("models")
    with pytest.raises(ValueError, match="unknown registry"):
        create("", "x")


def _plugin_module(tmp_path, monkeypatch, uid, body):
    name = f"rswb_plugin_{uid}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_module_colon_name_imports_and_registers(tmp_path, monkeypatch, uid):
    module = _plugin_module(tmp_path, monkeypatch, uid, f"""
        from rswb.registry import register_task

        CALLS = []

        @register_task("plug_{uid}")
        def plug(scale=1):
            CALLS.append(scale)
            return ("plugged", scale)
        """)
    assert f"plug_{uid}" not in list_names("task")
    # create() builds names that may come from files: it never imports; get() does (a name the user typed).
    with pytest.raises(KeyError, match="never make rswb import code"):
        create("task", f"{module}:plug_{uid}", scale=3)
    assert module not in sys.modules
    assert get("task", f"{module}:plug_{uid}")(scale=3) == ("plugged", 3)
    assert module in sys.modules
    assert f"plug_{uid}" in list_names("task")
    # Once imported, the plain name works too, and a second "module:name" lookup does not re-register.
    assert create("task", f"plug_{uid}") == ("plugged", 1)
    assert get("task", f"{module}:plug_{uid}") is get("task", f"plug_{uid}")
    assert sys.modules[module].CALLS == [3, 1]
    monkeypatch.delitem(sys.modules, module)


def test_module_colon_name_missing_name_or_module(tmp_path, monkeypatch, uid):
    module = _plugin_module(tmp_path, monkeypatch, uid, f"""
        from rswb.registry import register_model

        @register_model
        def real_{uid}():
            return 1
        """)
    with pytest.raises(KeyError, match=rf"unknown model 'reel_{uid}'.*Did you mean real_{uid}"):
        get("model", f"{module}:reel_{uid}")
    assert create_model(f"real_{uid}") == 1
    with pytest.raises(KeyError, match=rf"cannot import 'no_such_module_{uid}'"):
        get("model", f"no_such_module_{uid}:x")
    monkeypatch.delitem(sys.modules, module)


def test_module_colon_name_never_searches_the_working_directory(tmp_path, monkeypatch, uid):
    """Issue 30: a module that only sits in the current folder is not importable through rswb (it used to be put on
    sys.path, so a .py file beside a received run folder ran on `rswb eval`)."""
    name = f"rswb_cwd_plugin_{uid}"
    (tmp_path / f"{name}.py").write_text(
        f"from rswb.registry import register_dataset\n\n@register_dataset\ndef cwd_{uid}():\n    return 'cwd'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(KeyError, match=f"cannot import '{name}'"):
        get("dataset", f"{name}:cwd_{uid}")
    assert name not in sys.modules and str(tmp_path) not in sys.path


class _EntryPoints:
    """What ``importlib.metadata.entry_points(group=...)`` returns, for one fake installed package."""

    def __init__(self, group, points):
        self.group, self.points = group, points

    def __call__(self, group):
        return self.points if group == self.group else []


def test_third_party_builders_come_from_installed_entry_points(tmp_path, monkeypatch, uid):
    """An installed package declares its builders as entry points (group rswb.models / rswb.tasks / ...): found by
    name, listed, and usable from a config; nothing else is imported."""
    from importlib.metadata import EntryPoint

    import rswb.registry as registry

    module = _plugin_module(tmp_path, monkeypatch, uid, f"""
        def lite_{uid}(width=1):
            return ("lite", width)
        """)
    point = EntryPoint(name=f"lite_{uid}", value=f"{module}:lite_{uid}", group="rswb.models")
    monkeypatch.setattr(registry, "entry_points", _EntryPoints("rswb.models", [point]))
    assert module not in sys.modules
    assert create_model(f"lite_{uid}", width=2) == ("lite", 2)  # a name from a config resolves through it
    assert f"lite_{uid}" in list_names("model")
    broken = EntryPoint(name=f"broken_{uid}", value=f"no_such_package_{uid}:x", group="rswb.tasks")
    monkeypatch.setattr(registry, "entry_points", _EntryPoints("rswb.tasks", [broken]))
    with pytest.raises(KeyError, match=f"entry point 'no_such_package_{uid}:x' of an installed package cannot be"):
        get("task", f"broken_{uid}")


def test_every_retrieval_method_has_a_model_and_a_loss():
    import rswb.losses  # noqa: F401  (registers the losses)
    import rswb.models  # noqa: F401
    from rswb.models.retrieval import METHODS
    from rswb.registry import create_loss

    assert set(METHODS) <= set(list_names("model")) and set(METHODS) <= set(list_names("loss"))
    assert create_loss("fisvl", margin=0.3).margin == 0.3
    with pytest.raises(TypeError, match="queue_size"):  # another method's option is an error, never ignored
        create_loss("fisvl", margin=0.3, queue_size=5)


def test_each_method_takes_exactly_the_options_marked_for_it():
    """The options marked methods=(...) in RetrievalConfig are exactly what each method's model and loss builders
    take (loss weights and the tag vocabulary size aside): an option marked for a method its builders do not take,
    or a builder argument no option sets, fails here."""
    import inspect

    import rswb.losses  # noqa: F401
    import rswb.models  # noqa: F401
    from rswb.config import method_fields
    from rswb.models.retrieval import METHODS
    from rswb.tasks.retrieval import RetrievalConfig

    builder_only = {"channels", "text_dim", "embed_dim", "graph_width", "model", "num_tags"}
    for method in METHODS:
        marked = {k for k in method_fields(RetrievalConfig, method) if not k.endswith("_weight")} - {"num_tags"}
        takes = set()
        for kind in ("model", "loss"):
            params = inspect.signature(get(kind, method)).parameters
            takes |= {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD} - builder_only
        assert marked == takes, method


def test_the_registry_is_a_leaf():
    """registry.py imports nothing from rswb (it names rswb's own builder packages only as strings, imported on the
    first unknown name), so any floor can use it without an import cycle."""
    import ast

    import rswb.registry

    tree = ast.parse(open(rswb.registry.__file__, encoding="utf-8").read())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "rswb"], imported


def _import_cycles(root: Path, package: str) -> list[list[str]]:
    """Cycles among ``package``'s modules through their module-level imports (``if TYPE_CHECKING:`` blocks and
    imports inside functions run later, so they are left out): each strongly connected set of two or more."""
    import ast

    mods = {}
    for path in (root / package).rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path

    def module_of(name: str) -> str:  # "rswb.models.retrieval.METHODS" -> "rswb.models.retrieval"
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {module_of(t) for t in targets if t.split(".")[0] == package} - {"", name}
        graph[name] = deps
    # Tarjan's strongly connected components, iterative over a small graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_rswb_has_no_import_cycle(tmp_path):
    import rswb

    root = Path(rswb.__file__).parent.parent
    assert _import_cycles(root, "rswb") == []
    # The check finds a cycle when there is one (a -> b -> c -> a), and ignores imports made when type checking.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("import pkg.c\nx = 1\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n")
    assert _import_cycles(tmp_path, "pkg") == []
    (pkg / "c.py").write_text("from pkg.a import y\n")
    assert _import_cycles(tmp_path, "pkg") == [["pkg.a", "pkg.b", "pkg.c"]]
