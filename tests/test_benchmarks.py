"""Helpers of the result benchmarks (benchmarks/*.py) that compute reported numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.dhcl_ucmd import tie_orders
from tests.metrics.test_hashing import clustered_codes, naive_evaluation


def test_tie_orders_match_the_naive_ranking_of_each_permuted_database():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 40)
    codes = clustered_codes(rng, 40, 8, labels, 3, flip=0.3)  # 8 bits: distances tie everywhere
    got = tie_orders(codes, labels, k=5, n_orders=4, seed=11)
    order_rng = np.random.default_rng(11)
    perms = [order_rng.permutation(40) for _ in range(4)]
    for i, perm in enumerate(perms):
        where = np.argsort(perm)  # query q sits at database position where[q]
        ref = naive_evaluation(codes, codes[perm], lambda a, b, p=perm: labels[a] == labels[p[b]], (5,), (),
                               self_index=where)  # fmt: skip
        assert got["mAP@5"][i] == pytest.approx(ref["AP_retrieved@5"], abs=1e-12)
        assert got["mAP@all"][i] == pytest.approx(ref["AP_all"], abs=1e-12)
    assert len(set(got["mAP@5"])) > 1  # the orders really differ where distances tie


def test_explain_benchmark_reads_object_words_boxes_and_judges_the_goals():
    import torch

    from benchmarks.explain import GOALS, _box_mask, _object_words, reinitialised, verdicts

    assert _object_words("Two white squares and a red circle on a sandy beach .") == [
        ("white", "white"), ("squares", "square"), ("red", "red"), ("circle", "circle")]
    boxes = [{"colour": "white", "shape": "square", "box": [1.0, 2.0, 3.5, 4.2]},
             {"colour": "red", "shape": "circle", "box": [5, 5, 7, 7]}]
    white = _box_mask(boxes, "white", 8, 1.0)
    assert white.sum() == 3 * 3 and white[2:5, 1:4].all()  # floor / ceil of the box, rows = y
    assert _box_mask(boxes, "any", 8, 1.0).sum() == 9 + 4 and not _box_mask(boxes, "blue", 8, 1.0).any()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    model[1].running_mean.fill_(3.0)
    fresh = reinitialised(model)
    assert all(not torch.equal(a, b) for a, b in zip(model[0].parameters(), fresh[0].parameters()))
    assert float(fresh[1].running_mean.abs().max()) == 0.0  # batch-norm statistics reset too
    good = {"hash_cam_pointing": 0.9, "hash_cam_pointing_center": 0.5, "word_map_pointing": 0.8,
            "word_map_pointing_center": 0.3, "cam_randomization_spearman": 0.1, "pha_pan_share_on_pan_pairs": 0.8,
            "pha_ms_share_on_ms_pairs": 0.9}
    assert all(verdicts(good).values())
    near_centre = verdicts({**good, "hash_cam_pointing_center": 0.75})  # 0.9 is not 0.2 above the centre's 0.75
    assert not near_centre["hash_cam_pointing"] and GOALS["above_center"] == 0.2
    assert not verdicts({**good, "cam_randomization_spearman": 0.6})["cam_randomization_spearman"]


def test_validation_gap_reads_both_result_formats(tmp_path):
    from benchmarks.validation_gap import gap_rows, main

    dhcl = {"runs": [{"bits": 64, "seed": s, "val": {"mAP@20": v}, "test": {"mAP@20": t}}
                     for s, v, t in ((0, 0.96, 0.95), (1, 0.98, 0.94), (2, 0.5, 0.5))]}
    dhcl["runs"][2]["bits"] = 16  # another code length: not selected
    ret = {"runs": [{"variant": "kamcl", "seed": 0, "val": {"mR": 67.0}, "test": {"mR": 52.0}}]}
    (tmp_path / "d.json").write_text(json.dumps(dhcl))
    (tmp_path / "r.json").write_text(json.dumps(ret))
    row = gap_rows("DHCL", "block", "mAP@20", tmp_path / "d.json", "64")
    assert row["seeds"] == [0, 1] and row["gaps"] == pytest.approx([1.0, 4.0]) and row["gap"] == pytest.approx(2.5)
    assert gap_rows("K", "random", "mR", tmp_path / "r.json", "kamcl")["gap"] == pytest.approx(15.0)
    with pytest.raises(ValueError, match="no run with"):
        gap_rows("K", "random", "mR", tmp_path / "r.json", "clip")
    main(["--item", "K", "random", "mR", str(tmp_path / "r.json"), "kamcl", "--out", "g", "--results",
          str(tmp_path)])
    text = (tmp_path / "g_table.md").read_text()
    assert "| K | random | mR | 67.00 | 52.00 +- 0.00 | +15.00 | +15.00 | no |" in text


def test_retrieval_best_selects_on_validation_not_test():
    from benchmarks.retrieval_best import best

    def cfg(runs, qb, val, test):
        return {"runs": runs, "qbnorm_beta": {"i2t": 10, "t2i": 10} if qb else None,
                "val": {"expected": {"mR": val}}, "test": {r: {"mR": test + i} for i, r in enumerate(RULES)}}

    RULES = ["expected", "published"]
    results = {"tie_rules": RULES, "configs": [
        cfg(["r/k-s0"], False, 60.0, 50.0), cfg(["r/k-s0"], True, 62.0, 49.0),
        cfg(["r/k-s1"], False, 62.0, 52.0), cfg(["r/k-s1"], True, 64.0, 51.0),
        cfg(["r/k-s0", "r/k-s1"], False, 61.0, 60.0),  # the best test, not the best validation
        cfg(["r/k-s0", "r/k-s1"], True, 65.0, 53.0)]}
    got = best([("kamcl", "finetune", results)])
    assert got["configuration"] == "ensemble of 2 seeds + QB-Norm" and got["seeds"] == [0, 1]
    assert got["mR"] == {"expected": 53.0, "published": 54.0} and len(got["candidates"]) == 4
    single = next(c for c in got["candidates"] if c["configuration"] == "single seed + QB-Norm")
    assert single["val_mR"] == 63.0 and single["mR"]["expected"] == 50.0  # means over the seeds


def test_dhcl_refit_trains_every_image_for_the_selected_epoch_count(tmp_path, monkeypatch):
    from benchmarks.dhcl_ucmd import run, table

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    extra = {"backbone": "small_cnn", "pretrained": False, "image_size": 16, "views": 1, "per_class": 10}
    res = run(None, [8], [0], 2, str(tmp_path / "runs"), extra, n_orders=1, refit=True)
    r = res["runs"][0]
    assert r["refit"]["epochs"] == r["best_epoch"] and "mAP@20" in r["refit"]
    config = (tmp_path / "runs" / "ucmd-8bit-s0-refit" / "config.yaml").read_text()
    assert "val_rule: none" in config and f"epochs: {r['best_epoch']}" in config
    assert "| 8 + 4, refit |" in table(res)


def test_pha_pretrain_summary_selects_on_validation_not_test():
    from benchmarks.pha_pretrain_summary import summarize

    def run(version, seed, val, test):
        return {"version": version, "seed": seed, "val": {"OA": val}, "test": {"OA": test}}

    ladder = {"runs": [run("pan_only", s, 0.99, 0.99) for s in (0, 1)]  # single modality: never "best"
              + [run("pha_v1", s, 0.80, 0.80) for s in (0, 1)]
              + [run("pha_v6", s, 0.85, 0.79) for s in (0, 1)]           # best on validation, worse on test
              + [run("pha_v1@pretrain=cross", s, 0.70, 0.95) for s in (0, 1)]}
    out = summarize({"5": ladder})
    assert out["seeds"] == 2
    assert out["shots"]["5"] == {"v1_OA": 80.0, "best_OA": 79.0, "best_version": "pha_v6", "best_val_OA": 85.0}
    ladder["runs"].pop()
    with pytest.raises(ValueError, match="seed counts"):
        summarize({"5": ladder})


def test_dhcl_ablation_marks_the_best_validation_and_sizes_the_cache():
    import torch

    from benchmarks.dhcl_ablation import cache_mib, table
    from rswb.models.backbones import make_backbone

    def fake(label, val, test):
        return {"label": label, "val_mAP@20": (val, 0.1), "test_mAP@20": (test, 0.1), "test_mAP@20_nocue": (1, 0),
                "test_class_acc": (1, 0), "gap": val - test, "best_epochs": [3], "s_per_epoch": 1.0, "cache_mib": 2}

    text = table([fake("a", 95.0, 97.0), fake("b", 96.0, 94.0)])
    assert "| **b** (selected) |" in text and "| a |" in text  # the validation selects, not the test
    opts = {"backbone": "small_cnn", "train_from": "stage3", "image_size": 32, "views": 2, "crop_views": 1}
    cut = make_backbone("small_cnn", pretrained=False).forward_until(torch.zeros(1, 3, 32, 32), "stage3")["cut"]
    assert cache_mib(opts, 10) == pytest.approx(10 * 3 * cut[0].numel() * 2 / 2**20)
    with pytest.raises(ValueError, match="only --train-from"):
        cache_mib({"backbone": "small_cnn"}, 10)
