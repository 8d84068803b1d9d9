"""ScaledAdam + Eden against the reference package ``zipformer==0.1.3`` (icefall's code).

A toy model has parameters of every kind ScaledAdam treats differently:
matrices, a conv kernel, an embedding, biases, two same-shaped linears (one
stacked batch), scalars of shape () and (1,) (a batch of scalar parameters),
one scalar pushed against ``scalar_max``, a tensor below ``param_min_rms`` and
one at ``param_max_rms``. Both optimizers start from the same weights and see
the same losses; parameters, learning rates and optimizer states must agree at
every step, through a step where the loss is blown up 300x so that clipping
triggers.
"""

from __future__ import annotations

import copy
import functools
import io
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import nn
from zipformer_reference import load_reference

from icefall_spkd.optim import Eden, ScaledAdam, build_optimizer, get_parameter_groups_with_lrs

ref = load_reference()

STEPS = 60
# Loss x300 at these steps: the gradient norm far above the threshold. Step 15 is
# clipped against the threshold of step 10 (median of 10 norms, where icefall's
# median index 2 * (10 // 4) = 4 is not 10 // 2), step 45 against that of step 40.
SPIKE_STEPS = (15, 45)
# Largest parameter difference allowed against the reference: float32 rounding, about
# 10 ulps at the largest weights (|w| ~ 7); measured 1.2e-6. A broken rule gives far more.
ATOL = 5e-6


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(10, 6)
        self.lin1 = nn.Linear(6, 5)
        self.lin2 = nn.Linear(6, 5)  # same shapes as lin1: stacked with it
        self.conv = nn.Conv1d(3, 4, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))  # scalar, shape ()
        self.gain2 = nn.Parameter(torch.tensor(0.3))  # stacked with gain
        self.push = nn.Parameter(torch.tensor(9.97))  # driven up into scalar_max = 10
        self.offset = nn.Parameter(torch.tensor([0.2]))  # scalar, shape (1,)
        self.tiny = nn.Parameter(torch.full((3, 2), 1e-6))  # rms < param_min_rms
        big = torch.randn(4, 4, generator=g)
        self.big = nn.Parameter(big * (2.999 / big.pow(2).mean().sqrt()))  # rms at the max
        with torch.no_grad():
            for p in (self.emb.weight, self.lin1.weight, self.lin2.weight, self.conv.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)  # (B, T, 6)
        a = (self.lin1(h) * self.gain + self.lin2(h) * self.gain2 + self.offset).tanh()
        c = self.conv(x).transpose(1, 2)  # (B, T - 2, 4)
        loss = (a - 0.3).pow(2).mean() + 0.05 * (0.2 * c @ self.big - 0.5).pow(2).mean()
        loss = loss - 0.05 * self.big.pow(2).mean()  # drives big against param_max_rms
        loss = loss + 1e3 * (h[..., :3] @ self.tiny).mean() - 0.01 * self.push
        return loss


def _batch(step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 10, (4, 7), generator=g), torch.randn(4, 3, 9, generator=g)


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any, start: int, stop: int,
    on_step: Any = None, before_step: Any = None,
) -> List[List[float]]:
    """icefall's loop: step_epoch at epoch start, step_batch before each optimizer step."""
    lrs = []
    for step in range(start, stop):
        if step in (0, 30):
            sched.step_epoch(step // 30)
        ids, x = _batch(step)
        loss = model(ids, x) * (300.0 if step in SPIKE_STEPS else 1.0)
        opt.zero_grad()
        loss.backward()
        sched.step_batch(step)
        if before_step is not None:
            before_step(step)
        opt.step()
        lrs.append(list(sched.get_last_lr()))
        if on_step is not None:
            on_step(step)
    return lrs


def _opt_kwargs(period: int) -> Dict[str, Any]:
    return dict(lr=0.045, clipping_scale=2.0, clipping_update_period=period)


def _sched_kwargs() -> Dict[str, Any]:
    return dict(lr_batches=20, lr_epochs=1.5, warmup_batches=8, warmup_start=0.3)


def _clip_state(opt: torch.optim.Optimizer) -> Dict[str, Any]:
    """The group's clipping state (kept with the first parameter of the first stack)."""
    (state,) = [st for st in opt.state.values() if "model_norms" in st]
    return state


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _assert_states_close(ours: Dict[str, Any], theirs: Dict[str, Any]) -> None:
    assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]
    assert set(ours["state"]) == set(theirs["state"])
    for i, st in theirs["state"].items():
        assert set(ours["state"][i]) == set(st), i
        for key, val in st.items():
            if torch.is_tensor(val):
                torch.testing.assert_close(ours["state"][i][key], val, rtol=1e-4, atol=1e-6)
            else:
                assert ours["state"][i][key] == pytest.approx(val, rel=1e-5), (i, key)


@pytest.mark.parametrize("clipping_update_period", [100, 18])
def test_matches_reference(clipping_update_period: int) -> None:
    """Same parameters, lrs and optimizer state as the reference after every step.

    Period 100 (icefall's) estimates the clipping threshold at steps 10, 20, 40;
    period 18 at step 10 and then every 18 steps (the regular path)."""
    torch.manual_seed(0)
    a = Toy()
    b = copy.deepcopy(a)
    oa = ScaledAdam(a.named_parameters(), **_opt_kwargs(clipping_update_period))
    ob = ref.optim.ScaledAdam(b.named_parameters(), **_opt_kwargs(clipping_update_period))
    sa, sb = Eden(oa, **_sched_kwargs()), ref.optim.Eden(ob, **_sched_kwargs())
    clipped, diffs = [], []
    for step in range(STEPS):
        lr_b = _train(b, ob, sb, step, step + 1)
        lr_a = _train(a, oa, sa, step, step + 1)
        assert lr_a[0] == pytest.approx(lr_b[0], rel=1e-12), step
        if oa.last_clipping_factors[0] < 1.0:
            clipped.append(step)
        diffs.append(_max_diff(a, b))
    print(f"period {clipping_update_period}: max |param diff| {max(diffs):.2e}, clipped {clipped}")
    assert max(diffs) < ATOL, max(diffs)
    _assert_states_close(oa.state_dict(), ob.state_dict())
    # Clipping triggered at the spike, and as often in both optimizers.
    assert set(SPIKE_STEPS) <= set(clipped)
    assert _clip_state(ob)["num_clipped"] == _clip_state(oa)["num_clipped"]
    # The scalar was clamped at scalar_max.
    assert a.push.item() == 10.0 == b.push.item()


def test_clipping_rule_hand_computed() -> None:
    """The clipping threshold and factor, recomputed here from the rule: norm of
    the RMS-weighted gradients (RMS as of the last refresh: step 0, then every 4th
    step before its update), threshold = 2 x clipping_scale x sorted(norms of steps
    1..n)[2 * (n // 4)] at steps n = 10, 20, 40, factor = threshold / norm at the spikes."""
    torch.manual_seed(0)
    model = Toy()
    opt = ScaledAdam(model.named_parameters(), **_opt_kwargs(100))
    sched = Eden(opt, **_sched_kwargs())
    rms: Dict[str, torch.Tensor] = {}
    norms: Dict[int, float] = {}

    def measure(step: int) -> None:
        if step > 0:
            sq = 0.0
            for n, p in model.named_parameters():
                w = 0.1 if p.numel() == 1 else rms[n]  # scalar_lr_scale for scalars
                sq += (p.grad * w).pow(2).sum().item()
            norms[step] = sq**0.5
        if step % 4 == 3 or step == 0:
            rms.update({n: p.detach().pow(2).mean().sqrt() for n, p in model.named_parameters()})

    factors, thresholds = [], {}

    def after(step: int) -> None:
        factors.append(opt.last_clipping_factors[0])
        thresholds[step] = _clip_state(opt).get("model_norm_threshold") if step else None

    _train(model, opt, sched, 0, SPIKE_STEPS[-1] + 1, before_step=measure, on_step=after)
    for spike, estimated_at in zip(SPIKE_STEPS, (10, 40)):
        # icefall's median: element 2 * (n // 4) of the n sorted norms, doubled early on
        median = sorted(norms[s] for s in range(1, estimated_at + 1))[2 * (estimated_at // 4)]
        threshold = 2.0 * 2.0 * median
        assert thresholds[spike] == pytest.approx(threshold, rel=1e-5)
        expect = threshold / norms[spike]
        assert expect < 0.1
        assert factors[spike] == pytest.approx(expect, rel=1e-5)
    # before the first threshold (step 10) nothing is clipped, however large the norm
    assert factors[:10] == [1.0] * 10


def _run_to(stop: int, start_from: Any = None) -> Tuple[nn.Module, ScaledAdam, Eden]:
    torch.manual_seed(0)
    model = Toy()
    opt = ScaledAdam(model.named_parameters(), **_opt_kwargs(18))
    sched = Eden(opt, **_sched_kwargs())
    start = 0
    if start_from is not None:
        buf = io.BytesIO(start_from)
        ckpt = torch.load(buf, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start = ckpt["step"]
    _train(model, opt, sched, start, stop)
    return model, opt, sched


@functools.lru_cache(maxsize=1)
def _full_run() -> Tuple[nn.Module, ScaledAdam, Eden]:
    return _run_to(STEPS)


def _save(model: nn.Module, opt: Any, sched: Any, step: int) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(),
         "scheduler": sched.state_dict(), "step": step},
        buf,
    )
    return buf.getvalue()


@pytest.mark.parametrize("resume_at", [22, 41])
def test_state_dict_resumes_exactly(resume_at: int) -> None:
    """Save in the middle of a size-update block (22) / of a clipping period (41),
    reload into fresh objects, continue: bit-identical to the uninterrupted run."""
    full, full_opt, full_sched = _full_run()
    part, part_opt, part_sched = _run_to(resume_at)
    resumed, r_opt, r_sched = _run_to(STEPS, start_from=_save(part, part_opt, part_sched, resume_at))
    for (n, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert r_sched.get_last_lr() == full_sched.get_last_lr()
    assert r_sched.state_dict() == full_sched.state_dict() == {"epoch": 1, "batch": STEPS - 1}


def test_resumes_from_reference_state() -> None:
    """An icefall (reference) ScaledAdam state loads into ours and continues the same."""
    torch.manual_seed(0)
    a = Toy()
    b = copy.deepcopy(a)
    ob = ref.optim.ScaledAdam(b.named_parameters(), **_opt_kwargs(18))
    sb = ref.optim.Eden(ob, **_sched_kwargs())
    _train(b, ob, sb, 0, 30)
    a.load_state_dict(b.state_dict())
    oa = ScaledAdam(a.named_parameters(), **_opt_kwargs(18))
    sa = Eden(oa, **_sched_kwargs())
    oa.load_state_dict(copy.deepcopy(ob.state_dict()))
    sa.load_state_dict(sb.state_dict())
    _train(b, ob, sb, 30, STEPS)
    _train(a, oa, sa, 30, STEPS)
    assert _max_diff(a, b) < ATOL
    assert sa.get_last_lr() == pytest.approx(sb.get_last_lr(), rel=1e-12)


def test_parameter_groups_with_lr_scales_match_reference() -> None:
    """build_optimizer("scaled_adam") groups by lr as icefall's recipe does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    model[1].lr_scale = 0.5
    model[1][1].lr_scale = 0.2
    mine = get_parameter_groups_with_lrs(model, 0.045)
    theirs = ref.utils.get_parameter_groups_with_lrs(model, 0.045, include_names=True)
    as_map = lambda groups: {  # noqa: E731
        round(g["lr"], 12): [n for n, _ in g["named_params"]] for g in groups
    }
    assert as_map(mine) == as_map(theirs)
    assert sorted(as_map(mine)) == pytest.approx([0.045 * 0.1, 0.045 * 0.5, 0.045])
    opt = build_optimizer(model, lr=0.045, optimizer="scaled_adam")
    assert isinstance(opt, ScaledAdam)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.0045, 0.0225, 0.045])
    assert all(g["clipping_scale"] == 2.0 for g in opt.param_groups)
    assert isinstance(build_optimizer(model, lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, lr=1e-3, optimizer="sgd")


def test_stacked_parameters_write_back_and_untouched_grads() -> None:
    """Stacked (same-shape) parameters get their own rows back; p.grad is not modified."""
    torch.manual_seed(0)
    model = Toy()
    opt = ScaledAdam(model.named_parameters(), lr=0.045, clipping_scale=2.0)
    ids, x = _batch(0)
    model(ids, x).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
        if n not in ("tiny",):  # tiny's update is ~lr * 1e-5
            assert not torch.equal(p, before[n]), n
    # step 0: every non-scalar moves by (1 - b1) * lr * rms * sign(g) (Adam's first step)
    w = before["lin2.weight"]
    rms = w.pow(2).mean().sqrt()
    g = grads["lin2.weight"]
    expect = w - 0.1 * 0.045 * rms * g / (g.abs() + 1e-8)
    torch.testing.assert_close(model.lin2.weight.detach(), expect, rtol=1e-5, atol=1e-7)


def test_rejects_another_optimizers_state() -> None:
    """Resuming ScaledAdam from an AdamW checkpoint fails with a clear error."""
    model = nn.Linear(3, 2)
    adamw = build_optimizer(model, lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    adamw.step()
    opt = build_optimizer(model, lr=0.045, optimizer="scaled_adam")
    state = adamw.state_dict()
    state["param_groups"] = opt.state_dict()["param_groups"]
    with pytest.raises(ValueError, match="not ScaledAdam's.*--optimizer adamw"):
        opt.load_state_dict(state)


def test_matches_reference_on_a_zipformer() -> None:
    """The reference's own Zipformer2 transducer (hundreds of tensors, many stacked
    shapes, icefall's scalar parameters), random gradients, 12 steps, clipping on."""
    from zipformer_reference import reference_asr_model

    torch.manual_seed(0)
    b = reference_asr_model(
        num_encoder_layers="1,1,1,1,1,1", feedforward_dim="32,48,48,48,48,48",
        encoder_dim="16,24,24,24,24,24", encoder_unmasked_dim="16,16,16,16,16,16",
        num_heads="2,2,2,2,2,2", cnn_module_kernel="7,7,5,5,5,7", query_head_dim="8",
        value_head_dim="4", pos_dim=8, decoder_dim=16, joiner_dim=16, vocab_size=20,
    )
    a = copy.deepcopy(b)
    kw = dict(lr=0.045, clipping_scale=2.0, clipping_update_period=8)
    oa = ScaledAdam(a.named_parameters(), **kw)
    ob = ref.optim.ScaledAdam(b.named_parameters(), **kw)
    g = torch.Generator().manual_seed(0)
    factors = []
    for step in range(12):
        scale = 50.0 if step == 10 else 1.0  # clipped against the step-8 threshold
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=g) * 1e-2 * scale
            q.grad = p.grad.clone()
        oa.step()
        ob.step()
        factors.append(oa.last_clipping_factors[0])
    assert factors[10] < 0.1 and max(factors[:10] + factors[11:]) == 1.0
    assert len(oa.state) == len(ob.state) < len(list(a.parameters()))  # stacked
    diff = _max_diff(a, b)
    print(f"zipformer: {len(list(a.parameters()))} tensors, max |param diff| {diff:.2e}")
    assert diff < ATOL
    _assert_states_close(oa.state_dict(), ob.state_dict())
