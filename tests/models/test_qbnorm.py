"""QB-Norm's Dynamic Inverted Softmax against a per-query, per-column loop, and trained runs rescored with it."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rswb.models import qbnorm
from rswb.models.qbnorm import dynamic_inverted_softmax, inverted_softmax, querybank_activation


def loop_activation(bank: list[list[float]], k: int = 1) -> set[int]:
    """Gallery items among the top ``k`` of some bank row (ties: the first items, as ``argmax``)."""
    active = set()
    for row in bank:
        order = sorted(range(len(row)), key=lambda g: (-row[g], g))
        active.update(order[:k])
    return active


def loop_dis(scores: list[list[float]], bank: list[list[float]], beta: float) -> list[list[float]]:
    """The paper's definition, one query and one gallery column at a time, in plain floats (no log space)."""
    active = loop_activation(bank)
    out = []
    for row in scores:
        top = max(range(len(row)), key=lambda g: (row[g], -g))  # the first maximum
        if top not in active:
            out.append(list(row))
            continue
        out.append([math.exp(beta * row[g]) / sum(math.exp(beta * b[g]) for b in bank) for g in range(len(row))])
    return out


def hub_problem(seed: int, q: int = 12, g: int = 9, b: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-like scores where the bank is drawn to the first four items: the others are outside the activation set."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(q, g, generator=gen, dtype=torch.float64) * 2 - 1
    bank = torch.rand(b, g, generator=gen, dtype=torch.float64) * 2 - 1
    bank[:, :4] += 2.0  # hubs: every bank query's top-1 is one of items 0-3
    scores[: q // 2, :4] += 2.0  # half the test queries find a hub first, half do not
    return scores, bank


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [1.0, 5.0, 20.0])
def test_dynamic_inverted_softmax_matches_the_loop_of_the_definition(seed, beta):
    scores, bank = hub_problem(seed)
    ref = loop_dis(scores.tolist(), bank.tolist(), beta)
    out = dynamic_inverted_softmax(scores, bank, beta)
    active = loop_activation(bank.tolist())
    normalised = [int(torch.argmax(scores[i])) in active for i in range(len(scores))]
    assert any(normalised) and not all(normalised)  # both kinds of query are exercised
    for i, row in enumerate(ref):
        if normalised[i]:  # the log of the paper's score: the same order, compared as the score itself
            np.testing.assert_allclose(torch.exp(out[i]).numpy(), row, rtol=1e-10)
        else:
            assert out[i].tolist() == row
        # Every query ranks its items as the definition does.
        assert torch.argsort(out[i], descending=True).tolist() == sorted(range(len(row)), key=lambda g: -row[g])


def test_activation_set_against_the_loop_for_top_k():
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(6, 10, generator=gen)
    for k in (1, 2, 3):
        mask = querybank_activation(bank, k)
        assert mask.dtype == torch.bool and mask.shape == (10,)
        assert set(torch.nonzero(mask).reshape(-1).tolist()) == loop_activation(bank.tolist(), k)


def test_a_query_whose_top1_is_outside_the_activation_set_is_unchanged():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3]])
    bank = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.5, 0.0]])  # both bank queries pick item 0
    out = dynamic_inverted_softmax(scores, bank, 10.0)
    assert torch.equal(out[1], scores[1])  # top-1 is item 1: untouched, bit for bit
    assert not torch.equal(out[0], scores[0])
    # Queries are independent: the same query alone gives the same row.
    assert torch.equal(dynamic_inverted_softmax(scores[:1], bank, 10.0)[0], out[0])


def test_a_hub_loses_to_the_item_the_bank_rarely_reaches_hand_computed():
    # Item 0 is a hub (both bank queries score it high); the query prefers it only slightly.
    scores = torch.tensor([[0.6, 0.5]], dtype=torch.float64)
    bank = torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
    out = dynamic_inverted_softmax(scores, bank, 10.0)
    expected = [6.0 - math.log(math.exp(9.0) + math.exp(8.0)), 5.0 - math.log(math.exp(1.0) + math.exp(2.0))]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert int(out[0].argmax()) == 1  # the normalisation moved the non-hub item to the top
    # Two bank queries and two items, so a bank sum over the wrong axis (per bank query, over the gallery)
    # broadcasts silently: it keeps the hub on top, and the hand-computed numbers above tell the two apart.
    wrong_axis = 10.0 * scores - torch.logsumexp(10.0 * bank, dim=1)
    assert int(wrong_axis[0].argmax()) == 0 and wrong_axis[0].tolist() != pytest.approx(expected, abs=1e-3)
    # A softmax over the query's own row never reorders it either.
    assert int(torch.log_softmax(10.0 * scores, dim=1)[0].argmax()) == 0


def test_large_beta_stays_finite_and_keeps_the_log_space_order():
    scores, bank = hub_problem(4)
    beta = 1000.0  # exp(1000 * 3) overflows float64: the plain ratio cannot be formed
    out = dynamic_inverted_softmax(scores, bank, beta)
    assert torch.isfinite(out).all()
    active = loop_activation(bank.tolist())
    for i, row in enumerate(scores.tolist()):
        if int(np.argmax(row)) in active:
            for g in range(len(row)):
                column = [beta * b[g] for b in bank.tolist()]
                m = max(column)
                ref = beta * row[g] - (m + math.log(sum(math.exp(c - m) for c in column)))
                assert float(out[i, g]) == pytest.approx(ref, rel=1e-12)


def test_the_bank_is_summed_in_blocks_as_in_one_pass(monkeypatch):
    scores, bank = hub_problem(5, b=50)
    whole = inverted_softmax(scores, bank, 20.0)
    monkeypatch.setattr(qbnorm, "_BLOCK_ENTRIES", 3 * bank.shape[1])  # blocks of 3 bank rows, the last partial
    torch.testing.assert_close(inverted_softmax(scores, bank, 20.0), whole, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize(("dtype", "expected"), [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                                 (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
def test_shapes_and_dtypes(dtype, expected):
    scores, bank = hub_problem(6, q=5, g=7, b=11)
    out = dynamic_inverted_softmax(scores.to(dtype), bank.to(dtype), 10)
    assert out.shape == (5, 7) and out.dtype == expected and out.device == scores.device
    # beta scales the normalised rows only; every value stays finite.
    for beta in (5.0, 10.0, 40.0):
        assert torch.isfinite(dynamic_inverted_softmax(scores.to(dtype), bank.to(dtype), beta)).all()
    mixed = dynamic_inverted_softmax(scores.float(), bank, 10.0)
    assert mixed.dtype == torch.float64
    assert dynamic_inverted_softmax(scores[:0], bank, 10.0).shape == (0, 7)


def test_bad_inputs_are_refused():
    scores, bank = hub_problem(7, q=4, g=6, b=8)
    for beta in (0.0, -1.0, float("nan"), float("inf"), "20"):
        with pytest.raises(ValueError, match="beta"):
            dynamic_inverted_softmax(scores, bank, beta)
    with pytest.raises(ValueError, match="same gallery"):
        dynamic_inverted_softmax(scores, bank.t(), 10.0)  # a bank laid out gallery x queries
    with pytest.raises(ValueError, match="empty"):
        dynamic_inverted_softmax(scores, bank[:0], 10.0)
    with pytest.raises(ValueError, match="k must"):
        querybank_activation(bank, 0)


# ------------------------------------------------------------------ trained runs: ensembles and QB-Norm


QUICK = {"method": "clip", "backbone": "small_cnn", "pretrained": False, "image_size": 64, "embed_dim": 32,
         "epochs": 1, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch runs (seeds 0 and 1) on the embedded captions, and their train/val/test embeddings."""
    import os

    from rswb.engine.launch import train_task
    from rswb.infer import encode_run

    root = tmp_path_factory.mktemp("qbnorm")
    old = os.environ.get("RSWB_CACHE_DIR")
    os.environ["RSWB_CACHE_DIR"] = str(root / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine
    try:
        dirs = []
        for seed in (0, 1):
            train_task("retrieval", {**QUICK, "seed": seed}, run_name=f"s{seed}", runs_root=root / "runs")
            dirs.append(root / "runs" / f"s{seed}")
        encoded = [encode_run(d, ("train", "val", "test")) for d in dirs]
        yield dirs, encoded
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("RSWB_CACHE_DIR", None)
        else:
            os.environ["RSWB_CACHE_DIR"] = old


def test_one_run_rescored_gives_its_recorded_test_numbers_under_every_rule(runs):
    from rswb.infer import rescored_metrics, two_way_scores
    from rswb.metrics.retrieval import DEFAULT_TIES, TIE_RULES

    dirs, encoded = runs
    recorded = json.loads((dirs[0] / "metrics.json").read_text())["test"]
    scores = two_way_scores(dirs[0])  # from the folder: loads and encodes the test split only
    assert scores.runs == 1 and scores.qbnorm_beta == {"i2t": None, "t2i": None}
    assert torch.equal(scores.t2i, scores.i2t.t())
    torch.testing.assert_close(two_way_scores(encoded[0]).i2t, scores.i2t)
    for rule in TIE_RULES:
        m = rescored_metrics(scores, ties=rule)
        prefix = "" if rule == DEFAULT_TIES else f"{rule}_"
        keys = [k for k in m if "_R@" in k or k == "mR"]
        assert {k: m[k] for k in keys} == pytest.approx({k: recorded[prefix + k] for k in keys})


def test_the_ensemble_averages_each_runs_cosine_matrix(runs):
    from rswb.infer import two_way_scores

    _, encoded = runs
    ens = two_way_scores(encoded, "test")
    cos = [F.normalize(e["test"].image, dim=1) @ F.normalize(e["test"].text, dim=1).t() for e in encoded]
    torch.testing.assert_close(ens.i2t, (cos[0] + cos[1]) / 2)
    assert ens.runs == 2 and torch.equal(ens.t2i, ens.i2t.t())
    # Runs of different splits are refused, not averaged.
    other = dict(encoded[1])
    other["test"] = dataclasses.replace(other["test"], captions=other["test"].captions[::-1])
    with pytest.raises(ValueError, match="splits differ"):
        two_way_scores([encoded[0], other], "test")


def test_qbnorm_uses_the_training_queries_of_each_direction_as_the_bank(runs):
    from rswb.infer import rescored_metrics, two_way_scores

    _, encoded = runs
    e = encoded[0]
    plain = two_way_scores(e, "test")
    both = two_way_scores(e, "test", 20.0)
    sim = e["test"].image @ e["test"].text.t()
    torch.testing.assert_close(both.i2t, dynamic_inverted_softmax(sim, e["train"].image @ e["test"].text.t(), 20.0))
    torch.testing.assert_close(both.t2i, dynamic_inverted_softmax(sim.t(), e["train"].text @ e["test"].image.t(), 20.0))
    # One direction only: the other keeps the plain scores and so its numbers.
    t2i_only = two_way_scores(e, "test", {"t2i": 20.0})
    assert torch.equal(t2i_only.i2t, plain.i2t) and torch.equal(t2i_only.t2i, both.t2i)
    m_plain, m_both, m_one = (rescored_metrics(s) for s in (plain, both, t2i_only))
    for k in m_one:
        if k.startswith("i2t_"):
            assert m_one[k] == m_plain[k]
        elif k.startswith("t2i_"):
            assert m_one[k] == m_both[k]
    recalls = [v for k, v in m_one.items() if "_R@" in k]
    assert m_one["mR"] == pytest.approx(sum(recalls) / 6)
    # The ensemble's bank is the ensemble's similarity of the training queries.
    ens = two_way_scores(encoded, "val", {"i2t": 10.0})
    bank = sum(x["train"].image @ x["val"].text.t() for x in encoded) / 2
    base = sum(x["val"].image @ x["val"].text.t() for x in encoded) / 2
    torch.testing.assert_close(ens.i2t, dynamic_inverted_softmax(base, bank, 10.0))
    with pytest.raises(ValueError, match="qbnorm_beta keys"):
        two_way_scores(e, "test", {"image": 10.0})


def test_the_rescore_benchmark_chooses_beta_on_validation(runs, tmp_path):
    from benchmarks.retrieval_rescore import BETAS, main
    from rswb.metrics.retrieval import DEFAULT_TIES, TIE_RULES

    dirs, _ = runs
    main(["--runs", *map(str, dirs), "--results", str(tmp_path), "--out", "r"])
    res = json.loads((tmp_path / "r.json").read_text())
    names = [c["name"] for c in res["configs"]]
    assert names == ["s0", "s0 + QB-Norm", "s1", "s1 + QB-Norm", "ensemble of 2", "ensemble of 2 + QB-Norm"]
    assert res["tie_rules"] == list(TIE_RULES) and res["select_split"] == "val"
    for c in res["configs"]:
        assert set(c["test"]) == set(TIE_RULES)
        if c["qbnorm_beta"] is None:
            continue
        sums = c["val_selection"]
        for d in ("i2t", "t2i"):  # the best validation sum, the smallest beta among equals
            best = max(round(s[d], 6) for s in sums.values())
            assert c["qbnorm_beta"][d] == min(b for b in BETAS if round(sums[str(b)][d], 6) == best)
    assert f"ties='{DEFAULT_TIES}'" in (tmp_path / "r.md").read_text()
