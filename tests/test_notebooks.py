"""rswb notebooks run: the suite runner, its report page and its failure handling (on notebook 01: seconds)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("papermill")
pytest.importorskip("nbconvert")

from rswb.cli import main  # noqa: E402
from rswb.notebooks import NOTEBOOKS, PROFILES, flatten_metrics, notebook_parameters, notebooks_dir, run_suite  # noqa: E402


def test_profiles_only_set_parameters_the_notebooks_declare():
    for profile in PROFILES.values():
        assert set(profile) == set(NOTEBOOKS)
        for name, values in profile.items():
            assert set(values) <= notebook_parameters(notebooks_dir() / f"{name}.ipynb"), name


def test_flatten_metrics():
    assert flatten_metrics({"a": {"b": 1, "c": {"d": 2.5}}, "e": "text", "f": True, "g": [1]}) == {
        "a.b": 1.0, "a.c.d": 2.5}


def test_trained_scores_get_a_band_under_every_tie_rule():
    from rswb.notebooks import tolerance

    for key in ("methods.clip.mR", "methods.clip.optimistic_mR", "methods.fisvl.published_mR",
                "methods.kamcl.pessimistic_i2t_R@1"):
        assert tolerance(key, 52.7) == 5.0, key
    # The Hamming-radius recall R@r2 is a fraction (it once caught the percentage rule of R@K: a band of 10).
    for key in ("bits.16.R@r2", "bits.16.R@r2_nocue", "bits.16.P@r2", "bits.32.mAP@20", "bits.32.class_acc",
                "versions.pha_v1.OA", "versions.pha_v1.kappa_std"):
        assert tolerance(key, 0.9) == 0.05, key
    assert tolerance("methods.clip.i2t_medr", 3.0) == 5.0
    assert tolerance("captions.n_test", 150) == pytest.approx(1.5e-4)  # data facts must match


def test_run_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    report, results = run_suite("quick", only=["01"], reports_root=tmp_path, progress=False)
    assert [r.name for r in results] == ["01_data_inspection"] and results[0].status == "ok"
    for f in ("01_data_inspection.ipynb", "01_data_inspection.html", "01_data_inspection/metrics.json", "index.html"):
        assert (report / f).exists(), f
    page = (report / "index.html").read_text()
    # The quick profile's baselines judge the run: every compared metric passes, each beside its baseline.
    assert "01_data_inspection" in page and "0 drift, 0 missing" in page and ">drift</td>" not in page
    assert "<td class='m'>mspan.bands</td><td>4</td><td>4</td>" in page and "profile <b>quick</b>" in page
    assert (report / "01_data_inspection" / "figures" / "fig_1.png").exists()
    assert "<a href='01_data_inspection.html'><img src='01_data_inspection/figures/fig_1.png'" in page
    assert results[0].metrics == json.loads((report / "01_data_inspection" / "metrics.json").read_text())


def test_a_failing_notebook_fails_the_command_with_its_cell_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    code = main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path), "--param", "PER_CLASS=oops"])
    assert code == 1
    err = capsys.readouterr().err
    assert "01_data_inspection failed" in err and "cell" in err and "Error" in err
    page = next(tmp_path.glob("*/index.html")).read_text()
    assert "failed" in page
    with pytest.raises(KeyError, match="no notebook matches"):
        run_suite("quick", only=["99"], reports_root=tmp_path)


def test_a_drifted_metric_fails_with_a_readable_diff():
    from rswb.notebooks import compare_to_baselines, make_baselines

    metrics = {"methods": {"clip": {"mR": 41.5, "i2t_medr": 4.0, "best_epoch": 2}}, "seed": 0}
    base = make_baselines({"03_retrieval_training": metrics})
    assert set(base["03_retrieval_training"]) == {"methods.clip.mR", "methods.clip.i2t_medr", "seed"}  # epoch: no
    assert compare_to_baselines("03_retrieval_training", metrics, base) == []
    within = {"methods": {"clip": {"mR": 45.0, "i2t_medr": 5.0}}, "seed": 0}
    assert compare_to_baselines("03_retrieval_training", within, base) == []
    drifted = {"methods": {"clip": {"mR": 12.0}}, "seed": 1}  # a broken pipeline: mR collapsed, medr missing
    problems = compare_to_baselines("03_retrieval_training", drifted, base)
    assert len(problems) == 3
    assert "methods.clip.mR = 12, baseline 41.5 (difference -29.5, tolerance 5)" in problems[0]
    assert "methods.clip.i2t_medr missing" in problems[1] and "seed = 1, baseline 0" in problems[2]
    assert "no baselines" in compare_to_baselines("99_new", metrics, base)[0]


def test_committed_baselines_cover_every_notebook():
    from rswb.notebooks import BASELINES, load_baselines

    base = load_baselines()
    assert BASELINES.exists() and set(base) == set(NOTEBOOKS)
    assert all(entries for entries in base.values())
    assert all(e["tol"] >= 0 for entries in base.values() for e in entries.values())


def test_every_notebook_is_in_the_suite_stripped_and_introduced():
    import nbformat

    on_disk = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    assert on_disk == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        assert nb.cells[0].cell_type == "markdown" and "parameter" in nb.cells[0].source.lower(), name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: committed with outputs"


def test_every_task_profile_is_a_valid_config():
    import rswb.tasks  # noqa: F401  (registers the tasks)
    from rswb.engine.experiments import PROFILES as TASK_PROFILES
    from rswb.engine.experiments import task_config

    for task, profiles in TASK_PROFILES.items():
        for profile, options in profiles.items():
            cfg = task_config(task, profile)
            for key, value in options.items():
                if hasattr(cfg, key):
                    assert getattr(cfg, key) == value, (task, profile, key)
    assert TASK_PROFILES["hash"]["finetune"]["train_from"] and TASK_PROFILES["retrieval"]["finetune"]["train_from"]


def test_index_shows_each_metric_beside_its_baseline_with_pass_or_drift(tmp_path):
    import base64

    import nbformat

    from rswb.notebooks import NotebookResult, make_baselines, metric_rows, write_index

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})
                    for _ in range(6)]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "04_hash_evaluation.ipynb")
    base = make_baselines({"04_hash_evaluation": {"bits": {"32": {"mAP@20": 0.8, "class_acc": 0.9}}, "n": 5}})
    metrics = {"bits": {"32": {"mAP@20": 0.5, "class_acc": 0.88, "best_epoch": 7}}, "extra": 1.0}  # n: missing
    rows = metric_rows("04_hash_evaluation", metrics, base)
    assert [(r["metric"], r["status"]) for r in rows] == [
        ("bits.32.mAP@20", "drift"), ("n", "missing"), ("bits.32.class_acc", "pass"),
        ("bits.32.best_epoch", "not compared"), ("extra", "new")]  # the selected epoch never has a baseline
    result = NotebookResult("04_hash_evaluation", "ok", 12.0, {"DATA_ROOT": "/data/UCM", "PROFILE": "quick"},
                            metrics)
    page = write_index(tmp_path, [result], "quick", baselines=base).read_text()
    assert "1 pass, 1 drift, 1 missing, 1 new" in page and ">drift</span>" in page
    assert "<td class='m'>bits.32.mAP@20</td><td>0.5</td><td>0.8</td><td>0.05</td><td style='color:#cf222e" in page
    assert "data: DATA_ROOT = /data/UCM" in page and "12 s" in page
    assert "what make demo runs" in page and "Measured with the longer profiles" in page  # the profile's paragraph
    figures = sorted((tmp_path / "04_hash_evaluation" / "figures").iterdir())
    assert len(figures) == 4 and figures[0].read_bytes().startswith(b"\x89PNG")  # the first four, decoded
    # Without baselines every metric is new and the verdict says so.
    page = write_index(tmp_path, [result], "quick", baselines={}).read_text()
    assert "no baseline" in page and "0 pass, 0 drift, 0 missing, 3 new" in page


def _slow_spread(values: list[float]) -> float:
    """The sample standard deviation, written out (the reference for spread_baselines)."""
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def test_spread_baselines_take_the_first_run_and_k_sample_sds_on_seeded_random_runs():
    import random

    from rswb.notebooks import UNIT_BANDS, metric_unit, spread_baselines

    rng = random.Random(0)
    runs = [{"03_retrieval_training": {"seed": s, "images": 420, "methods": {"clip": {
        "mR": 50 + rng.gauss(0, 2), "i2t_R@1": 14 + rng.gauss(0, 0.01), "best_epoch": rng.randint(1, 9)}}}}
        for s in range(3)]
    base = spread_baselines(runs, k=3)["03_retrieval_training"]
    assert set(base) == {"seed", "images", "methods.clip.mR", "methods.clip.i2t_R@1"}  # best_epoch: not compared
    for key in ("methods.clip.mR", "methods.clip.i2t_R@1"):
        clip = [r["03_retrieval_training"]["methods"]["clip"][key.rsplit(".", 1)[1]] for r in runs]
        assert base[key]["value"] == pytest.approx(clip[0], abs=1e-6)
        assert base[key]["sd"] == pytest.approx(_slow_spread(clip), rel=1e-2)
        floor, band = UNIT_BANDS[metric_unit(key)]
        assert base[key]["tol"] == pytest.approx(min(max(3 * _slow_spread(clip), floor), band), rel=1e-2)
    assert 1.0 < base["methods.clip.mR"]["tol"] <= 5.0  # the seeds moved it: 3 sd, never past the band
    assert base["methods.clip.i2t_R@1"]["tol"] == pytest.approx(0.5)  # they did not: the floor
    # The echoed seed varies by design and the data fact does not: both keep their near-exact band.
    assert base["seed"] == {"value": 0, "tol": 1e-6, "sd": 1.0} and base["images"]["tol"] < 1e-3
    with pytest.raises(ValueError, match="at least two runs"):
        spread_baselines(runs[:1])


def test_baseline_command_writes_a_profile_file_from_seed_reports_and_check_fails_on_drift(tmp_path, capsys):
    from rswb.notebooks import load_baselines

    reports = []
    for seed, oa in enumerate((0.90, 0.92, 0.88)):
        report = tmp_path / f"r{seed}"
        for name in NOTEBOOKS:
            (report / name).mkdir(parents=True)
            (report / name / "metrics.json").write_text(json.dumps({"versions": {"pha_v1": {"OA": oa}}}))
        reports.append(str(report))
    out = tmp_path / "real.yaml"
    assert main(["notebooks", "baseline", "--profile", "real", "--out", str(out), *reports]) == 0
    base = load_baselines(out)
    assert set(base) == set(NOTEBOOKS) and "real-profile" in out.read_text().lower()
    # 3 sd = 0.06 is wider than a fraction's band: the band (0.05) holds.
    assert base["02_pha_versions"]["versions.pha_v1.OA"] == {"value": 0.9, "tol": 0.05, "sd": 0.02}
    (tmp_path / "r0" / NOTEBOOKS[0] / "metrics.json").unlink()
    assert main(["notebooks", "baseline", "--profile", "real", "--out", str(out), reports[0]]) == 2
    assert "01_data_inspection/metrics.json: missing" in capsys.readouterr().err


def test_run_check_exits_1_with_the_diff_when_a_metric_drifted(tmp_path, monkeypatch, capsys):
    import rswb.notebooks as nbs

    monkeypatch.delenv("MPLBACKEND", raising=False)
    base = tmp_path / "baselines"
    base.mkdir()
    monkeypatch.setattr(nbs, "baselines_path", lambda profile="quick": base / f"{profile}.yaml")
    assert main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path / "a"), "--check"]) == 2
    assert "no baselines file" in capsys.readouterr().err and not (tmp_path / "a").exists()  # before running
    good = nbs.load_baselines(nbs.BASELINES)["01_data_inspection"]
    import yaml

    (base / "quick.yaml").write_text(yaml.safe_dump({"01_data_inspection": good}))
    assert main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path / "b"), "--check"]) == 0
    assert "no drift" in capsys.readouterr().out
    bad = {**good, "scenes.images": {"value": 999.0, "tol": 0.001}}
    (base / "quick.yaml").write_text(yaml.safe_dump({"01_data_inspection": bad}))
    assert main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path / "c"), "--check"]) == 1
    err = capsys.readouterr().err
    assert "drift: 01_data_inspection: scenes.images = 1000, baseline 999" in err


def test_real_profile_paths_come_from_the_shared_data_root_and_a_missing_one_fails_first(tmp_path, monkeypatch):
    from rswb.notebooks import resolve_parameters, shared_data_root

    (tmp_path / "UCMerced_LandUse").mkdir()
    monkeypatch.setenv("RSWB_SHARED_DATA", str(tmp_path))
    assert shared_data_root() == tmp_path
    values = resolve_parameters({"DATA_ROOT": "{shared}/UCMerced_LandUse", "EPOCHS": 3, "PROFILE": "cpu"})
    assert values == {"DATA_ROOT": f"{tmp_path}/UCMerced_LandUse", "EPOCHS": 3, "PROFILE": "cpu"}
    with pytest.raises(FileNotFoundError, match="CAPTIONS_ROOT = .*ucm_captions does not exist"):
        resolve_parameters({"CAPTIONS_ROOT": "{shared}/ucm_captions"})
    reports = tmp_path / "reports"
    with pytest.raises(FileNotFoundError, match="profile real, 01_data_inspection"):
        run_suite("real", reports_root=reports, progress=False)
    assert not reports.exists()  # checked before anything ran or was written


def test_the_real_profile_names_the_shared_data_of_every_notebook():
    real = PROFILES["real"]
    assert real["02_pha_versions"]["PROFILE"] == "cpu" and "UCMerced" in real["02_pha_versions"]["DATA_ROOT"]
    assert "ucm_captions" in real["03_retrieval_training"]["DATA_ROOT"]
    assert "worldview2" in real["01_data_inspection"]["MSPAN_ROOT"]
    assert all(v.startswith("{shared}/") for nb in real.values() for k, v in nb.items() if k.endswith("_ROOT"))


@pytest.mark.parametrize("profile", ["quick", "real"])
def test_committed_tolerances_can_fail(profile):
    """Every trained score's committed band is inside its unit's band, and a move past it is reported as drift."""
    from rswb.notebooks import UNIT_BANDS, baselines_path, compare_to_baselines, load_baselines, metric_unit

    base = load_baselines(baselines_path(profile))
    seen = set()
    for name, entries in base.items():
        values = {key: e["value"] for key, e in entries.items()}
        for key, entry in entries.items():
            unit = metric_unit(key)
            if unit is not None:
                assert entry["tol"] <= UNIT_BANDS[unit][1], (profile, name, key, entry)
                seen.add(unit)
            # One metric moved 1.5 tolerances (at least one unit of its last digit), every other one as recorded.
            moved = dict(values, **{key: entry["value"] + max(1.5 * entry["tol"], 1e-5)})
            problems = compare_to_baselines(name, _unflatten(moved), base)
            assert len(problems) == 1 and problems[0].startswith(f"{name}: {key} = "), (profile, key, problems)
        assert compare_to_baselines(name, _unflatten(values), base) == []
    assert seen == set(UNIT_BANDS)  # percentages, fractions and ranks are all under test


def _unflatten(flat: dict[str, float]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_html_export_shows_a_widgets_picture_offline(tmp_path):
    """The report's HTML pages drop the widget state, so nbconvert renders the PNG each widget carries."""
    import base64

    import nbformat

    from rswb.notebooks.suite import _export_html

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n widget picture").decode()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("picker")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "image/png": png, "text/plain": "PictureBox(...)"})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}, "version_major": 2,
                                                                            "version_minor": 0}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    _export_html(path)
    page = (tmp_path / "nb.html").read_text()
    assert f"data:image/png;base64,{png}" in page
    assert 'type="application/vnd.jupyter.widget-view+json"' not in page


def test_index_folds_all_but_the_headline_and_drifted_metrics(tmp_path):
    from rswb.notebooks import NotebookResult, make_baselines, write_index

    metrics = {"methods": {"clip": {"mR": 50.0, "i2t_R@1": 20.0, **{f"published_t2i_R@{k}": 30.0 for k in range(40)}}}}
    base = make_baselines({"03_retrieval_training": metrics})
    drifted = {"methods": {"clip": {**metrics["methods"]["clip"], "published_t2i_R@7": 90.0}}}
    page = write_index(tmp_path, [NotebookResult("03_retrieval_training", "ok", 1.0, {}, drifted)], "quick",
                       baselines=base).read_text()
    shown, folded = page.split("<details>")
    assert "<td class='m'>methods.clip.mR</td>" in shown and "methods.clip.published_t2i_R@7</td>" in shown
    assert "methods.clip.published_t2i_R@8</td>" in folded and "39 more metrics" in folded


def test_an_unknown_param_is_refused_with_the_notebooks_parameters(tmp_path, capsys):
    code = main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path), "--param", "PER_CLAS=2"])
    err = capsys.readouterr().err
    assert code == 2 and "--param PER_CLAS: no notebook of this run has such a parameter" in err
    assert "PER_CLASS" in err and not list(tmp_path.iterdir())  # refused before anything ran


def test_the_profile_note_reads_its_numbers_from_the_committed_results(tmp_path, monkeypatch):
    """No result number is written in code: the note's numbers are means over the seeds of benchmarks/results."""
    import rswb.notebooks.report as report

    runs = [{"version": "pha_v1", "test": {"OA": 0.90}}, {"version": "pha_v1", "test": {"OA": 0.92}},
            {"version": "pha_v3", "test": {"OA": 0.97}}, {"version": "pha_v3", "test": {"OA": 0.95}}]
    (tmp_path / "pha_embedded.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(report, "_results_dir", lambda: tmp_path)
    note = report.profile_note("quick")
    assert "best rung on this scene with the full profile is pha_v3 at 96.0 % OA" in note
    assert "DHCL" not in note  # no file, no claim
    (tmp_path / "pha_embedded.json").unlink()
    assert "results are in benchmarks/results of a source checkout" in report.profile_note("quick")
