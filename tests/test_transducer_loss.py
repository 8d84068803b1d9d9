"""Transducer losses checked against independent references.

- brute-force RNN-T likelihood: enumeration of all alignments (tiny case) and a
  plain-torch log-sum-exp lattice recursion written here;
- full loss == pruned loss when the prune range covers every symbol;
- the empty-reference path == the backend's own loss wrappers;
- shift invariance of the smoothed simple loss;
- empty references give finite losses and gradients.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from icefall_spkd import pruned_rnnt
from icefall_spkd.models import Transducer, build_model
from icefall_spkd.utils import pad_token_ids

torch.set_num_threads(1)

V = 7


def _model(seed: int = 0) -> Transducer:
    torch.manual_seed(seed)
    m = build_model(
        dict(
            encoder_dim=32,
            num_encoder_layers=1,
            num_heads=2,
            feedforward_dim=48,
            cnn_module_kernel=3,
            decoder_dim=24,
            joiner_dim=16,
            vocab_size=V,
            dropout=0.0,
        )
    )
    return m.eval()


def _batch(ys: list[list[int]], x_lens: list[int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(ys), max(x_lens), 80, generator=g)
    y_padded, y_lens = pad_token_ids(ys)
    return x, torch.tensor(x_lens), y_padded, y_lens


def _full_log_probs(model: Transducer, encoder_out, y_padded) -> torch.Tensor:
    """(B, T, U+1, V) log-softmax of the model's full joiner output."""
    dec = model.run_decoder(y_padded)
    return model.joiner(encoder_out.unsqueeze(2), dec.unsqueeze(1)).log_softmax(-1).double()


def brute_force_nll(lp: torch.Tensor, y: list[int], T: int, blank: int = 0) -> torch.Tensor:
    """-log P(y) by a lattice recursion in plain torch (regular RNN-T).

    ``lp`` (T_any, U_any+1, V) log-probs; node (t, u) emits y[u] (stay at t) or
    blank (go to t+1); the sequence ends with a blank from (T-1, U).
    """
    U = len(y)
    neg_inf = torch.tensor(-math.inf, dtype=lp.dtype)
    alpha = [[neg_inf] * (U + 1) for _ in range(T)]
    alpha[0][0] = torch.tensor(0.0, dtype=lp.dtype)
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1][u] + lp[t - 1, u, blank])
            if u > 0:
                terms.append(alpha[t][u - 1] + lp[t, u - 1, y[u - 1]])
            alpha[t][u] = torch.logsumexp(torch.stack(terms), dim=0)
    return -(alpha[T - 1][U] + lp[T - 1, U, blank])


def enumerate_nll(lp: torch.Tensor, y: list[int], T: int, blank: int = 0) -> torch.Tensor:
    """-log P(y) by summing over every alignment explicitly (tiny T, U only).

    An alignment is an ordering of T blanks and U symbols ending with a blank;
    it is given by which of the first T+U-1 slots hold the U symbols.
    """
    U = len(y)
    scores = []
    for sym_slots in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        s = torch.tensor(0.0, dtype=lp.dtype)
        for slot in range(T + U):
            if slot in sym_slots:
                s = s + lp[t, u, y[u]]
                u += 1
            else:
                s = s + lp[t, u, blank]
                t += 1
        assert (t, u) == (T, U)
        scores.append(s)
    return -torch.logsumexp(torch.stack(scores), dim=0)


def test_recursion_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 4, V, generator=g, dtype=torch.float64).log_softmax(-1)
    for y, T in [([1, 2, 3], 4), ([5], 3), ([], 2), ([2, 2], 1)]:
        a = brute_force_nll(lp, y, T)
        b = enumerate_nll(lp, y, T)
        torch.testing.assert_close(a, b)


YS = [[1, 2, 3, 4], [5], [], [6, 6, 2]]
XL = [40, 35, 23, 30]  # -> T' = 9, 8, 5, 6


def test_full_loss_equals_brute_force():
    model = _model()
    x, x_lens, y_padded, y_lens = _batch(YS, XL)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        full = model.full_rnnt_loss(enc, enc_lens, y_padded, y_lens, reduction="none")
        lp = _full_log_probs(model, enc, y_padded)
    for b, y in enumerate(YS):
        ref = brute_force_nll(lp[b], y, int(enc_lens[b]))
        torch.testing.assert_close(full[b].double(), ref, rtol=1e-5, atol=1e-4)


def test_full_loss_equals_backend_rnnt_loss():
    """On a batch without empty references, full_rnnt_loss == the backend's rnnt_loss."""
    model = _model()
    ys = [y for y in YS if y]
    xl = [xl for xl, y in zip(XL, YS) if y]
    x, x_lens, y_padded, y_lens = _batch(ys, xl)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        full = model.full_rnnt_loss(enc, enc_lens, y_padded, y_lens)
        logits = model.joiner(enc.unsqueeze(2), model.run_decoder(y_padded).unsqueeze(1))
        boundary = model.boundary(y_lens, enc_lens)
        ref = pruned_rnnt.rnnt_loss(logits, y_padded, 0, boundary, reduction="sum")
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("with_empty", [False, True])
def test_pruned_equals_full_when_range_covers_all(with_empty: bool):
    model = _model()
    ys = YS if with_empty else [y for y in YS if y]
    xl = XL if with_empty else [xl for xl, y in zip(XL, YS) if y]
    x, x_lens, y_padded, y_lens = _batch(ys, xl)
    u_max = y_padded.shape[1]
    enc, enc_lens = model.forward_encoder(x, x_lens)
    out = model.transducer_outputs(enc, enc_lens, y_padded, y_lens, prune_range=u_max + 1)
    assert out.ranges.shape == (len(ys), enc.shape[1], u_max + 1)
    full = model.full_rnnt_loss(enc, enc_lens, y_padded, y_lens)
    torch.testing.assert_close(out.pruned_loss, full, rtol=1e-5, atol=1e-4)
    # Same gradients too.
    g_pruned = torch.autograd.grad(out.pruned_loss, list(model.joiner.parameters()), retain_graph=True)
    g_full = torch.autograd.grad(full, list(model.joiner.parameters()))
    for a, b in zip(g_pruned, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pruned_loss_is_upper_bound_when_pruned():
    """Pruning removes paths: the pruned NLL is >= the full NLL."""
    model = _model()
    x, x_lens, y_padded, y_lens = _batch(YS, XL)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        out = model.transducer_outputs(enc, enc_lens, y_padded, y_lens, prune_range=2)
        full = model.full_rnnt_loss(enc, enc_lens, y_padded, y_lens)
    assert out.ranges.shape[-1] == 2
    assert out.pruned_loss >= full - 1e-4


def test_empty_path_equals_backend_wrappers():
    """The two-step path used for empty references == rnnt_loss_smoothed / rnnt_loss_pruned."""
    model = _model()
    ys = [y for y in YS if y]
    B, T, U = len(ys), 9, max(len(y) for y in ys)
    g = torch.Generator().manual_seed(3)
    am = torch.randn(B, T, V, generator=g)
    lm = torch.randn(B, U + 1, V, generator=g)
    y_padded, y_lens = pad_token_ids(ys)
    boundary = model.boundary(y_lens, torch.tensor([9, 7, 5]))
    for am_scale, lm_scale in [(0.0, 0.0), (0.25, 0.1)]:
        a_loss, (a_px, a_py) = model._simple_loss(lm, am, y_padded, boundary, am_scale, lm_scale, False)
        b_loss, (b_px, b_py) = model._simple_loss(lm, am, y_padded, boundary, am_scale, lm_scale, True)
        torch.testing.assert_close(a_loss, b_loss)
        torch.testing.assert_close(a_px, b_px)
        torch.testing.assert_close(a_py, b_py)
    ranges = model._prune_ranges(a_px, a_py, boundary, 3)
    logits = torch.randn(B, T, 3, V, generator=g)
    torch.testing.assert_close(
        model._pruned_loss(logits, y_padded, ranges, boundary, False),
        model._pruned_loss(logits, y_padded, ranges, boundary, True),
    )


@pytest.mark.parametrize("am_scale,lm_scale", [(0.0, 0.0), (0.25, 0.25)])
@pytest.mark.parametrize("with_empty", [False, True])
def test_simple_loss_shift_invariance(am_scale: float, lm_scale: float, with_empty: bool):
    """Adding c[b,t] to am[b,t,:] and d[b,u] to lm[b,u,:] changes nothing (log-softmax of the sum)."""
    model = _model()
    ys = YS if with_empty else [y for y in YS if y]
    B, T = len(ys), 9
    y_padded, y_lens = pad_token_ids(ys)
    U = y_padded.shape[1]
    boundary = model.boundary(y_lens, torch.tensor([9, 8, 5, 6][:B]))
    g = torch.Generator().manual_seed(4)
    am = torch.randn(B, T, V, generator=g)
    lm = torch.randn(B, U + 1, V, generator=g)
    c = 10 * torch.randn(B, T, 1, generator=g)
    d = 10 * torch.randn(B, U + 1, 1, generator=g)
    loss0, (px0, py0) = model._simple_loss(lm, am, y_padded, boundary, am_scale, lm_scale, with_empty)
    loss1, (px1, py1) = model._simple_loss(lm + d, am + c, y_padded, boundary, am_scale, lm_scale, with_empty)
    torch.testing.assert_close(loss0, loss1, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(px0, px1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(py0, py1, rtol=1e-4, atol=1e-4)
    # And it is not invariant to a per-token change (the test can fail).
    e = torch.zeros(1, 1, V)
    e[..., 0] = 3.0
    loss2, _ = model._simple_loss(lm, am + e, y_padded, boundary, am_scale, lm_scale, with_empty)
    assert not torch.allclose(loss0, loss2, rtol=1e-3)


def test_empty_references_finite_loss_and_grads():
    model = _model().train()
    x, x_lens, _, _ = _batch(YS, XL)
    for ys in (YS, [[], [], [], []]):
        model.zero_grad()
        simple, pruned = model(x, x_lens, ys, prune_range=3, am_scale=0.1, lm_scale=0.1)
        assert torch.isfinite(simple) and torch.isfinite(pruned)
        (simple + pruned).backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        assert model.encoder.layers[0].ff1.net[0].weight.grad.abs().sum() > 0
    # All-empty batch: the only path is T_b blanks at u = 0.
    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        y_padded, y_lens = pad_token_ids([[], [], [], []])
        out = model.transducer_outputs(enc, enc_lens, y_padded, y_lens, prune_range=5)
        lp = _full_log_probs(model, enc, y_padded)
    assert out.ranges.shape == (4, enc.shape[1], 1)
    ref = sum(-lp[b, : int(enc_lens[b]), 0, 0].sum() for b in range(4))
    torch.testing.assert_close(out.pruned_loss.double(), ref, rtol=1e-5, atol=1e-4)


def test_transducer_outputs_contract():
    model = _model()
    x, x_lens, y_padded, y_lens = _batch(YS, XL)
    enc, enc_lens = model.forward_encoder(x, x_lens)
    out = model.transducer_outputs(enc, enc_lens, y_padded, y_lens, prune_range=3)
    B, T = enc.shape[:2]
    U = y_padded.shape[1]
    assert out.decoder_out.shape == (B, U + 1, 24)
    assert out.boundary.dtype == torch.int64
    assert out.boundary.tolist() == [[0, 0, len(y), int(t)] for y, t in zip(YS, enc_lens)]
    assert out.px_grad.shape == (B, U, T + 1) and out.py_grad.shape == (B, U + 1, T)
    assert out.ranges.shape == (B, T, 3) and out.ranges.dtype == torch.int64
    assert out.logits.shape == (B, T, 3, V) and out.logits.dtype == torch.float32
    assert out.simple_loss.dim() == 0 and out.pruned_loss.dim() == 0
    # Occupancies: every path crosses each frame's blank once, so py_grad sums to T_b.
    torch.testing.assert_close(out.py_grad.sum(dim=(1, 2)), enc_lens.float())
    torch.testing.assert_close(out.px_grad.sum(dim=(1, 2)), y_lens.float())
    # joiner_on_ranges == the full joiner gathered at the ranges.
    full = model.joiner(enc.unsqueeze(2), out.decoder_out.unsqueeze(1))  # (B, T, U+1, V)
    idx = out.ranges.unsqueeze(-1).expand(B, T, 3, V)
    torch.testing.assert_close(out.logits, torch.gather(full, 2, idx), rtol=1e-5, atol=1e-5)
    # The returned occupancies survive backward (the backend scales its own copies in place).
    px = out.px_grad.clone()
    (out.simple_loss + out.pruned_loss).backward()
    torch.testing.assert_close(out.px_grad, px)


def test_losses_float32_under_autocast():
    model = _model()
    x, x_lens, _, _ = _batch(YS, XL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        simple, pruned = model(x, x_lens, YS, prune_range=3)
    assert simple.dtype == torch.float32 and pruned.dtype == torch.float32
    assert torch.isfinite(simple) and torch.isfinite(pruned)
