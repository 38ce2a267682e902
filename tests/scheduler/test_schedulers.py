"""Every scheduler plugin: contract, learning-rate curves against their closed forms (and a few values by hand),
checks of user errors, and resume: state_dict round-trips (through torch.save / weights_only load) continue with
the same learning rates as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import math
import pkgutil

import pytest
import torch
from torch import nn

import config
import scheduler as scheduler_package

SCHEDULERS = sorted(m.name for m in pkgutil.iter_modules(scheduler_package.__path__) if not m.name.startswith("_"))
LR = 0.1
OPTIONS = {"lr_decay": 0.5, "decay_interval": 2, "max_epoch": 4, "warmup_epochs": 1.0, "lr_min": 0.001,
           "iters_per_epoch": 5}


def make_optimizer(groups: int = 2) -> torch.optim.Optimizer:
    params = [nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=LR, momentum=0.9)


def build(name: str, optimizer: torch.optim.Optimizer, **overrides: float):
    factory = importlib.import_module(f"scheduler.{name}").Scheduler
    options = {**OPTIONS, **overrides, "optimizer": optimizer}
    return factory(**{p: options[p] for p in inspect.signature(factory).parameters})


def lr_curve(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate used by each of ``steps`` consecutive steps (epochs or iterations)."""
    lrs = []
    for _ in range(steps):
        group_lrs = {g["lr"] for g in optimizer.param_groups}
        assert len(group_lrs) == 1, "every parameter group follows the same schedule"
        lrs.append(group_lrs.pop())
        optimizer.step()
        scheduler.step()
    return lrs


def test_required_schedulers_are_discovered() -> None:
    assert {"steplr", "cosine", "exponential"} <= set(SCHEDULERS)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_contract(name: str) -> None:
    factory = importlib.import_module(f"scheduler.{name}").Scheduler
    params = list(inspect.signature(factory).parameters.values())
    assert params[0].name == "optimizer" and params[-1].name == "iters_per_epoch"
    config_keys = {f.name for f in dataclasses.fields(config.Config)}
    for p in params[1:-1]:
        assert p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        assert p.name in config_keys and p.default is p.empty, p.name
    scheduler, step_per = build(name, make_optimizer())
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert step_per in ("epoch", "iteration")


def test_steplr_curve() -> None:
    optimizer = make_optimizer()
    scheduler, step_per = build("steplr", optimizer, lr_decay=0.5, decay_interval=2)
    assert step_per == "epoch"
    expected = [LR * 0.5 ** (epoch // 2) for epoch in range(7)]
    assert lr_curve(optimizer, scheduler, 7) == pytest.approx(expected, rel=1e-12)
    assert expected[:5] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_steplr_dtdy_recipe_values() -> None:
    # x0.75 every 15 epochs: epoch 0-14 at 1e-3, 15-29 at 7.5e-4, 30 at 5.625e-4.
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler, _ = build("steplr", optimizer, lr_decay=0.75, decay_interval=15)
    lrs = lr_curve(optimizer, scheduler, 31)
    assert lrs[14] == pytest.approx(1e-3) and lrs[15] == pytest.approx(7.5e-4) and lrs[30] == pytest.approx(5.625e-4)


def cosine_formula(i: int, warmup: int, total: int, lr_min: float) -> float:
    if i < warmup:
        return LR * (i + 1) / warmup
    progress = min(1.0, (i - warmup) / (total - warmup))
    return lr_min + (LR - lr_min) * (1 + math.cos(math.pi * progress)) / 2


def test_cosine_curve() -> None:
    optimizer = make_optimizer()
    # 4 epochs of 4 iterations, warm-up half an epoch: W = 2, T = 16.
    scheduler, step_per = build("cosine", optimizer, max_epoch=4, iters_per_epoch=4, warmup_epochs=0.5, lr_min=0.001)
    assert step_per == "iteration"
    lrs = lr_curve(optimizer, scheduler, 20)
    assert lrs == pytest.approx([cosine_formula(i, 2, 16, 0.001) for i in range(20)], rel=1e-12)
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(0.0505)  # halfway through the cosine: (lr + lr_min) / 2
    assert lrs[16:] == pytest.approx([0.001] * 4)


def test_cosine_without_warmup_starts_at_lr() -> None:
    optimizer = make_optimizer()
    scheduler, _ = build("cosine", optimizer, max_epoch=2, iters_per_epoch=3, warmup_epochs=0.0, lr_min=0.0)
    lrs = lr_curve(optimizer, scheduler, 7)
    assert lrs == pytest.approx([cosine_formula(i, 0, 6, 0.0) for i in range(7)], abs=1e-15)
    assert lrs[0] == LR and lrs[3] == pytest.approx(LR / 2) and lrs[6] == pytest.approx(0.0, abs=1e-15)


def test_exponential_curve() -> None:
    optimizer = make_optimizer()
    # 2 epochs of 5 iterations, warm-up 0.4 epoch: W = 2, T = 10; lr 0.1 -> 0.001.
    scheduler, step_per = build("exponential", optimizer, max_epoch=2, iters_per_epoch=5, warmup_epochs=0.4,
                                lr_min=0.001)
    assert step_per == "iteration"
    lrs = lr_curve(optimizer, scheduler, 14)
    expected = [LR * 0.01 ** (min(i, 10) / 10) * min(1.0, (i + 1) / 2) for i in range(14)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(0.05) and lrs[5] == pytest.approx(0.01) and lrs[10:] == pytest.approx([0.001] * 4)


@pytest.mark.parametrize("name,overrides,match", [
    ("steplr", {"lr_decay": 0.0}, "lr_decay"),
    ("steplr", {"decay_interval": 0}, "decay_interval"),
    ("cosine", {"warmup_epochs": 4.0}, "warmup_epochs"),
    ("cosine", {"lr_min": 0.5}, "lr_min"),
    ("cosine", {"max_epoch": 0, "warmup_epochs": 0.0}, "max_epoch"),
    ("exponential", {"lr_min": 0.0}, "lr_min"),
    ("exponential", {"warmup_epochs": -1.0}, "warmup_epochs"),
])
def test_user_errors(name: str, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, make_optimizer(), **overrides)


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("stop", [1, 7])
def test_resume_reproduces_the_uninterrupted_curve(name: str, stop: int) -> None:
    optimizer = make_optimizer()
    scheduler, _ = build(name, optimizer)
    uninterrupted = lr_curve(optimizer, scheduler, 25)

    optimizer = make_optimizer()
    scheduler, _ = build(name, optimizer)
    first = lr_curve(optimizer, scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # as the trainer loads checkpoints

    optimizer = make_optimizer()
    scheduler, _ = build(name, optimizer)  # a fresh run: its constructor has already stepped once
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    resumed = first + lr_curve(optimizer, scheduler, 25 - stop)
    assert resumed == pytest.approx(uninterrupted, rel=1e-12)
    assert len(set(uninterrupted)) > 2  # the curve really changes over these steps


def test_the_margin_ramp_counts_epochs_from_one_as_wespeaker():
    """WeSpeaker's MarginScheduler starts the ramp at iteration (increase_start_epoch - 1) * epoch_iter and fixes the
    margin at (fix_start_epoch - 1) * epoch_iter: with 20/40 the margin moves during epochs 20..39 (1-based)."""
    from scheduler._margin import MarginSchedule

    ramp = MarginSchedule(0.2, 20, 40)
    assert ramp.at(18.9) == 0.0 and ramp.at(19.0) == 0.0  # through the 19th epoch
    assert 0.0 < ramp.at(19.5) < 0.2  # rising during the 20th
    assert ramp.at(38.99) < 0.2 and ramp.at(39.0) == 0.2  # reached at the start of the 40th
    assert MarginSchedule(0.3, 0, 0).at(0.0) == 0.3 and not MarginSchedule(0.3, 0, 0).enabled
    assert MarginSchedule(0.3, 1, 1).at(0.0) == 0.3  # a step at the very start: no ramp
