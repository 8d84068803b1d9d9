"""Tests of icefall_spkd.search against independent references.

* beam=1 modified beam search == greedy search (one symbol per frame);
* exhaustive enumeration of every one-symbol-per-frame alignment on a tiny
  random model: with a beam wider than the number of reachable token
  sequences, modified beam search must return exactly the enumerated
  sequences with their exact log-probabilities (summed over alignments), and
  its pick must be the enumerated arg-max under the documented length
  normalisation ``log_prob / max(len(tokens), 1)``;
* batching invariance: a padded batch decodes like each utterance alone;
* beam search (several symbols per frame) with a cap of ``k`` symbols per
  frame and a wide beam returns exactly the enumerated sequences of the
  k-symbols-per-frame lattice with their exact log-probabilities; with
  ``k = 1`` that lattice is modified beam search's, so the two agree;
* greedy search with ``max_sym_per_frame = k`` equals a one-utterance
  step-by-step arg-max written out here.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from icefall_spkd.models.decoder import Decoder
from icefall_spkd.models.joiner import Joiner
from icefall_spkd.search import beam_search, greedy_search_batch, modified_beam_search


class _Model(nn.Module):
    """Just what the searches may use: ``decoder`` and ``joiner``."""

    def __init__(self, decoder: nn.Module, joiner: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.joiner = joiner


def _make_model(vocab_size: int, encoder_dim: int, context_size: int, seed: int) -> _Model:
    torch.manual_seed(seed)
    decoder = Decoder(vocab_size=vocab_size, decoder_dim=12, blank_id=0, context_size=context_size)
    joiner = Joiner(encoder_dim=encoder_dim, decoder_dim=12, joiner_dim=16, vocab_size=vocab_size)
    return _Model(decoder, joiner).eval()


def _padded_batch(
    lens: list[int], dim: int, seed: int, pad_value: float = 37.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder output with frames beyond each length set to a large garbage value."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), dim, generator=g)
    for b, n in enumerate(lens):
        x[b, n:] = pad_value
    return x, torch.tensor(lens, dtype=torch.int64)


def _frame_log_probs(model: _Model, enc: torch.Tensor):
    """``f(t, tokens)``: the joiner's log-probabilities (a list) on frame t after ``tokens``."""
    blank = model.decoder.blank_id
    cs = model.decoder.context_size
    cache: dict[tuple[int, tuple[int, ...]], list[float]] = {}

    def frame_log_probs(t: int, tokens: tuple[int, ...]) -> list[float]:
        ctx = ((blank,) * cs + tokens)[len(tokens) :]
        key = (t, ctx)
        if key not in cache:
            dec = model.decoder(torch.tensor([ctx], dtype=torch.int64), need_pad=False)
            logits = model.joiner(enc[t].view(1, 1, -1), dec, project_input=True)
            cache[key] = logits.reshape(-1).double().log_softmax(-1).tolist()
        return cache[key]

    return frame_log_probs


def _enumerate_sequences(
    model: _Model, enc: torch.Tensor, vocab_size: int, max_sym: int = 1
) -> dict[tuple[int, ...], float]:
    """log P(y | enc) for every y, summed over every alignment with <= ``max_sym`` symbols per frame.

    On each frame an alignment emits ``j`` non-blank symbols (``0 <= j <=
    max_sym``), then a blank if ``j < max_sym``; after ``max_sym`` symbols it
    moves to the next frame without a blank. With ``max_sym = 1`` this is the
    one-symbol-per-frame lattice (a symbol or a blank per frame).

    Args:
      enc: ``(T, C)`` encoder output of one utterance (no padding).
    """
    blank = model.decoder.blank_id
    frame_log_probs = _frame_log_probs(model, enc)
    non_blank = [v for v in range(vocab_size) if v != blank]
    per_frame = [c for j in range(max_sym + 1) for c in itertools.product(non_blank, repeat=j)]
    per_alignment: dict[tuple[int, ...], list[float]] = {}
    for ali in itertools.product(per_frame, repeat=enc.size(0)):
        tokens: tuple[int, ...] = ()
        lp = 0.0
        for t, syms in enumerate(ali):
            for a in syms:
                lp += frame_log_probs(t, tokens)[a]
                tokens = tokens + (a,)
            if len(syms) < max_sym:
                lp += frame_log_probs(t, tokens)[blank]
        per_alignment.setdefault(tokens, []).append(lp)
    return {
        y: torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0).item()
        for y, v in per_alignment.items()
    }


def _norm(tokens: tuple[int, ...], log_prob: float, length_norm: bool) -> float:
    return log_prob / max(len(tokens), 1) if length_norm else log_prob


def _assert_exact(
    nbest: list[tuple[list[int], float]], best: list[int], ref: dict[tuple[int, ...], float], length_norm: bool
) -> None:
    """A search's n-best list and pick for one utterance equal the enumerated ``ref``."""
    got = {tuple(y): lp for y, lp in nbest}
    assert len(got) == len(nbest), "duplicate sequences in the n-best list"
    assert set(got) == set(ref)
    for y, lp in ref.items():
        assert got[y] == pytest.approx(lp, abs=1e-4), y
    # Total probability over all sequences is 1.
    assert torch.logsumexp(torch.tensor(list(got.values())), 0).item() == pytest.approx(0.0, abs=1e-4)
    # Best pick and the n-best order follow the documented normalisation.
    ref_best = max(ref, key=lambda y: _norm(y, ref[y], length_norm))
    assert tuple(best) == ref_best
    assert tuple(nbest[0][0]) == ref_best
    keys = [_norm(tuple(y), lp, length_norm) for y, lp in nbest]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize("context_size", [1, 2])
def test_beam1_equals_greedy(context_size: int) -> None:
    vocab_size, dim = 9, 8
    model = _make_model(vocab_size, dim, context_size, seed=1)
    enc, lens = _padded_batch([7, 3, 12, 1, 0, 9], dim, seed=2)
    greedy = greedy_search_batch(model, enc, lens)
    beam1 = modified_beam_search(model, enc, lens, beam=1)
    assert greedy == beam1
    assert sum(len(y) for y in greedy) > 0, "degenerate test: nothing emitted"
    assert greedy[4] == []
    assert len(greedy[3]) <= 1
    assert all(len(y) <= n for y, n in zip(greedy, lens.tolist()))
    assert all(0 not in y for y in greedy)


@pytest.mark.parametrize("context_size", [1, 2])
def test_wide_beam_matches_exhaustive_enumeration(context_size: int) -> None:
    vocab_size, dim = 4, 6
    model = _make_model(vocab_size, dim, context_size, seed=3 + context_size)
    lens_list = [4, 3, 2]
    enc, lens = _padded_batch(lens_list, dim, seed=5)
    # Reachable sequences after 4 frames with 3 non-blank symbols: 1+3+9+27+81 = 121.
    beam = 130
    for length_norm in (True, False):
        nbest = modified_beam_search(
            model, enc, lens, beam=beam, return_nbest=True, length_norm=length_norm
        )
        best = modified_beam_search(model, enc, lens, beam=beam, length_norm=length_norm)
        for b, n in enumerate(lens_list):
            ref = _enumerate_sequences(model, enc[b, :n], vocab_size)
            assert len(ref) == sum((vocab_size - 1) ** k for k in range(n + 1))
            _assert_exact(nbest[b], best[b], ref, length_norm)


def test_narrow_beam_scores_are_lower_bounds() -> None:
    """A pruned hypothesis keeps only some alignments: its score never exceeds log P(y)."""
    vocab_size, dim = 4, 6
    model = _make_model(vocab_size, dim, 2, seed=7)
    enc, lens = _padded_batch([4, 4], dim, seed=8)
    nbest = modified_beam_search(model, enc, lens, beam=3, return_nbest=True)
    for b in range(2):
        assert 1 <= len(nbest[b]) <= 3
        assert len({tuple(y) for y, _ in nbest[b]}) == len(nbest[b])
        ref = _enumerate_sequences(model, enc[b, :4], vocab_size)
        for y, lp in nbest[b]:
            assert lp <= ref[tuple(y)] + 1e-5


def test_batching_invariance() -> None:
    vocab_size, dim = 7, 8
    model = _make_model(vocab_size, dim, 2, seed=11)
    lens_list = [5, 11, 2, 8]
    enc, lens = _padded_batch(lens_list, dim, seed=12)
    greedy = greedy_search_batch(model, enc, lens)
    beam = modified_beam_search(model, enc, lens, beam=4, return_nbest=True)
    for b, n in enumerate(lens_list):
        one_enc = enc[b : b + 1, :n]
        one_len = torch.tensor([n])
        assert greedy_search_batch(model, one_enc, one_len) == [greedy[b]]
        alone = modified_beam_search(model, one_enc, one_len, beam=4, return_nbest=True)[0]
        assert [y for y, _ in alone] == [y for y, _ in beam[b]]
        for (_, lp_a), (_, lp_b) in zip(alone, beam[b]):
            assert math.isclose(lp_a, lp_b, abs_tol=1e-5)


def _eager_model(vocab_size: int, dim: int, context_size: int, seed: int) -> _Model:
    """A tiny model whose joiner is biased against blank, so frames emit several symbols."""
    model = _make_model(vocab_size, dim, context_size, seed)
    with torch.no_grad():
        model.joiner.output_linear.bias[0] -= 1.5
    return model


@pytest.mark.parametrize("context_size,max_sym", [(1, 2), (2, 2), (2, 3)])
def test_beam_search_wide_beam_matches_exhaustive_enumeration(context_size: int, max_sym: int) -> None:
    vocab_size, dim = 3, 6
    model = _eager_model(vocab_size, dim, context_size, seed=20 + context_size)
    lens_list = [3, 2] if max_sym == 2 else [2, 1]
    enc, lens = _padded_batch(lens_list, dim, seed=21)
    beam = 200  # more than the 2**0 + ... + 2**6 = 127 reachable sequences
    for length_norm in (True, False):
        nbest = beam_search(
            model, enc, lens, beam=beam, max_sym_per_frame=max_sym, return_nbest=True,
            length_norm=length_norm,
        )
        best = beam_search(model, enc, lens, beam=beam, max_sym_per_frame=max_sym, length_norm=length_norm)
        for b, n in enumerate(lens_list):
            ref = _enumerate_sequences(model, enc[b, :n], vocab_size, max_sym=max_sym)
            assert len(ref) == sum((vocab_size - 1) ** k for k in range(max_sym * n + 1))
            _assert_exact(nbest[b], best[b], ref, length_norm)
    # Non-degenerate: the best hypotheses use more than one symbol on some frame.
    assert any(len(y) > n for y, n in zip(best, lens_list))


def test_beam_search_one_symbol_per_frame_equals_modified_beam_search() -> None:
    vocab_size, dim = 4, 6
    model = _make_model(vocab_size, dim, 2, seed=23)
    enc, lens = _padded_batch([4, 3], dim, seed=24)
    a = beam_search(model, enc, lens, beam=130, max_sym_per_frame=1, return_nbest=True)
    m = modified_beam_search(model, enc, lens, beam=130, return_nbest=True)
    for hyps_a, hyps_m in zip(a, m):
        got_m = {tuple(y): lp for y, lp in hyps_m}
        assert {tuple(y) for y, _ in hyps_a} == set(got_m)
        for y, lp in hyps_a:
            assert lp == pytest.approx(got_m[tuple(y)], abs=1e-4)


def test_beam_search_uncapped_narrow_beam() -> None:
    """icefall's setting: no cap, small beam. Scores are lower bounds of the exact ones."""
    vocab_size, dim = 3, 6
    model = _eager_model(vocab_size, dim, 2, seed=25)
    enc, lens = _padded_batch([3, 2], dim, seed=26)
    nbest = beam_search(model, enc, lens, beam=3, return_nbest=True)
    for b, n in enumerate([3, 2]):
        assert 1 <= len(nbest[b]) <= 3
        # No alignment of y has more than len(y) symbols on a frame, so with a cap of
        # len(y) + 1 every frame still ends with a blank: the uncapped log P(y | x).
        checked = 0
        for y, lp in nbest[b]:
            if len(y) <= 3:
                ref = _enumerate_sequences(model, enc[b, :n], vocab_size, max_sym=len(y) + 1)
                assert lp <= ref[tuple(y)] + 1e-5
                checked += 1
        assert checked > 0
    alone = beam_search(model, enc[1:, :2], lens[1:], beam=3, return_nbest=True)[0]
    assert [y for y, _ in alone] == [y for y, _ in nbest[1]]


def _greedy_reference(model: _Model, enc: torch.Tensor, max_sym: int) -> list[int]:
    """One utterance, step by step: arg-max; blank or ``max_sym`` symbols end the frame."""
    frame_log_probs = _frame_log_probs(model, enc)
    tokens: tuple[int, ...] = ()
    for t in range(enc.size(0)):
        for _ in range(max_sym):
            lp = frame_log_probs(t, tokens)
            a = max(range(len(lp)), key=lp.__getitem__)
            if a == model.decoder.blank_id:
                break
            tokens = tokens + (a,)
    return list(tokens)


@pytest.mark.parametrize("max_sym", [1, 2, 4])
def test_greedy_max_sym_per_frame(max_sym: int) -> None:
    vocab_size, dim = 7, 8
    model = _eager_model(vocab_size, dim, 2, seed=27)
    lens_list = [6, 2, 9, 0, 4]
    enc, lens = _padded_batch(lens_list, dim, seed=28)
    got = greedy_search_batch(model, enc, lens, max_sym_per_frame=max_sym)
    for b, n in enumerate(lens_list):
        assert got[b] == _greedy_reference(model, enc[b, :n], max_sym), b
        assert len(got[b]) <= max_sym * n
    if max_sym > 1:
        assert any(len(y) > n for y, n in zip(got, lens_list)), "degenerate: never > 1 per frame"
