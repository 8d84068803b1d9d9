"""Tests for icefall_spkd.optim (Eden) and icefall_spkd.metrics."""

from __future__ import annotations

import pytest
import torch

from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.optim import Eden, build_optimizer, eden_lr


def _formula(base: float, b: float, e: float, B: float, E: float) -> float:
    return base * ((b**2 + B**2) / B**2) ** -0.25 * ((e**2 + E**2) / E**2) ** -0.25


@pytest.mark.parametrize("batch,epoch", [(0, 0), (1, 0), (5000, 0), (12345, 3), (100000, 20)])
def test_eden_matches_formula(batch: int, epoch: int) -> None:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.05)
    sched = Eden(opt, lr_batches=5000, lr_epochs=6)
    sched.step_epoch(epoch)
    sched.step_batch(batch)
    expect = _formula(0.05, batch, epoch, 5000, 6)
    for lr in sched.get_last_lr():
        assert lr == pytest.approx(expect, rel=1e-12)
    assert eden_lr(0.05, batch, epoch, 5000, 6) == pytest.approx(expect, rel=1e-12)


def test_eden_known_points() -> None:
    # at batch == lr_batches the batch factor is 2 ** -0.25
    assert eden_lr(1.0, 10, 0, 10, 6) == pytest.approx(2**-0.25)
    assert eden_lr(1.0, 0, 6, 10, 6) == pytest.approx(2**-0.25)
    assert eden_lr(1.0, 0, 0, 10, 6) == 1.0


def test_eden_warmup_and_state_dict() -> None:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0)
    sched = Eden(opt, lr_batches=100, lr_epochs=2, warmup_batches=10, warmup_start=0.5)
    assert sched.get_last_lr()[0] == pytest.approx(0.5)
    sched.step_batch(5)
    assert sched.get_last_lr()[0] == pytest.approx(0.75 * _formula(1.0, 5, 0, 100, 2))
    sched.step_batch(10)
    assert sched.get_last_lr()[0] == pytest.approx(_formula(1.0, 10, 0, 100, 2))
    state = sched.state_dict()
    opt2 = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    sched2 = Eden(opt2, lr_batches=100, lr_epochs=2, warmup_batches=10)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert "optimizer" not in state


def test_metrics_tracker() -> None:
    a = MetricsTracker({"frames": 10, "loss": 20.0})
    b = MetricsTracker({"frames": 30, "loss": 20.0})
    c = a * 0.5 + b
    assert c["frames"] == 35 and c["loss"] == 30.0
    d = dict(c.norm_items())
    assert d["frames"] == 35 and d["loss"] == pytest.approx(30 / 35)
    assert "loss=" in str(c)
    c.reduce("cpu")  # no process group: unchanged
    assert c["loss"] == 30.0
