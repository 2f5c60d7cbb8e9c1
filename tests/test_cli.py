"""The ``rswb`` command: help, synth, check, and exit code 2 with a one-line error on broken copies of real data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from rswb.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rswb.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0 and "data" in out.stdout
    out = run_cli("data", "--help")
    assert "synth" in out.stdout and "check" in out.stdout


def test_synth_then_check(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path)]) == 0
    for part in ("mspan", "scenes", "captions"):
        assert main(["data", "check", str(tmp_path / part)]) == 0
    out = capsys.readouterr().out
    assert "8 classes" in out or "in 8 classes" in out
    assert "ucmerced" in out and "captions per image" in out


def test_check_json(tmp_path, capsys):
    main(["data", "synth", "--out", str(tmp_path)])
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "scenes"), "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["format"] == "scene_folder"


def test_missing_path_exits_2(tmp_path):
    out = run_cli("data", "check", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "missing" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ real data and deliberately broken copies of it

@pytest.mark.realdata
def test_real_data_summaries(shared_data, tmp_path):
    ucm = shared_data("UCMerced_LandUse")
    out = run_cli("data", "check", str(ucm))
    assert out.returncode == 0 and "2100 images, 21 classes" in out.stdout and "1680 train / 420" in out.stdout
    out = run_cli("data", "check", str(shared_data("ucm_captions")), "--images", str(ucm))
    assert out.returncode == 0
    assert "train: 1890 images, 9450 captions, 1890 image files found" in out.stdout
    assert "test: 210 images, 1050 captions, 210 image files found" in out.stdout
    assert "join: 2100 by UCM-Captions numbering" in out.stdout
    # Sydney-Captions-like numeric names (1.tif .. 613.tif) over the real UC Merced: exit 2, never a silent join.
    from tests.data.fakes import make_sydney_captions

    sydney = make_sydney_captions(tmp_path, per_image=1)
    out = run_cli("data", "check", str(sydney), "--images", str(ucm))
    assert out.returncode == 2 and "'1.tif'" in out.stderr and "--image-map" in out.stderr
    assert "Traceback" not in out.stderr
    csv = tmp_path / "map.csv"
    csv.write_text("".join(f"{n}.tif,Images/beach/beach{n % 100:02d}.jpg\n" for n in range(1, 614)))
    out = run_cli("data", "check", str(sydney), "--images", str(ucm), "--image-map", str(csv), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["join"]["rules"] == {"image map": 613}
    out = run_cli("data", "check", str(shared_data("mspan_pairs", "worldview2.mat")))
    assert out.returncode == 0 and "8 bands x 320 x 320" in out.stdout and "1280 x 1280" in out.stdout


@pytest.mark.realdata
def test_broken_copies_of_real_data_exit_2(shared_data, tmp_path):
    ucm = shared_data("UCMerced_LandUse")
    # UC Merced: two classes copied, one JPEG truncated.
    broken = tmp_path / "ucm" / "Images"
    for cls in ("agricultural", "airplane"):
        shutil.copytree(ucm / "Images" / cls, broken / cls)
    bad = broken / "airplane" / "airplane42.jpg"
    bad.write_bytes(bad.read_bytes()[:500])
    out = run_cli("data", "check", str(broken.parent))
    assert out.returncode == 2 and "airplane42.jpg" in out.stderr and "decode" in out.stderr

    # UCM-Captions: one caption line removed -> counts no longer agree.
    caps = tmp_path / "caps"
    shutil.copytree(shared_data("ucm_captions"), caps)
    lines = (caps / "test_caps.txt").read_text().splitlines()
    (caps / "test_caps.txt").write_text("\n".join(lines[:-1]) + "\n")
    out = run_cli("data", "check", str(caps), "--images", str(ucm))
    assert out.returncode == 2 and "test_caps.txt" in out.stderr and "1049 captions but 1050" in out.stderr

    # UCM-Captions pointed at an image root missing a class: captions whose image is missing.
    out = run_cli("data", "check", str(shared_data("ucm_captions")), "--images", str(broken.parent))
    assert out.returncode == 2 and "not found" in out.stderr

    # WorldView-2: PAN cropped so it is no longer 4 x MS.
    data = scipy.io.loadmat(shared_data("mspan_pairs", "worldview2.mat"))
    data = {k: v for k, v in data.items() if not k.startswith("__")}
    data["I_PAN"] = np.ascontiguousarray(data["I_PAN"][:1200])
    mat = tmp_path / "wv2_broken.mat"
    scipy.io.savemat(mat, data)
    out = run_cli("data", "check", str(mat))
    assert out.returncode == 2 and "wv2_broken.mat" in out.stderr and "1280x1280" in out.stderr


def test_json_errors_come_as_json_on_stdout_and_a_closed_pipe_is_no_traceback(tmp_path):
    out = run_cli("data", "check", str(tmp_path / "missing"), "--json")
    assert out.returncode == 2
    err = json.loads(out.stdout)["error"]
    assert err["kind"] == "data error" and err["path"] == str(tmp_path / "missing") and "not found" in err["message"]
    # `rswb data check ... | head`: the reader is gone before the summary is written.
    from tests.data.fakes import make_ucmerced

    root = make_ucmerced(tmp_path, classes=tuple(f"c{i}" for i in range(30)), per_class=2)
    p = subprocess.Popen([sys.executable, "-m", "rswb.cli", "data", "check", str(root)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    stderr = p.communicate(timeout=120)[1].decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_rswb_alone_prints_the_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rswb") and "COMMAND" in out and "train" in out


def test_version_names_rswb_torch_and_the_device(capsys):
    import torch

    from rswb.engine.device import select_device

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("rswb ") and f"torch {torch.__version__}" in out and f"device {select_device()}" in out


def test_scikit_learn_is_in_the_notebooks_extra():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("scikit-learn") for dep in extras["notebooks"])


def test_eval_ties_choices_are_the_tie_rules():
    # The CLI writes the rules out (its help starts without torch); they must stay the library's.
    import argparse

    from rswb.cli import build_parser
    from rswb.metrics.retrieval import TIE_RULES

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ties = next(a for a in commands.choices["eval"]._actions if a.dest == "ties")
    assert tuple(ties.choices) == TIE_RULES
    assert parser.parse_args(["eval", "some-run", "--ties", "clip_benchmark"]).ties == "clip_benchmark"
