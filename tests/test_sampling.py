"""Tests of icefall_spkd.sampling against independent brute-force references.

References enumerate every alignment of tiny lattices (every placement of the
``S_b`` emits among the first ``S_b + T_b - 1`` moves; the last move is the
terminal blank) and every per-frame choice sequence of a tiny transducer.

Monte Carlo tolerances: a node's visit count over ``M`` independent paths is
Binomial(M, gamma) (a path visits a node at most once), and a sequence's count
over ``M`` independent samples is Binomial(M, p). We allow
``6 * sqrt(p (1 - p) / M) + 1 / M``: a 6-sigma band (two-sided normal tail
~2e-9 per quantity, so < 1e-6 over the few hundred quantities tested) plus one
count of slack for the discreteness of tiny p. Generators are seeded, so the
tests are deterministic anyway.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Tuple

import pytest
import torch

from icefall_spkd.sampling import (
    nbest_sequences,
    node_occupancy,
    rotate_batch,
    sample_alignments,
    sample_sequences,
    viterbi_alignment,
)

# ---------------------------------------------------------------------------
# brute force over alignments
# ---------------------------------------------------------------------------


def enumerate_alignments(S_b: int, T_b: int):
    """Yield (moves, nodes): moves is a tuple of 'e'/'b', nodes the decision nodes (u, t)."""
    n = S_b + T_b
    for pos in itertools.combinations(range(n - 1), S_b):
        pos = set(pos)
        moves = tuple("e" if i in pos else "b" for i in range(n))
        u = t = 0
        nodes = []
        for m in moves:
            nodes.append((u, t))
            if m == "e":
                u += 1
            else:
                t += 1
        assert (u, t) == (S_b, T_b)
        yield moves, nodes


def path_score(px, py, b, moves) -> float:
    u = t = 0
    s = 0.0
    for m in moves:
        if m == "e":
            s += float(px[b, u, t])
            u += 1
        else:
            s += float(py[b, u, t])
            t += 1
    return s


def brute_force(px, py, boundary) -> Tuple[torch.Tensor, torch.Tensor]:
    """(occupancy, viterbi) by enumeration; viterbi ties: reversed moves lexicographically
    largest with blank > emit (the rule documented in sampling.py)."""
    B, S, T1 = px.shape
    T = T1 - 1
    occ = torch.zeros(B, S + 1, T, dtype=torch.float64)
    vit = torch.zeros(B, S + 1, T, dtype=torch.float64)
    for b in range(B):
        S_b, T_b = int(boundary[b, 2]), int(boundary[b, 3])
        paths = list(enumerate_alignments(S_b, T_b))
        scores = torch.tensor([path_score(px, py, b, m) for m, _ in paths], dtype=torch.float64)
        if not torch.isfinite(scores).any():
            continue
        post = torch.softmax(scores, dim=0)
        for p, (_, nodes) in zip(post.tolist(), paths):
            for u, t in nodes:
                occ[b, u, t] += p
        best = scores.max()
        cands = [paths[i] for i in range(len(paths)) if scores[i] == best]
        # blank > emit: 'b' < 'e' as characters, so compare on a mapped key
        key = lambda mn: tuple(1 if m == "b" else 0 for m in reversed(mn[0]))  # noqa: E731
        _, nodes = max(cands, key=key)
        for u, t in nodes:
            vit[b, u, t] = 1.0
    return occ, vit


def random_lattice(B, S, T, boundary, seed, garbage=True, dtype=torch.float64):
    """Random normalised-looking log-probs; padded entries get garbage (NaN / large)."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(B, S, T + 1, generator=g, dtype=dtype) * 1.5 - 1.0
    py = torch.randn(B, S + 1, T, generator=g, dtype=dtype) * 1.5 - 1.0
    if garbage:
        for b in range(B):
            S_b, T_b = int(boundary[b, 2]), int(boundary[b, 3])
            px[b, S_b:, :] = float("nan")
            px[b, :, T_b:] = 7.0  # must be ignored: no emission on/after frame T_b
            py[b, S_b + 1 :, :] = float("nan")
            py[b, :, T_b:] = 5.0
    return px, py


CASES = [
    # (B, S, T, boundaries)
    (4, 3, 4, [[0, 0, 3, 4], [0, 0, 1, 2], [0, 0, 0, 3], [0, 0, 2, 1]]),
    (2, 1, 5, [[0, 0, 1, 5], [0, 0, 0, 5]]),
    (3, 4, 3, [[0, 0, 4, 3], [0, 0, 4, 1], [0, 0, 2, 3]]),
    (1, 0, 4, [[0, 0, 0, 4]]),
    (2, 5, 2, [[0, 0, 5, 2], [0, 0, 3, 2]]),
]


def _valid(boundary, S, T):
    u = torch.arange(S + 1).view(1, -1, 1)
    t = torch.arange(T).view(1, 1, -1)
    return (u <= boundary[:, 2].view(-1, 1, 1)) & (t < boundary[:, 3].view(-1, 1, 1))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_node_occupancy_and_viterbi_match_enumeration(case):
    B, S, T, bnd = CASES[case]
    boundary = torch.tensor(bnd, dtype=torch.int64)
    px, py = random_lattice(B, S, T, boundary, seed=case)
    occ_ref, vit_ref = brute_force(px, py, boundary)

    occ = node_occupancy(px, py, boundary)
    assert occ.shape == (B, S + 1, T)
    torch.testing.assert_close(occ, occ_ref, rtol=1e-9, atol=1e-9)
    # every alignment makes T_b + U_b decisions
    torch.testing.assert_close(
        occ.sum(dim=(1, 2)), (boundary[:, 2] + boundary[:, 3]).to(torch.float64)
    )
    assert (occ[~_valid(boundary, S, T)] == 0).all()

    vit = viterbi_alignment(px, py, boundary)
    assert torch.equal(vit, vit_ref)
    torch.testing.assert_close(
        vit.sum(dim=(1, 2)), (boundary[:, 2] + boundary[:, 3]).to(torch.float64)
    )

    # float32 input gives float32 output close to the reference
    occ32 = node_occupancy(px.float(), py.float(), boundary)
    assert occ32.dtype == torch.float32
    torch.testing.assert_close(occ32.double(), occ_ref, rtol=1e-4, atol=1e-5)


def test_pruned_style_lattice_with_minus_inf():
    """-inf arcs (as in a pruned lattice) are respected: no mass on impossible paths."""
    B, S, T = 2, 4, 4
    boundary = torch.tensor([[0, 0, 4, 4], [0, 0, 3, 3]])
    px, py = random_lattice(B, S, T, boundary, seed=11)
    # a window of width 2 starting at u = t (clamped): forbid arcs leaving it
    for b in range(B):
        for t in range(T):
            lo = min(t, int(boundary[b, 2]) - 1)
            for u in range(S + 1):
                if not (lo <= u <= lo + 1):
                    py[b, u, t] = float("-inf")
                    if u < S:
                        px[b, u, t] = float("-inf")
                elif u == lo + 1 and u < S:
                    px[b, u, t] = float("-inf")
    occ_ref, vit_ref = brute_force(px, py, boundary)
    occ = node_occupancy(px, py, boundary)
    torch.testing.assert_close(occ, occ_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(occ.sum(dim=(1, 2)), torch.tensor([8.0, 6.0], dtype=torch.float64))
    assert torch.equal(viterbi_alignment(px, py, boundary), vit_ref)


def test_no_finite_path_gives_zeros():
    px = torch.full((1, 1, 3), float("-inf"))
    py = torch.zeros(1, 2, 2)
    boundary = torch.tensor([[0, 0, 1, 2]])
    assert (node_occupancy(px, py, boundary) == 0).all()
    assert (viterbi_alignment(px, py, boundary) == 0).all()
    assert (sample_alignments(px, py, boundary, 5) == 0).all()


def test_viterbi_ties_match_documented_rule():
    """Integer-valued log-probs make float sums exact, so ties are genuine."""
    B, S, T = 3, 3, 4
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 2, 3], [0, 0, 3, 2]])
    g = torch.Generator().manual_seed(5)
    px = torch.randint(-1, 1, (B, S, T + 1), generator=g).double()
    py = torch.randint(-1, 1, (B, S + 1, T), generator=g).double()
    _, vit_ref = brute_force(px, py, boundary)
    assert torch.equal(viterbi_alignment(px, py, boundary), vit_ref)
    # all-equal lattice: every symbol on frame 0
    vit0 = viterbi_alignment(
        torch.zeros(1, 2, 4), torch.zeros(1, 3, 3), torch.tensor([[0, 0, 2, 3]])
    )
    expected = torch.tensor([[[1.0, 0, 0], [1, 0, 0], [1, 1, 1]]])
    assert torch.equal(vit0, expected)


def test_sample_alignments_converge_to_occupancy():
    B, S, T, bnd = CASES[0]
    boundary = torch.tensor(bnd)
    px, py = random_lattice(B, S, T, boundary, seed=3)
    occ = node_occupancy(px, py, boundary)
    M = 20000
    g = torch.Generator().manual_seed(1234)
    freq = sample_alignments(px, py, boundary, M, generator=g)
    assert freq.shape == occ.shape
    # each path makes exactly T_b + U_b decisions
    torch.testing.assert_close(
        freq.sum(dim=(1, 2)), (boundary[:, 2] + boundary[:, 3]).to(freq.dtype)
    )
    tol = 6 * torch.sqrt(occ * (1 - occ) / M) + 1.0 / M  # see module docstring
    assert ((freq - occ).abs() <= tol).all(), (freq - occ).abs().max()
    assert (freq[~_valid(boundary, S, T)] == 0).all()
    # seeded: reproducible
    g2 = torch.Generator().manual_seed(1234)
    assert torch.equal(freq, sample_alignments(px, py, boundary, M, generator=g2))
    # float32 path works and single paths are 0/1 visits of a real alignment
    one = sample_alignments(px.float(), py.float(), boundary, 1, generator=g)
    assert set(one.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------
# sequence samplers
# ---------------------------------------------------------------------------


class TinyTransducer(torch.nn.Module):
    """Just what the samplers use: decoder, joiner, blank_id (real project modules)."""

    def __init__(self, vocab_size=3, context_size=2, enc_dim=4, seed=0, scale=2.0):
        super().__init__()
        from icefall_spkd.models.decoder import Decoder
        from icefall_spkd.models.joiner import Joiner

        torch.manual_seed(seed)
        self.decoder = Decoder(vocab_size, 8, blank_id=0, context_size=context_size)
        self.joiner = Joiner(enc_dim, 8, 8, vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(scale)
        self.blank_id = 0
        self.vocab_size = vocab_size
        self.eval()


@torch.no_grad()
def exact_sequence_distribution(model, enc, T_b, temperature) -> Dict[Tuple[int, ...], float]:
    """Enumerate every per-frame choice in V^T_b, one hypothesis at a time."""
    V = model.vocab_size
    ctx_size = model.decoder.context_size
    dist: Dict[Tuple[int, ...], float] = {}

    def step_probs(tokens, t):
        ctx = [0] * max(0, ctx_size - len(tokens)) + list(tokens[-ctx_size:])
        dec = model.decoder(torch.tensor([ctx]), need_pad=False)[0, 0]
        z = model.joiner(enc[t], dec)
        return torch.softmax(z.double() / temperature, dim=-1)

    for choice in itertools.product(range(V), repeat=T_b):
        tokens: List[int] = []
        p = 1.0
        for t, k in enumerate(choice):
            p *= float(step_probs(tokens, t)[k])
            if k != 0:
                tokens.append(k)
        dist[tuple(tokens)] = dist.get(tuple(tokens), 0.0) + p
    return dist


@pytest.mark.parametrize("sync_free", [False, True], ids=["indexed", "sync-free"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_sequences_match_exact_distribution(temperature, sync_free):
    pytest.importorskip("icefall_spkd.models.decoder")
    model = TinyTransducer(seed=1, scale=1.5)
    B, T = 2, 4
    enc = torch.randn(B, T, 4, generator=torch.Generator().manual_seed(2)) * 2
    lens = torch.tensor([4, 2])
    M = 20000
    g = torch.Generator().manual_seed(99)
    samples = sample_sequences(
        model, enc, lens, M, temperature=temperature, generator=g, sync_free=sync_free
    )
    assert len(samples) == B and all(len(s) == M for s in samples)
    for b in range(B):
        exact = exact_sequence_distribution(model, enc[b], int(lens[b]), temperature)
        assert abs(sum(exact.values()) - 1) < 1e-9
        counts: Dict[Tuple[int, ...], int] = {}
        for s in samples[b]:
            assert len(s) <= int(lens[b]) and 0 not in s
            counts[tuple(s)] = counts.get(tuple(s), 0) + 1
        assert set(counts) <= set(exact)
        for seq, p in exact.items():
            f = counts.get(seq, 0) / M
            tol = 6 * math.sqrt(p * (1 - p) / M) + 1.0 / M  # see module docstring
            assert abs(f - p) <= tol, (b, seq, f, p)


def test_sample_sequences_low_temperature_is_greedy():
    pytest.importorskip("icefall_spkd.models.decoder")
    from icefall_spkd.search import greedy_search_batch

    model = TinyTransducer(vocab_size=6, seed=3, scale=3.0)
    B, T = 3, 12
    enc = torch.randn(B, T, 4, generator=torch.Generator().manual_seed(4)) * 2
    lens = torch.tensor([12, 7, 1])
    greedy = greedy_search_batch(model, enc, lens)
    assert any(len(h) > 0 for h in greedy)  # the test is meaningful
    g = torch.Generator().manual_seed(0)
    samples = sample_sequences(model, enc, lens, 5, temperature=1e-4, generator=g)
    for b in range(B):
        assert all(s == greedy[b] for s in samples[b]), (b, samples[b], greedy[b])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_sequences(model, enc, lens, 1, temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sync_free_sampler_draws_the_same_sequences(temperature):
    """The loop that never waits for the device (CUDA's default) and the indexed one
    (the CPU's) turn the same uniforms into the same sequences, ragged lengths included."""
    pytest.importorskip("icefall_spkd.models.decoder")
    model = TinyTransducer(vocab_size=7, context_size=2, seed=5, scale=2.0)
    enc = torch.randn(4, 30, 4, generator=torch.Generator().manual_seed(6)) * 2
    lens = torch.tensor([30, 17, 1, 0])
    out = {
        sf: sample_sequences(model, enc, lens, 6, temperature, torch.Generator().manual_seed(7), sync_free=sf)
        for sf in (False, True)
    }
    assert out[True] == out[False]
    assert sum(len(s) for u in out[False] for s in u) > 30  # tokens were emitted
    assert len({tuple(s) for s in out[False][0]}) > 1  # and the samples differ


def test_sample_sequences_allows_empty_and_zero_length():
    pytest.importorskip("icefall_spkd.models.decoder")
    model = TinyTransducer(seed=4)
    with torch.no_grad():
        model.joiner.output_linear.bias[0] = 100.0  # blank always wins
    enc = torch.randn(2, 3, 4)
    out = sample_sequences(model, enc, torch.tensor([3, 0]), 3, generator=torch.Generator())
    assert out == [[[], [], []], [[], [], []]]


def test_nbest_sequences_match_enumeration():
    """With a beam holding every reachable hypothesis, the n-best list is exact.

    Two tokens and at most one symbol per frame give 1 + 2 + 4 + 8 = 15 token
    sequences over 3 frames, so a beam of 16 prunes nothing; the list must be
    the ``num`` most likely sequences of the exact distribution (every
    per-frame choice enumerated), ranked by ``log P(y) / max(len(y), 1)``
    (search.py's length normalisation).
    """
    pytest.importorskip("icefall_spkd.models.decoder")
    model = TinyTransducer(vocab_size=3, seed=6, scale=1.5)
    enc = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7))
    lens = torch.tensor([3, 2])
    with pytest.raises(ValueError):
        nbest_sequences(model, enc, lens, num=4, beam=3)
    nb = nbest_sequences(model, enc, lens, num=5, beam=16)
    for b in range(2):
        exact = exact_sequence_distribution(model, enc[b], int(lens[b]), 1.0)
        ranked = sorted(exact, key=lambda y: math.log(exact[y]) / max(len(y), 1), reverse=True)
        assert nb[b] == [list(y) for y in ranked[:5]], (b, nb[b], ranked[:5])
    # an utterance with fewer distinct hypotheses than asked for: all of them
    few = nbest_sequences(model, enc[1:], torch.tensor([1]), num=5, beam=16)
    exact = exact_sequence_distribution(model, enc[1], 1, 1.0)
    assert sorted(map(tuple, few[0])) == sorted(exact) and len(exact) == 3


def test_rotate_batch():
    y = [[1], [2, 2], [3, 3, 3]]
    assert rotate_batch(y, 1) == [[2, 2], [3, 3, 3], [1]]
    assert rotate_batch(y, 2) == [[3, 3, 3], [1], [2, 2]]
    assert rotate_batch(y, 3) == y
    assert rotate_batch([], 1) == []
    out = rotate_batch(y, 1)
    out[0].append(9)
    assert y[1] == [2, 2]  # copies, not aliases
