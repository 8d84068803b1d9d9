"""Tests of icefall_spkd.kd against direct per-node loops and small hand derivations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_sampling import brute_force

from icefall_spkd import pruned_rnnt
from icefall_spkd.kd import SequenceRows, compute_kd_losses, sequence_kd
from icefall_spkd.kd_losses import (
    collapsed_kd_loss,
    full_ranges,
    node_weights_from_lattice,
    pruned_kd_loss,
    pruned_lattice_logprobs,
)
from icefall_spkd.sampling import node_occupancy

# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def full_lattice_kd_loss(zt, zs, boundary, tau=1.0):
    """Full-lattice KD, weight 1 per valid node: PKD with every u in the window."""
    B, T, U1, _ = zt.shape
    return pruned_kd_loss(zt, zs, full_ranges(B, T, U1, zt.device), boundary, tau)


def kl_ref(zt: torch.Tensor, zs: torch.Tensor, tau: float) -> float:
    pt = torch.softmax(zt.double() / tau, dim=-1)
    ps = torch.softmax(zs.double() / tau, dim=-1)
    return float((pt * (pt.log() - ps.log())).sum())


def loop_pruned_kd(zt, zs, ranges, boundary, tau, w=None) -> float:
    B, T, R, _ = zt.shape
    total = 0.0
    for b in range(B):
        U_b, T_b = int(boundary[b, 2]), int(boundary[b, 3])
        for t in range(T_b):
            for k in range(R):
                if int(ranges[b, t, k]) <= U_b:
                    wk = 1.0 if w is None else float(w[b, t, k])
                    total += wk * kl_ref(zt[b, t, k], zs[b, t, k], tau)
    return total * tau**2


def loop_collapsed(zt, zs, y, boundary, tau, blank=0) -> float:
    B, T, U1, _ = zt.shape
    total = 0.0
    for b in range(B):
        U_b, T_b = int(boundary[b, 2]), int(boundary[b, 3])
        for t in range(T_b):
            for u in range(U_b + 1):
                dists = []
                for z in (zt, zs):
                    p = torch.softmax(z[b, t, u].double() / tau, dim=-1)
                    others = torch.ones_like(p, dtype=torch.bool)
                    others[blank] = False
                    if u < U_b:
                        others[int(y[b, u])] = False
                        d = torch.stack([p[int(y[b, u])], p[blank], p[others].sum()])
                    else:
                        d = torch.stack([p[blank], p[others].sum()])
                    dists.append(d)
                pt, ps = dists
                keep = pt > 0  # an empty "rest" class contributes 0 log 0 = 0
                total += float((pt[keep] * (pt[keep].log() - ps[keep].log())).sum())
    return total * tau**2


def random_ranges(B, T, R, U, seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, max(U - R + 2, 1), (B, T), generator=g).sort(dim=1).values
    return start.unsqueeze(-1) + torch.arange(R).view(1, 1, R)


# ---------------------------------------------------------------------------
# pruned / full / collapsed losses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_pruned_kd_loss_matches_loop(tau):
    B, T, R, V, U = 3, 6, 3, 7, 4
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(B, T, R, V, generator=g) * 2
    zs = torch.randn(B, T, R, V, generator=g) * 2
    ranges = random_ranges(B, T, R, U, seed=1)
    boundary = torch.tensor([[0, 0, 4, 6], [0, 0, 1, 4], [0, 0, 2, 5]])
    w = torch.rand(B, T, R, generator=g)
    got = pruned_kd_loss(zt, zs, ranges, boundary, tau)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(loop_pruned_kd(zt, zs, ranges, boundary, tau), rel=1e-5)
    got_w = pruned_kd_loss(zt, zs, ranges, boundary, tau, node_weights=w)
    assert got_w.item() == pytest.approx(loop_pruned_kd(zt, zs, ranges, boundary, tau, w), rel=1e-5)


def _masked_positions(ranges, boundary):
    T = ranges.shape[1]
    t = torch.arange(T).view(1, T, 1)
    return (t >= boundary[:, 3].view(-1, 1, 1)) | (ranges > boundary[:, 2].view(-1, 1, 1))


def test_pruned_kd_padding_invariance_and_gradients():
    B, T, R, V, U = 3, 5, 3, 5, 3
    g = torch.Generator().manual_seed(2)
    zt = torch.randn(B, T, R, V, generator=g)
    zs = torch.randn(B, T, R, V, generator=g)
    ranges = random_ranges(B, T, R, U, seed=3)
    boundary = torch.tensor([[0, 0, 3, 5], [0, 0, 1, 3], [0, 0, 0, 2]])
    masked = _masked_positions(ranges, boundary)
    assert masked.any() and (~masked).any()
    ref = pruned_kd_loss(zt, zs, ranges, boundary, 2.0)

    zt2, zs2 = zt.clone(), zs.clone()
    zt2[masked] = float("nan")
    zs2[masked] = 1e30
    zt2.requires_grad_(True)
    zs2.requires_grad_(True)
    w = torch.rand(B, T, R, generator=g)
    out = pruned_kd_loss(zt2, zs2, ranges, boundary, 2.0)
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    out = out + pruned_kd_loss(zt2, zs2, ranges, boundary, 2.0, node_weights=w)
    out.backward()
    assert zt2.grad is None  # teacher never gets a gradient
    assert torch.isfinite(zs2.grad).all()
    assert (zs2.grad[masked] == 0).all()
    assert (zs2.grad[~masked].abs().sum(-1) > 0).all()


def test_losses_zero_for_identical_and_positive_otherwise():
    B, T, U, V = 2, 4, 3, 6
    g = torch.Generator().manual_seed(4)
    z = torch.randn(B, T, U + 1, V, generator=g)
    z2 = torch.randn(B, T, U + 1, V, generator=g)
    y = torch.randint(1, V, (B, U), generator=g)
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 1, 2]])
    ranges = random_ranges(B, T, 2, U, seed=5)
    zr, zr2 = z[:, :, :2], z2[:, :, :2]
    assert abs(pruned_kd_loss(zr, zr, ranges, boundary).item()) < 1e-6
    assert abs(full_lattice_kd_loss(z, z, boundary).item()) < 1e-6
    assert abs(collapsed_kd_loss(z, z, y, boundary).item()) < 1e-6
    assert pruned_kd_loss(zr, zr2, ranges, boundary).item() > 1e-3
    assert full_lattice_kd_loss(z, z2, boundary).item() > 1e-3
    assert collapsed_kd_loss(z, z2, y, boundary).item() > 1e-3


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_full_and_collapsed_match_loops(tau):
    B, T, U, V = 3, 4, 3, 6
    g = torch.Generator().manual_seed(6)
    zt = torch.randn(B, T, U + 1, V, generator=g) * 2
    zs = torch.randn(B, T, U + 1, V, generator=g) * 2
    y = torch.randint(1, V, (B, U), generator=g)
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 1, 3], [0, 0, 0, 2]])
    ranges_full = torch.arange(U + 1).view(1, 1, -1).expand(B, T, U + 1)
    ref_full = loop_pruned_kd(zt, zs, ranges_full, boundary, tau)
    assert full_lattice_kd_loss(zt, zs, boundary, tau).item() == pytest.approx(ref_full, rel=1e-5)
    ref_col = loop_collapsed(zt, zs, y, boundary, tau)
    zs_g = zs.clone().requires_grad_(True)
    zt_g = zt.clone().requires_grad_(True)
    got = collapsed_kd_loss(zt_g, zs_g, y, boundary, tau)
    assert got.item() == pytest.approx(ref_col, rel=1e-5)
    got.backward()
    assert zt_g.grad is None and torch.isfinite(zs_g.grad).all()


def test_collapsed_with_two_token_vocab_has_finite_gradient():
    """V = 2: at u < U_b the "rest" class is empty; loss and gradient stay finite."""
    zt = torch.randn(1, 3, 3, 2)
    zs = torch.randn(1, 3, 3, 2, requires_grad=True)
    y = torch.tensor([[1, 1]])
    boundary = torch.tensor([[0, 0, 2, 3]])
    loss = collapsed_kd_loss(zt, zs, y, boundary)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
    assert loss.item() == pytest.approx(loop_collapsed(zt, zs.detach(), y, boundary, 1.0), rel=1e-5)


# ---------------------------------------------------------------------------
# node weights on a teacher's pruned lattice
# ---------------------------------------------------------------------------


def _pruned_case(seed=7):
    B, T, U, V, R = 3, 6, 4, 6, 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(1, V, (B, U), generator=g)
    boundary = torch.tensor([[0, 0, 4, 6], [0, 0, 2, 5], [0, 0, 1, 3]])
    # window from a random "simple" lattice, as in training
    am = torch.randn(B, T, V, generator=g)
    lm = torch.randn(B, U + 1, V, generator=g)
    _, (pxg, pyg) = pruned_rnnt.rnnt_loss_simple(
        lm=lm, am=am, symbols=y, termination_symbol=0, boundary=boundary, return_grad=True
    )
    ranges = pruned_rnnt.get_rnnt_prune_ranges(pxg, pyg, boundary, R)
    logits = torch.randn(B, T, R, V, generator=g) * 2
    px, py = pruned_lattice_logprobs(logits, y, ranges, 0, boundary)
    return px, py, boundary, ranges


def test_node_weights_kinds():
    px, py, boundary, ranges = _pruned_case()
    B, T, R = ranges.shape
    T_b = boundary[:, 3].float()
    U_b = boundary[:, 2].float()
    t = torch.arange(T).view(1, T, 1)
    mask = (t < boundary[:, 3].view(-1, 1, 1)) & (ranges <= boundary[:, 2].view(-1, 1, 1))

    # independent references: enumeration of every alignment of the pruned lattice
    occ, vit = (r.float() for r in brute_force(px.double(), py.double(), boundary))
    # the pruned lattice keeps all of its mass inside the window
    in_window = torch.zeros(B)
    for b in range(B):
        for tt in range(T):
            for k in range(R):
                if mask[b, tt, k]:
                    in_window[b] += occ[b, ranges[b, tt, k], tt]
    torch.testing.assert_close(in_window, T_b + U_b, rtol=1e-5, atol=1e-5)

    for kind in ("uniform", "posterior", "viterbi", "sampled"):
        w = node_weights_from_lattice(
            kind,
            px,
            py,
            boundary,
            ranges,
            num_paths=4000,
            generator=torch.Generator().manual_seed(0),
        )
        assert w.shape == (B, T, R)
        torch.testing.assert_close(w.sum(dim=(1, 2)), T_b, rtol=1e-5, atol=1e-5)
        assert (w[~mask] == 0).all()
        if kind == "uniform":
            expected = mask.float() * (T_b / mask.sum(dim=(1, 2))).view(B, 1, 1)
            torch.testing.assert_close(w, expected)
        elif kind in ("posterior", "viterbi"):
            g = occ if kind == "posterior" else vit
            expected = torch.zeros(B, T, R)
            for b in range(B):
                for tt in range(T):
                    for k in range(R):
                        if mask[b, tt, k]:
                            expected[b, tt, k] = (
                                g[b, ranges[b, tt, k], tt] * T_b[b] / (T_b[b] + U_b[b])
                            )
            torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)
        else:  # sampled ~ posterior; 6-sigma binomial band, scaled like the weights
            post = node_weights_from_lattice("posterior", px, py, boundary, ranges)
            scale = (T_b / (T_b + U_b)).view(B, 1, 1)
            p = (post / scale).clamp(0, 1)
            tol = scale * (6 * torch.sqrt(p * (1 - p) / 4000) + 1 / 4000)
            assert ((w - post).abs() <= tol + 1e-6).all()

    with pytest.raises(ValueError):
        node_weights_from_lattice("bogus", px, py, boundary, ranges)


def test_pruned_lattice_logprobs_accepts_empty_sequences():
    B, T, V = 2, 4, 5
    logits = torch.randn(B, T, 2, V)
    y = torch.tensor([[3, 0], [2, 4]])
    boundary = torch.tensor([[0, 0, 0, 4], [0, 0, 2, 3]])
    ranges = torch.tensor([[0, 1]] * T).view(1, T, 2).repeat(B, 1, 1)
    ranges[1] = torch.tensor([[0, 1], [0, 1], [1, 2], [1, 2]])
    px, py = pruned_lattice_logprobs(logits, y, ranges, 0, boundary)
    occ = node_occupancy(px, py, boundary)
    assert torch.allclose(occ[0, 0], torch.ones(T)) and occ[0, 1:].sum() == 0
    assert occ[1].sum().item() == pytest.approx(5.0, rel=1e-5)
    # every sequence empty: S = 0
    px0, py0 = pruned_lattice_logprobs(
        logits[:, :, :1],
        torch.zeros(B, 0, dtype=torch.int64),
        torch.zeros(B, T, 1, dtype=torch.int64),
        0,
        torch.tensor([[0, 0, 0, 4], [0, 0, 0, 2]]),
    )
    assert px0.shape == (B, 0, T + 1) and py0.shape == (B, 1, T)
    w = node_weights_from_lattice(
        "posterior",
        px0,
        py0,
        torch.tensor([[0, 0, 0, 4], [0, 0, 0, 2]]),
        torch.zeros(B, T, 1, dtype=torch.int64),
    )
    assert torch.equal(w[:, :, 0], torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]]))


# ---------------------------------------------------------------------------
# the whole recipe, with the project's Transducer
# ---------------------------------------------------------------------------

V = 8


def _model(seed: int):
    presets = pytest.importorskip("icefall_spkd.models.presets")
    torch.manual_seed(seed)
    m = presets.build_model(
        dict(
            encoder_dim=16,
            num_encoder_layers=1,
            num_heads=2,
            feedforward_dim=32,
            cnn_module_kernel=3,
            decoder_dim=16,
            joiner_dim=16,
            vocab_size=V,
            feature_dim=8,
            dropout=0.0,
        )
    )
    with torch.no_grad():  # livelier distributions than the default init
        m.joiner.output_linear.weight.mul_(3.0)
    return m.eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, C = 3, 7, 16
    enc = torch.randn(B, T, C, generator=g)
    lens = torch.tensor([7, 5, 4])
    y = [[3, 5, 2], [1], [4, 4, 6, 7]]
    U = max(map(len, y))
    y_padded = torch.zeros(B, U, dtype=torch.int64)
    for b, s in enumerate(y):
        y_padded[b, : len(s)] = torch.tensor(s)
    y_lens = torch.tensor([len(s) for s in y])
    return enc, lens, y_padded, y_lens


def _params(**kw):
    p = dict(
        kd_loss="pkd",
        kd_sampler="none",
        kd_num_samples=2,
        kd_sample_temperature=1.0,
        kd_temperature=1.0,
        kd_prune_range=3,
        kd_ranges="teacher",
        kd_node_weights="uniform",
        kd_num_paths=8,
        prune_range=3,
        am_scale=0.0,
        lm_scale=0.0,
    )
    p.update(kw)
    return p


def _seq_kd(teacher, student, enc_t, enc_s, lens, y, y_lens, params, generator=None):
    """The KD term of one label sequence per row (as for sampled sequences)."""
    rows = SequenceRows.decode(teacher, student, enc_t, enc_s, lens, y, y_lens)
    return sequence_kd(teacher, student, rows, params, generator)


def _outputs(teacher, student, enc_t, enc_s, lens, y_padded, y_lens, R=3):
    with torch.no_grad():
        t_out = teacher.transducer_outputs(enc_t, lens, y_padded, y_lens, prune_range=R)
    s_out = student.transducer_outputs(enc_s, lens, y_padded, y_lens, prune_range=R)
    return t_out, s_out


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(kd_sampler="teacher", kd_node_weights="posterior"),
        dict(kd_sampler="batch", kd_node_weights="sampled"),
        dict(kd_sampler="nbest", kd_node_weights="viterbi", kd_ranges="student"),
        dict(kd_loss="full", kd_sampler="teacher"),
        dict(kd_loss="collapsed", kd_sampler="batch"),
    ],
)
def test_compute_kd_losses_zero_for_same_network_positive_otherwise(kw):
    teacher = _model(0)
    enc, lens, y_padded, y_lens = _batch()
    params = _params(**kw)
    t_out, s_out = _outputs(teacher, teacher, enc, enc, lens, y_padded, y_lens)
    same = compute_kd_losses(
        teacher, teacher, t_out, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(0)
    )
    assert abs(same["kd"].item()) < 1e-5
    assert abs(same["kd_samp"].item()) < 1e-5
    assert same["kd_frames"].item() == 16

    student = _model(1)
    enc_s = enc.clone().requires_grad_(True)
    t_out, s_out = _outputs(teacher, student, enc, enc_s, lens, y_padded, y_lens)
    out = compute_kd_losses(
        teacher, student, t_out, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(0)
    )
    assert out["kd"].item() > 1e-3
    if params["kd_sampler"] != "none":
        assert out["kd_samp"].item() > 1e-3
        assert "kd_samp_tokens" in out
    (out["kd"] + out["kd_samp"]).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert enc_s.grad is not None and torch.isfinite(enc_s.grad).all()
    assert student.joiner.output_linear.weight.grad.abs().sum() > 0


def test_pkd_with_window_covering_every_node_equals_full_kd():
    """kd_prune_range >= U_max + 1: the window is every u, uniform weight T_b/(T_b (U_b+1))."""
    teacher, student = _model(0), _model(1)
    enc, lens, y_padded, y_lens = _batch()
    t_out, s_out = _outputs(teacher, student, enc, enc, lens, y_padded, y_lens)
    U1 = y_padded.shape[1] + 1
    zt = _full_logits(teacher, enc, t_out.decoder_out)
    zs = _full_logits(student, enc, s_out.decoder_out)
    every_u = torch.arange(U1).view(1, 1, U1).expand(3, enc.shape[1], U1)
    expected = 0.0
    for b in range(3):
        bnd = t_out.boundary[b : b + 1]
        kl_sum = loop_pruned_kd(zt[b : b + 1], zs[b : b + 1], every_u[b : b + 1], bnd, 2.0)
        expected += kl_sum / (int(y_lens[b]) + 1)
    for which in ("teacher", "student"):
        params = _params(kd_prune_range=U1 + 2, kd_temperature=2.0, kd_ranges=which)
        out = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params)
        assert out["kd"].item() == pytest.approx(expected, rel=1e-4)

    # posterior weights over the full window: the teacher's full-lattice occupancy
    lp = torch.log_softmax(zt.double(), dim=-1)  # (B, T, U+1, V)
    py = lp[..., 0].transpose(1, 2)
    px = torch.gather(lp[:, :, :-1], 3, y_padded.view(3, 1, -1, 1).expand(3, 7, -1, 1))
    px = torch.nn.functional.pad(px.squeeze(3).transpose(1, 2), (0, 1), value=float("-inf"))
    occ = node_occupancy(px, py, t_out.boundary)  # (B, U+1, T)
    expected = 0.0
    for b in range(3):
        T_b, U_b = int(lens[b]), int(y_lens[b])
        for t in range(T_b):
            for u in range(U_b + 1):
                w = float(occ[b, u, t]) * T_b / (T_b + U_b)
                expected += w * kl_ref(zt[b, t, u], zs[b, t, u], 1.0)
    params = _params(kd_prune_range=U1 + 2, kd_node_weights="posterior")
    out = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params)
    assert out["kd"].item() == pytest.approx(expected, rel=1e-4)


def test_empty_sampled_sequences():
    """Empty sequences are a one-row lattice: KL at (t, 0) for t < T_b, weight 1 each."""
    teacher, student = _model(0), _model(1)
    enc, lens, _, _ = _batch()
    y = torch.tensor([[0, 0], [3, 4], [0, 0]])
    y_lens = torch.tensor([0, 2, 0])
    for kind in ("uniform", "posterior", "viterbi", "sampled"):
        params = _params(kd_prune_range=5, kd_node_weights=kind)
        got = _seq_kd(
            teacher, student, enc, enc, lens, y, y_lens, params, torch.Generator().manual_seed(0)
        )
        # reference: utterances 0 and 2 alone (row u = 0), plus utterance 1 alone
        dec_t = teacher.run_decoder(torch.zeros(1, 0, dtype=torch.int64))
        dec_s = student.run_decoder(torch.zeros(1, 0, dtype=torch.int64))
        r0 = torch.zeros(1, 7, 1, dtype=torch.int64)
        expected = 0.0
        for b in (0, 2):
            zt = teacher.joiner_on_ranges(enc[b : b + 1], dec_t, r0)
            zs = student.joiner_on_ranges(enc[b : b + 1], dec_s, r0)
            bnd = torch.tensor([[0, 0, 0, int(lens[b])]])
            expected += pruned_kd_loss(zt, zs, r0, bnd).item()
        one = _seq_kd(
            teacher,
            student,
            enc[1:2],
            enc[1:2],
            lens[1:2],
            y[1:2],
            y_lens[1:2],
            params,
            torch.Generator().manual_seed(0),
        )
        if kind != "sampled":  # sampled weights depend on the random stream
            assert got.item() == pytest.approx(expected + one.item(), rel=1e-4)

    # all sequences empty (U_max = 0)
    params = _params(kd_prune_range=5)
    got = _seq_kd(
        teacher,
        student,
        enc[:1],
        enc[:1],
        lens[:1],
        torch.zeros(1, 0, dtype=torch.int64),
        torch.tensor([0]),
        params,
        None,
    )
    zt = teacher.joiner_on_ranges(
        enc[:1],
        teacher.run_decoder(torch.zeros(1, 0, dtype=torch.int64)),
        torch.zeros(1, 7, 1, dtype=torch.int64),
    )
    zs = student.joiner_on_ranges(
        enc[:1],
        student.run_decoder(torch.zeros(1, 0, dtype=torch.int64)),
        torch.zeros(1, 7, 1, dtype=torch.int64),
    )
    ref = pruned_kd_loss(
        zt, zs, torch.zeros(1, 7, 1, dtype=torch.int64), torch.tensor([[0, 0, 0, 7]])
    )
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_teacher_sampler_with_all_blank_teacher_and_seeding():
    teacher, student = _model(0), _model(1)
    enc, lens, y_padded, y_lens = _batch()
    t_out, s_out = _outputs(teacher, student, enc, enc, lens, y_padded, y_lens)
    params = _params(kd_sampler="teacher", kd_num_samples=3)
    a = compute_kd_losses(
        teacher, student, t_out, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(5)
    )
    b = compute_kd_losses(
        teacher, student, t_out, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(5)
    )
    assert a["kd_samp"].item() == b["kd_samp"].item()

    blanky = copy.deepcopy(teacher)
    with torch.no_grad():
        blanky.joiner.output_linear.bias[0] = 100.0
    with torch.no_grad():
        t_out2 = blanky.transducer_outputs(enc, lens, y_padded, y_lens, prune_range=3)
    out = compute_kd_losses(
        blanky, student, t_out2, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(5)
    )
    assert out["kd_samp_empty"].item() == 1.0 and out["kd_samp_tokens"].item() == 0.0
    assert torch.isfinite(out["kd_samp"]) and out["kd_samp"].item() > 0


@pytest.mark.parametrize("kind", ["uniform", "posterior", "viterbi"])
def test_empty_reference_in_batch_equals_per_utterance_sum(kind):
    teacher, student = _model(0), _model(1)
    enc, lens, _, _ = _batch()
    seqs = [[3, 5], [], [4]]
    params = _params(kd_prune_range=4, kd_node_weights=kind)

    def run(idx):
        y = [seqs[i] for i in idx]
        U = max(map(len, y))
        y_padded = torch.zeros(len(idx), U, dtype=torch.int64)
        for b, s in enumerate(y):
            y_padded[b, : len(s)] = torch.tensor(s, dtype=torch.int64)
        y_lens = torch.tensor([len(s) for s in y])
        e, n = enc[idx], lens[idx]
        t_out, s_out = _outputs(teacher, student, e, e, n, y_padded, y_lens)
        return compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params)["kd"]

    whole = run([0, 1, 2])
    parts = sum(run([i]).item() for i in range(3))
    assert torch.isfinite(whole) and whole.item() == pytest.approx(parts, rel=1e-4)


@pytest.mark.parametrize("kind", ["uniform", "posterior", "viterbi"])
def test_duplicate_samples_run_once_with_same_loss_and_gradient(monkeypatch, kind):
    """Repeated (utterance, sequence) draws are run once and counted: same value and gradient."""
    import icefall_spkd.kd as kd_mod

    teacher, student = _model(0), _model(1)
    enc, lens, y_padded, y_lens = _batch()
    # N = 4 draws for 3 utterances; utterance 0 draws [3, 5] three times,
    # utterance 2 draws the empty sequence twice.
    samples = [
        [[3, 5], [1, 2], []],
        [[3, 5], [1], [4]],
        [[3, 5], [1, 2], []],
        [[6], [1], [4, 4]],
    ]
    monkeypatch.setattr(kd_mod, "_sampled_sequences", lambda *a, **k: samples)
    params = _params(kd_sampler="teacher", kd_num_samples=4, kd_node_weights=kind)
    enc_s = enc.clone().requires_grad_(True)
    t_out, s_out = _outputs(teacher, student, enc, enc_s, lens, y_padded, y_lens)
    out = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params, None)
    rows = sum(len({tuple(s[b]) for s in samples}) for b in range(3))
    assert out["kd_samp_distinct"].item() == pytest.approx(rows / 12)
    (g_dedup,) = torch.autograd.grad(out["kd_samp"], enc_s)

    # reference: each of the N draws on its own, averaged
    enc_r = enc.clone().requires_grad_(True)
    ref = 0.0
    for seqs in samples:
        y = torch.zeros(3, max(map(len, seqs)), dtype=torch.int64)
        for b, s in enumerate(seqs):
            y[b, : len(s)] = torch.tensor(s, dtype=torch.int64)
        yl = torch.tensor([len(s) for s in seqs])
        ref = ref + _seq_kd(teacher, student, enc, enc_r, lens, y, yl, params)
    ref = ref / len(samples)
    (g_ref,) = torch.autograd.grad(ref, enc_r)
    assert out["kd_samp"].item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g_dedup, g_ref, rtol=1e-4, atol=1e-6)


def test_shared_nodes_give_the_same_loss_and_gradients(monkeypatch):
    """--kd-share-nodes: each distinct (utterance, frame, context) node once; nothing changes.

    The samples share prefixes, so their windows repeat nodes; the shared
    computation must give the loss and every student gradient (encoder output,
    decoder, joiner) of the plain one, and must really have merged nodes.
    """
    import icefall_spkd.kd as kd_mod

    teacher, student = _model(0), _model(1)
    enc, lens, y_padded, y_lens = _batch()
    samples = [
        [[3, 5, 2], [1, 2], [4, 4, 6]],
        [[3, 5, 1], [1], [4, 4, 6, 7]],
        [[3, 6], [1, 2, 2], [4]],
        [[3, 5, 2, 2], [2], []],
    ]
    monkeypatch.setattr(kd_mod, "_sampled_sequences", lambda *a, **k: samples)

    def run(share: bool):
        student.zero_grad()
        enc_s = enc.clone().requires_grad_(True)
        params = _params(kd_sampler="teacher", kd_num_samples=4, kd_share_nodes=share)
        t_out, s_out = _outputs(teacher, student, enc, enc_s, lens, y_padded, y_lens)
        out = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params, None)
        out["kd_samp"].backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        return out, enc_s.grad.clone(), grads

    shared, g_enc_shared, g_shared = run(True)
    plain, g_enc_plain, g_plain = run(False)
    assert "kd_samp_node_share" not in plain
    assert 0.3 < shared["kd_samp_node_share"].item() < 0.9  # nodes were merged
    assert shared["kd_samp"].item() == pytest.approx(plain["kd_samp"].item(), rel=1e-5)
    torch.testing.assert_close(g_enc_shared, g_enc_plain, rtol=1e-4, atol=1e-6)
    assert set(g_shared) == set(g_plain) and any(k.startswith("decoder.") for k in g_plain)
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_shared_nodes_are_keyed_by_utterance_frame_and_context():
    """Two rows with one context but different utterances (or contexts) must not merge."""
    import icefall_spkd.kd as kd_mod

    teacher, student = _model(0), _model(1)
    torch.manual_seed(3)
    T, C = 4, 16
    enc = torch.randn(2, T, C)
    # rows 0 and 1: same utterance, same tokens -> every node shared;
    # row 2: the other utterance with the same tokens -> nothing shared with them.
    t_enc = torch.stack([enc[0], enc[0], enc[1]])
    y = torch.tensor([[3, 5], [3, 5], [3, 5]])
    dec = teacher.run_decoder(y)
    s_dec = student.run_decoder(y)
    ranges = torch.tensor([[0, 1], [0, 1], [1, 2], [1, 2]]).expand(3, T, 2).contiguous()
    weights = torch.ones(3, T, 2)
    rows = SequenceRows(t_enc, t_enc, torch.full((3,), T), y, torch.full((3,), 2), dec, s_dec)
    loss, distinct, nodes = kd_mod._shared_node_kd(
        teacher, student, rows, ranges, weights, torch.tensor([0, 0, 1]), 1.0
    )
    assert nodes == 3 * T * 2 and distinct == 2 * T * 2
    # the same as the plain pruned loss over the three rows
    zt = teacher.joiner_on_ranges(t_enc, dec, ranges)
    zs = student.joiner_on_ranges(t_enc, s_dec, ranges)
    boundary = torch.tensor([[0, 0, 2, T]] * 3)
    assert loss.item() == pytest.approx(
        kd_mod.pruned_kd_loss(zt, zs, ranges, boundary).item(), rel=1e-5
    )


# ---------------------------------------------------------------------------
# the same nodes, the teacher's ranges: a brute-force reference
# ---------------------------------------------------------------------------


def _full_logits(model, enc, dec):
    """Joiner logits at EVERY lattice node, ``(B, T, U+1, V)``, computed directly."""
    return model.joiner(enc.unsqueeze(2), dec.unsqueeze(1)).detach()


def _teacher_window_kd_by_hand(teacher, student, enc_t, enc_s, lens, y_padded, y_lens, R):
    """sum_b sum_{t < T_b} sum_{u in the teacher's window, u <= U_b} T_b / n_b * KL, by loops.

    The window is the teacher's own prune ranges from its transducer loss
    (``transducer_outputs``, a different code path from the KD code's). Both
    models' logits are read off their full joiner outputs, so a node is the
    same (t, u) for both by construction; ``n_b`` counts utterance b's nodes.
    """
    with torch.no_grad():
        t_out = teacher.transducer_outputs(enc_t, lens, y_padded, y_lens, prune_range=R)
        zt = _full_logits(teacher, enc_t, t_out.decoder_out)
        zs = _full_logits(student, enc_s, student.run_decoder(y_padded))
    total = 0.0
    for b in range(enc_t.shape[0]):
        T_b, U_b = int(lens[b]), int(y_lens[b])
        nodes = [
            (t, int(u)) for t in range(T_b) for u in t_out.ranges[b, t].tolist() if u <= U_b
        ]
        for t, u in nodes:
            total += T_b / len(nodes) * kl_ref(zt[b, t, u], zs[b, t, u], 1.0)
    return total, t_out.ranges


def test_kd_uses_the_teacher_window_for_both_models(monkeypatch):
    """Different teacher and student, a window (R_kd = 2) narrower than the lattice.

    The reference term and the sampled term must both equal the brute-force
    value on the teacher's window. Using the student's window, or the
    student's logits from its own transducer loss, gives another value
    (checked: each of those mutations of kd.py makes this test fail).
    """
    import icefall_spkd.kd as kd_mod

    teacher, student = _model(0), _model(1)
    enc, lens, y_padded, y_lens = _batch()
    enc_s = torch.randn(enc.shape, generator=torch.Generator().manual_seed(9))
    R = 2
    t_out, s_out = _outputs(teacher, student, enc, enc_s, lens, y_padded, y_lens, R=R)
    params = _params(kd_prune_range=R, kd_sampler="none")
    expected, t_ranges = _teacher_window_kd_by_hand(
        teacher, student, enc, enc_s, lens, y_padded, y_lens, R
    )
    assert not torch.equal(t_ranges, s_out.ranges)  # the windows differ: the test can tell
    got = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params)
    assert got["kd"].item() == pytest.approx(expected, rel=1e-5)

    # the sampled sequences: windows recomputed per sequence, again the teacher's
    samples = [[[5, 1, 2], [6], [4, 6, 2, 7]], [[2], [1, 1], [7, 7, 3]]]
    monkeypatch.setattr(kd_mod, "_sampled_sequences", lambda *a, **k: samples)
    for share in (True, False):
        params = _params(kd_prune_range=R, kd_sampler="teacher", kd_num_samples=2,
                         kd_share_nodes=share)  # fmt: skip
        got = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params)
        expected = 0.0
        for seqs in samples:
            y = torch.zeros(3, max(map(len, seqs)), dtype=torch.int64)
            for b, seq in enumerate(seqs):
                y[b, : len(seq)] = torch.tensor(seq)
            y_l = torch.tensor([len(seq) for seq in seqs])
            expected += _teacher_window_kd_by_hand(teacher, student, enc, enc_s, lens, y, y_l, R)[0]
        assert got["kd_samp"].item() == pytest.approx(expected / len(samples), rel=1e-5)


# ---------------------------------------------------------------------------
# one unit of KD weight per frame per label sequence, for every method
# ---------------------------------------------------------------------------

#: KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3), by hand.
_UNIFORM_KL = 0.5 * math.log(4.0 / 3.0)


def _constant_model(seed: int, bias: list):
    """A two-token transducer whose joiner outputs ``bias`` at every node."""
    presets = pytest.importorskip("icefall_spkd.models.presets")
    torch.manual_seed(seed)
    m = presets.build_model(
        dict(encoder_dim=16, num_encoder_layers=1, num_heads=2, feedforward_dim=32,
             cnn_module_kernel=3, decoder_dim=16, joiner_dim=16, vocab_size=2,
             feature_dim=8, dropout=0.0)
    )  # fmt: skip
    with torch.no_grad():
        m.joiner.output_linear.weight.zero_()
        m.joiner.output_linear.bias.copy_(torch.tensor(bias))
    return m.eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(kd_loss="full"),
        dict(kd_loss="collapsed"),
        dict(kd_node_weights="viterbi"),
        dict(kd_node_weights="uniform"),
        dict(kd_node_weights="posterior"),
        dict(kd_node_weights="sampled"),
        dict(kd_node_weights="uniform", kd_share_nodes=False),
    ],
)
@pytest.mark.parametrize("sampler", ["teacher", "batch", "nbest"])
def test_every_kd_term_weighs_one_unit_per_frame(kw, sampler):
    """Where the KL is the same at every node, each term is KL * T_b per sequence.

    The teacher's joiner gives p = [1/2, 1/2] everywhere, the student's
    q = [1/4, 3/4] (blank first). With two tokens the collapsed classes
    {y_(u+1), blank, rest} are {token, blank, nothing} before the last row
    and {blank, token} on it, so the collapsed KL is the full one too.
    """
    teacher = _constant_model(0, [0.0, 0.0])
    student = _constant_model(1, [0.0, math.log(3.0)])
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(3, 7, 16, generator=g)
    lens = torch.tensor([7, 5, 4])
    y_padded = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    y_lens = torch.tensor([3, 1, 0])
    params = _params(kd_sampler=sampler, kd_num_samples=3, kd_prune_range=2, kd_nbest_beam=4, **kw)
    t_out, s_out = _outputs(teacher, student, enc, enc, lens, y_padded, y_lens, R=2)
    out = compute_kd_losses(teacher, student, t_out, s_out, y_padded, y_lens, params, g)
    frames = float(lens.sum())
    assert out["kd"].item() == pytest.approx(_UNIFORM_KL * frames, rel=1e-5)
    assert out["kd_samp"].item() == pytest.approx(_UNIFORM_KL * frames, rel=1e-5)
