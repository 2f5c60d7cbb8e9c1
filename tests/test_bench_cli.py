"""``rswb bench``: the registry runs every benchmark at --quick sizes and prints one JSON object; bad names exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rswb.cli import main

NAMES = ["retrieval_rsicd", "retrieval_5k", "hashing_loo", "hashing_1m", "patch_sampler", "pha_dense"]
MACHINE_KEYS = {"cpu", "cores", "torch", "threads", "device"}


def test_quick_json_runs_every_benchmark(capfd):
    # rswb bench runs `python -m benchmarks` in the checkout (the package never imports benchmarks/): capture the fds.
    assert main(["bench", "--quick", "--json"]) == 0
    out = json.loads(capfd.readouterr().out)  # exactly one JSON object on stdout
    assert list(out) == NAMES
    for name, res in out.items():
        assert {"rswb_s", "reference_s", "speedup", "machine"} <= set(res), name
        assert res["rswb_s"] > 0 and res["reference_s"] > 0, name
        assert res["speedup"] == pytest.approx(res["reference_s"] / res["rswb_s"]), name
        assert MACHINE_KEYS <= set(res["machine"]), name
        assert res["quick"] is True and "goals" not in res, name
    for name in ("retrieval_rsicd", "retrieval_5k", "patch_sampler"):
        assert out[name]["vs_floor"] == pytest.approx(out[name]["rswb_s"] / out[name]["floor_s"])
    assert out["retrieval_5k"]["reference_extrapolated_from"]  # the quick 5k run also takes the subset path
    assert out["pha_dense"]["map_agreement"] == 1.0  # dense and per-patch maps are the same map
    h = out["hashing_1m"]
    if "faiss_s" in h:  # the faiss peer (the bench extra): timed, and its top-k distances checked against rswb's
        assert h["speedup_vs_faiss"] == pytest.approx(h["faiss_s"] / h["rswb_s"]) and 0 < h["faiss_mAP@10"] <= 1
    else:
        assert "not installed" in h["faiss"]


def test_named_subset_prints_a_table(capfd):
    assert main(["bench", "hashing_loo", "--quick"]) == 0
    out = capfd.readouterr().out
    assert "hashing_loo" in out and "speedup" in out and "retrieval" not in out


def test_unknown_name_exits_2_and_lists_the_names():
    out = subprocess.run([sys.executable, "-m", "rswb.cli", "bench", "no_such_bench", "--quick"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert "no_such_bench" in out.stderr and all(n in out.stderr for n in NAMES)
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_missing_benchmarks_folder_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import rswb

    monkeypatch.setattr(rswb, "__file__", str(tmp_path / "site-packages" / "rswb" / "__init__.py"))
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "no benchmarks/ folder" in err and "source checkout" in err


def test_the_package_never_imports_benchmarks_or_tests():
    import ast
    from pathlib import Path

    import rswb

    for f in Path(rswb.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("benchmarks", "tests") for n in names), f
    assert "sys.path" not in (Path(rswb.__file__).parent / "cli.py").read_text()


def test_the_data_layer_imports_no_higher_floor():
    """rswb.data sits below models, losses, engine and tasks: none of them is imported from it."""
    import ast
    from pathlib import Path

    import rswb.data

    higher = ("rswb.models", "rswb.losses", "rswb.engine", "rswb.tasks", "rswb.infer", "rswb.viz", "rswb.notebooks")
    for f in Path(rswb.data.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(higher)], f
