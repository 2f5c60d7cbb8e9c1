"""rswb.engine.schedule against an independent per-step formula, and the lr the optimiser actually sees."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from rswb.config import TrainConfig
from rswb.engine.schedule import LRSchedule, build_optimizer, build_scheduler


def reference_factor(kind, step, total, per_epoch, warmup=0, m=0.0, step_epochs=30, gamma=0.1):
    """The lr multiplier written out case by case, straight from the documented formulas."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "step":
        epoch = step // per_epoch
        return gamma ** (epoch // step_epochs)
    decay_steps = total - warmup
    p = (step - warmup) / decay_steps if decay_steps > 0 else 1.0
    p = min(p, 1.0)
    if kind == "cosine":
        return m + (1 - m) * (1 + math.cos(math.pi * p)) / 2
    assert kind == "linear"
    return 1 - (1 - m) * p


CASES = [
    # kind, epochs, steps per epoch, warm-up steps, min_lr_ratio, step_epochs, gamma
    ("cosine", 5, 7, 0, 0.0, 30, 0.1),
    ("cosine", 5, 7, 10, 0.1, 30, 0.1),
    ("cosine", 3, 4, 12, 0.0, 30, 0.1),  # warm-up spans the whole run
    ("linear", 4, 5, 0, 0.0, 30, 0.1),
    ("linear", 4, 5, 3, 0.25, 30, 0.1),
    ("step", 9, 3, 0, 0.0, 2, 0.5),
    ("step", 9, 3, 4, 0.0, 3, 0.1),
    ("constant", 3, 5, 0, 0.0, 30, 0.1),
    ("constant", 3, 5, 6, 0.0, 30, 0.1),
]


@pytest.mark.parametrize(("kind", "epochs", "per_epoch", "warmup", "m", "step_epochs", "gamma"), CASES)
def test_lr_schedule_matches_reference(kind, epochs, per_epoch, warmup, m, step_epochs, gamma):
    total = epochs * per_epoch
    sched = LRSchedule(kind, total, per_epoch, warmup, m, step_epochs, gamma)
    # A few steps past the end stay at the final value (undefined when warm-up fills the whole run).
    for step in range(total + 3 if warmup < total else total):
        ref = reference_factor(kind, step, total, per_epoch, warmup, m, step_epochs, gamma)
        assert sched(step) == pytest.approx(ref, rel=1e-12, abs=1e-15), step


def test_lr_schedule_hand_computed():
    # cosine over 4 steps after 2 warm-up steps, m = 0: warm-up 1/2, 1, then (1 + cos(pi k/4)) / 2.
    s = LRSchedule("cosine", total_steps=6, steps_per_epoch=3, warmup_steps=2)
    expected = [0.5, 1.0, 1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0]
    assert [s(k) for k in range(7)] == pytest.approx(expected, abs=1e-12)
    lin = LRSchedule("linear", total_steps=4, steps_per_epoch=1, min_lr_ratio=0.2)
    assert [lin(k) for k in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    step = LRSchedule("step", total_steps=10, steps_per_epoch=2, step_epochs=2, step_gamma=0.1)
    assert [step(k) for k in range(10)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_lr_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule("exp", 10, 1)
    for kwargs in ({"total_steps": 0, "steps_per_epoch": 1}, {"total_steps": 5, "steps_per_epoch": 0},
                   {"total_steps": 5, "steps_per_epoch": 1, "warmup_steps": -1}):
        with pytest.raises(ValueError, match="total_steps >= 1"):
            LRSchedule("cosine", **kwargs)


def test_lr_schedule_dict_holds_only_plain_values():
    s = LRSchedule("step", 10, 2, 1, 0.1, 3, 0.5)
    assert all(isinstance(v, (int, float, str)) for v in vars(s).values())


def _optimizer(lr=0.1, n_groups=1, optimizer="sgd", **cfg):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 2) for _ in range(n_groups)]
    groups = [{"params": layer.parameters(), "lr_mult": float(10**i)} for i, layer in enumerate(layers)]
    return build_optimizer(groups, TrainConfig(lr=lr, optimizer=optimizer, **cfg)), layers


@pytest.mark.parametrize(
    ("schedule", "epochs", "per_epoch", "warmup_epochs", "m"),
    [("cosine", 4, 5, 1.5, 0.1), ("linear", 3, 4, 0.25, 0.0), ("step", 6, 2, 0.5, 0.0), ("constant", 2, 3, 0.4, 0.0)],
)
def test_optimizer_sees_scheduled_lr(schedule, epochs, per_epoch, warmup_epochs, m):
    """The lr of every group at optimiser step k is base_lr * lr_mult * factor(k); fractional warm-up is rounded."""
    cfg = TrainConfig(lr=0.2, optimizer="sgd", schedule=schedule, epochs=epochs, warmup_epochs=warmup_epochs,
                      min_lr_ratio=m, step_epochs=2, step_gamma=0.5)
    torch.manual_seed(0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = build_optimizer([{"params": a.parameters()}, {"params": b.parameters(), "lr_mult": 100.0}], cfg)
    sched = build_scheduler(opt, cfg, per_epoch)
    warmup = round(warmup_epochs * per_epoch)
    total = epochs * per_epoch
    for k in range(total):
        f = reference_factor(schedule, k, total, per_epoch, warmup, m, 2, 0.5)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * f, rel=1e-12), k
        assert opt.param_groups[1]["lr"] == pytest.approx(20.0 * f, rel=1e-12), k
        opt.step()  # (no gradients: a no-op update, keeps the "step before scheduler" order)
        sched.step()


def test_fractional_warmup_rounds_to_steps():
    opt, _ = _optimizer(lr=1.0)
    sched = build_scheduler(opt, TrainConfig(lr=1.0, optimizer="sgd", epochs=2, warmup_epochs=0.5), 6)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # 0.5 epoch of 6 steps = 3 warm-up steps
    assert lrs[3] == pytest.approx(1.0)  # first decay step: p = 0


def test_build_optimizer_groups_and_lr_mult():
    torch.manual_seed(0)
    backbone, proxies, frozen = nn.Linear(4, 3), nn.Parameter(torch.randn(5, 3)), nn.Linear(2, 2)
    frozen.requires_grad_(False)
    partly = nn.Linear(3, 3)
    partly.bias.requires_grad_(False)
    groups = [
        {"params": backbone.parameters()},
        {"params": proxies, "lr_mult": 100.0, "weight_decay": 0.0},  # a single tensor, not its rows
        {"params": frozen.parameters(), "lr_mult": 5.0},  # nothing trainable: dropped
        {"params": partly.parameters(), "weight_decay": 0.5},
        {"params": []},  # empty: dropped
    ]
    opt = build_optimizer(groups, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 3
    g0, g1, g2 = opt.param_groups
    assert [p is q for p, q in zip(g0["params"], backbone.parameters())] == [True, True]
    assert len(g1["params"]) == 1 and g1["params"][0] is proxies
    assert len(g2["params"]) == 1 and g2["params"][0] is partly.weight
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 0.1, 1e-3])
    assert [g["lr_mult"] for g in opt.param_groups] == [1.0, 100.0, 1.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.5]
    # The caller's dicts are not modified.
    assert "params" in groups[1] and groups[1]["lr_mult"] == 100.0


def test_build_optimizer_plain_parameters_and_kinds():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(model.parameters(), TrainConfig(optimizer="SGD", lr=0.5, momentum=0.8, weight_decay=0.1))
    assert isinstance(sgd, torch.optim.SGD)
    assert len(sgd.param_groups) == 1 and len(sgd.param_groups[0]["params"]) == 2
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.5, 0.8, 0.1)
    adam = build_optimizer([{"params": model.parameters()}], TrainConfig(optimizer="adam", weight_decay=0.2))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 0.2


def test_build_optimizer_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"optimizer must be adamw, adam or sgd, got 'lamb'"):
        build_optimizer([{"params": model.parameters()}], TrainConfig(optimizer="lamb"))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([{"params": model.parameters()}], TrainConfig())
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], TrainConfig())


def test_lr_mult_actually_scales_the_update():
    """One SGD step: the proxies (x100) move 100 times further than the backbone for the same gradient."""
    w1 = nn.Parameter(torch.zeros(3))
    w2 = nn.Parameter(torch.zeros(3))
    opt = build_optimizer([{"params": [w1]}, {"params": [w2], "lr_mult": 100.0}],
                          TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0))
    (w1.sum() + w2.sum()).backward()
    opt.step()
    torch.testing.assert_close(w1.detach(), torch.full((3,), -0.01))
    torch.testing.assert_close(w2.detach(), torch.full((3,), -1.0))


def test_scheduler_state_round_trip_and_resume():
    cfg = TrainConfig(lr=0.3, optimizer="sgd", schedule="cosine", epochs=4, warmup_epochs=0.5, min_lr_ratio=0.05)
    per_epoch = 6

    def make():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = build_optimizer([{"params": model.parameters(), "lr_mult": 2.0}], cfg)
        return model, opt, build_scheduler(opt, cfg, per_epoch)

    def train_step(model, opt, sched, k):
        x = torch.full((2, 3), 0.1 * (k % 3 + 1))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()

    # Uninterrupted run.
    full_model, opt, sched = make()
    full = []
    for k in range(4 * per_epoch):
        full.append(opt.param_groups[0]["lr"])
        train_step(full_model, opt, sched, k)

    # Stop after 9 steps, save through torch.save / weights_only load, resume in fresh objects.
    model, opt, sched = make()
    first = []
    for k in range(9):
        first.append(opt.param_groups[0]["lr"])
        train_step(model, opt, sched, k)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    lambdas = state["sched"]["lr_lambdas"]
    assert lambdas[0]["kind"] == "cosine" and lambdas[0]["warmup_steps"] == 3
    assert state["sched"]["last_epoch"] == 9

    model2, opt2, sched2 = make()
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    rest = []
    for k in range(9, 4 * per_epoch):
        rest.append(opt2.param_groups[0]["lr"])
        train_step(model2, opt2, sched2, k)
    assert first + rest == full  # bit-identical lrs
    torch.testing.assert_close(model2.weight, full_model.weight, rtol=0, atol=0)
    # The reference formula agrees too (base lr 0.3 x lr_mult 2).
    ref = [0.6 * reference_factor("cosine", k, 24, per_epoch, 3, 0.05) for k in range(24)]
    assert full == pytest.approx(ref, rel=1e-12)
