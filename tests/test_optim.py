"""Tests for icefall_spkd.optim (Eden) and icefall_spkd.metrics."""

from __future__ import annotations

import pytest
import torch

from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.optim import Eden, build_optimizer, eden_lr

# Hand-computed Eden factors. Pythagorean triples make the fourth roots exact:
#   batch 4, lr_batches 3: ((16 + 9) / 9) ** -0.25 = sqrt(3 / 5) = 0.7745966692414834
#   epoch 3, lr_epochs 4:  ((9 + 16) / 16) ** -0.25 = sqrt(4 / 5) = 0.8944271909999159
#   both:                  sqrt(12 / 25) = 0.6928203230275509
#   batch == lr_batches:   2 ** -0.25 = 0.8408964152537145
SQRT_3_5 = 0.7745966692414834
SQRT_4_5 = 0.8944271909999159
SQRT_12_25 = 0.6928203230275509
TWO_M_QUARTER = 0.8408964152537145


@pytest.mark.parametrize(
    "batch,epoch,expect",
    [
        (0, 0, 0.045),
        (4, 0, 0.045 * SQRT_3_5),  # 0.034856850115866754
        (0, 3, 0.045 * SQRT_4_5),  # 0.04024922359499622
        (4, 3, 0.031176914536239790),  # 0.045 * sqrt(12/25)
        (3, 0, 0.045 * TWO_M_QUARTER),
    ],
)
def test_eden_hand_computed(batch: int, epoch: int, expect: float) -> None:
    assert eden_lr(0.045, batch, epoch, 3, 4) == pytest.approx(expect, rel=1e-12)
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=0.045)  # two groups: decay / no decay
    sched = Eden(opt, lr_batches=3, lr_epochs=4, warmup_batches=0)
    sched.step_epoch(epoch)
    sched.step_batch(batch)
    assert sched.get_last_lr() == pytest.approx([expect, expect], rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()


def test_eden_warmup_is_icefalls() -> None:
    """icefall's default: 500 batches, linear from 0.5 x; lr set at construction."""
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    sched = Eden(opt, lr_batches=3, lr_epochs=4)
    assert sched.warmup_batches == 500 and sched.warmup_start == 0.5
    assert sched.get_last_lr()[0] == 0.5  # batch 0
    sched.step_batch(4)  # warm-up 0.5 + 0.5 * 4 / 500 = 0.504
    assert sched.get_last_lr()[0] == pytest.approx(0.504 * SQRT_3_5, rel=1e-12)
    sched.step_batch(500)  # warm-up over: factor 1 at batch == warmup_batches
    assert sched.get_last_lr()[0] == pytest.approx(((500**2 + 9) / 9) ** -0.25, rel=1e-12)
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    sched = Eden(opt, lr_batches=3, lr_epochs=4, warmup_batches=5, warmup_start=0.2)
    sched.step_epoch(3)
    sched.step_batch(4)  # warm-up 0.2 + 0.8 * 4 / 5 = 0.84
    assert sched.get_last_lr()[0] == pytest.approx(0.84 * SQRT_12_25, rel=1e-12)
    assert eden_lr(1.0, 4, 3, 3, 4, 5, 0.2) == pytest.approx(0.84 * SQRT_12_25, rel=1e-12)
    sched.step_batch()  # no argument: batch + 1 = 5, warm-up over
    assert sched.batch == 5
    assert sched.get_last_lr()[0] == pytest.approx(((25 + 9) / 9) ** -0.25 * SQRT_4_5)


def test_eden_state_dict_counters_only() -> None:
    """As icefall's: the state is the counters; base lrs come from the optimizer."""
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    sched = Eden(opt, lr_batches=3, lr_epochs=4, warmup_batches=0)
    sched.step_epoch(3)
    sched.step_batch(4)
    state = sched.state_dict()
    assert state == {"epoch": 3, "batch": 4}
    opt2 = build_optimizer(torch.nn.Linear(2, 2), lr=2.0)  # a changed --base-lr applies
    sched2 = Eden(opt2, lr_batches=3, lr_epochs=4, warmup_batches=0)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr()[0] == pytest.approx(2.0 * SQRT_12_25, rel=1e-12)
    # a checkpoint of the older format (every attribute) still loads
    sched2.load_state_dict({"batch": 0, "epoch": 0, "base_lrs": [9.0], "lr_batches": 1})
    assert sched2.get_last_lr()[0] == 2.0 and sched2.lr_batches == 3
    with pytest.raises(KeyError, match="not an Eden"):
        sched2.load_state_dict({"step": 3})


def test_eden_rejects_bad_settings() -> None:
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    with pytest.raises(ValueError, match="lr_batches"):
        Eden(opt, lr_batches=0, lr_epochs=4)
    with pytest.raises(ValueError, match="warmup_start"):
        Eden(opt, lr_batches=3, lr_epochs=4, warmup_start=1.5)


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
