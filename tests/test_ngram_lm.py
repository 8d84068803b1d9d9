"""Tests of the token n-gram LM (icefall_spkd.ngram_lm) and of shallow fusion.

* Kneser-Ney against a bigram example worked out by hand (below);
* every distribution sums to one over the predicted symbols, for seen and
  unseen histories, at orders 1 to 5;
* save/load round trip, and one-line errors for bad files and bad ids;
* shallow fusion in modified beam search: with a wide beam its pick is the
  exhaustively enumerated arg-max of ``log P(y|x) + s * log P_lm(y)`` (the
  LM here is an explicit random bigram table, not the Kneser-Ney code;
  plus ``b * len(y)`` with a token bonus ``b``), its
  n-best scores stay the transducer's exact ones, and with beam 1 it equals
  a step-by-step fused arg-max written out here.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import pytest
import torch

from icefall_spkd.ngram_lm import TokenNgramLm, train_token_ngram_lm
from icefall_spkd.search import modified_beam_search
from tests.test_search import _enumerate_sequences, _frame_log_probs, _make_model, _padded_batch


def test_bigram_by_hand() -> None:
    """Vocabulary {blank 0, 1, 2, 3}; corpus "1 2" and "1 3"; begin 4, end 5.

    Bigram counts: (4)->1 x2; (1)->2, (1)->3; (2)->end; (3)->end: n1 = 4,
    n2 = 1, so D2 = 4 / 6. Continuation counts of the unigrams (distinct
    predecessors): 1 <- {4}, 2 <- {1}, 3 <- {1}, end <- {2, 3}: n1 = 3,
    n2 = 1, D1 = 3 / 5, total 5, four types, uniform 1/4 over {1, 2, 3, end}:
    P1(w) = (c - 0.6 + 0.6 * 4 / 4) / 5 = c / 5, i.e. 0.2, 0.2, 0.2, 0.4.
    P(2 | 1) = (1 - 2/3 + 2/3 * 2 * 0.2) / 2 = 0.3;
    P(1 | 1) = 2/3 * 2 * 0.2 / 2 = 2/15; P(end | 1) = 2/3 * 2 * 0.4 / 2 = 4/15;
    P(1 | 4) = (2 - 2/3 + 2/3 * 0.2) / 2 = 11/15; P(end | 4) = 2/3 * 0.4 / 2 = 2/15.
    """
    lm = train_token_ngram_lm([[1, 2], [1, 3]], order=2, vocab_size=4)
    assert lm.discounts == pytest.approx([0.6, 2 / 3])
    p1 = lm.log_probs((1,)).exp()
    assert p1[0].item() == pytest.approx(1.0)  # the blank is left unscored
    assert p1[1:].tolist() == pytest.approx([2 / 15, 0.3, 0.3], abs=1e-6)
    assert math.exp(lm.eos_log_prob((1,))) == pytest.approx(4 / 15)
    bos = lm.bos
    assert lm.state([]) == (bos,)
    assert lm.log_probs((bos,)).exp()[1].item() == pytest.approx(11 / 15, abs=1e-6)
    assert math.exp(lm.eos_log_prob((bos,))) == pytest.approx(2 / 15)
    # "1 2": P(1 | begin) P(2 | 1) P(end | 2); P(end | 2) = (1 - 2/3 + 2/3 * 0.4) / 1 = 0.6.
    expected = math.log(11 / 15) + math.log(0.3) + math.log(0.6)
    assert lm.sequence_log_prob([1, 2]) == pytest.approx(expected)


def _total(lm: TokenNgramLm, history: tuple[int, ...]) -> float:
    p = lm.log_probs(history).double().exp()
    p[lm.blank_id] = 0.0
    return p.sum().item() + math.exp(lm.eos_log_prob(history))


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_distributions_sum_to_one(order: int) -> None:
    rng = random.Random(order)
    vocab_size = 7
    data = [[rng.randrange(1, 4) for _ in range(rng.randrange(1, 9))] for _ in range(40)]
    lm = train_token_ngram_lm(data, order=order, vocab_size=vocab_size)
    histories = [lm.state(seq[:i]) for seq in data[:10] for i in range(len(seq) + 1)]
    # Unseen histories, including tokens never in the training data.
    histories += [lm.state([6, 5, 4, 6]), lm.state([5]), lm.state([])]
    for h in histories:
        assert _total(lm, h) == pytest.approx(1.0, abs=1e-6), h  # float32 log-probs
    # Tokens 4..6 never occur, yet keep some probability.
    assert (lm.log_probs(lm.state([1, 2])) > -math.inf).all()


def test_prefers_the_training_spelling() -> None:
    words = {"CAT": [3, 1, 5], "CART": [3, 1, 4, 5], "TAR": [5, 1, 4]}
    data = [words["CAT"], words["CART"], words["TAR"], words["CAT"] + words["TAR"]]
    lm = train_token_ngram_lm(data, order=4, vocab_size=6)
    assert lm.sequence_log_prob(words["CART"]) > lm.sequence_log_prob([3, 4, 1, 5])
    assert lm.sequence_log_prob(words["TAR"]) > lm.sequence_log_prob([5, 4, 1])


def test_save_load_and_errors(tmp_path) -> None:
    lm = train_token_ngram_lm([[1, 2, 3], [2, 3]], order=3, vocab_size=5)
    path = tmp_path / "lm" / "token_3gram.pt"
    lm.save(path)
    again = TokenNgramLm.load(path)
    for seq in ([1, 2, 3], [3, 3], []):
        assert again.sequence_log_prob(seq) == pytest.approx(lm.sequence_log_prob(seq))
    with pytest.raises(FileNotFoundError, match="train_token_lm.py"):
        TokenNgramLm.load(tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a token n-gram LM"):
        TokenNgramLm.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="token id 0"):
        train_token_ngram_lm([[1, 0]], order=2, vocab_size=5)
    with pytest.raises(ValueError, match="token id 9"):
        train_token_ngram_lm([[9]], order=2, vocab_size=5)
    with pytest.raises(ValueError, match="no training sequences"):
        train_token_ngram_lm([], order=2, vocab_size=5)


class _TableBigram:
    """An explicit random bigram over ``1 .. V-1`` plus an end symbol: the fusion tests' LM."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        # Row h (h = 0 for the sentence start), columns 1 .. V-1 and the end (column V).
        logits = 2.0 * torch.randn(vocab_size, vocab_size + 1, generator=g)
        logits[:, 0] = -math.inf
        self.table = logits.double().log_softmax(-1)
        self.vocab_size = vocab_size

    def state(self, tokens: Sequence[int]) -> int:
        return tokens[-1] if len(tokens) else 0

    def log_probs(self, state: int) -> torch.Tensor:
        row = self.table[state, : self.vocab_size].float().clone()
        row[0] = 0.0
        return row

    def eos_log_prob(self, state: int) -> float:
        return self.table[state, self.vocab_size].item()

    def total(self, tokens: Sequence[int]) -> float:
        out, prev = 0.0, 0
        for v in tokens:
            out += self.table[prev, v].item()
            prev = v
        return out + self.table[prev, self.vocab_size].item()


@pytest.mark.parametrize("length_norm, bonus", [(True, 0.0), (False, 0.0), (True, 0.7), (False, 1.3)])
def test_fusion_wide_beam_picks_the_enumerated_fused_argmax(length_norm: bool, bonus: float) -> None:
    vocab_size, dim, scale = 4, 6, 1.5
    model = _make_model(vocab_size, dim, 2, seed=21)
    lens_list = [4, 3, 2]
    enc, lens = _padded_batch(lens_list, dim, seed=22)
    lm = _TableBigram(vocab_size, seed=23)
    kwargs = dict(beam=130, length_norm=length_norm, lm=lm, lm_scale=scale, lm_token_bonus=bonus)
    nbest = modified_beam_search(model, enc, lens, return_nbest=True, **kwargs)
    best = modified_beam_search(model, enc, lens, **kwargs)
    changed = 0
    for b, n in enumerate(lens_list):
        ref = _enumerate_sequences(model, enc[b, :n], vocab_size)
        got = {tuple(y): lp for y, lp in nbest[b]}
        assert set(got) == set(ref)
        for y, lp in ref.items():  # the reported scores stay the transducer's own
            assert got[y] == pytest.approx(lp, abs=1e-4)

        def fused(y: tuple[int, ...], ref: dict = ref) -> float:
            total = ref[y] + scale * lm.total(y) + bonus * len(y)
            return total / max(len(y), 1) if length_norm else total

        assert tuple(best[b]) == max(ref, key=fused)
        assert [tuple(y) for y, _ in nbest[b]] == sorted(ref, key=fused, reverse=True)
        changed += max(ref, key=fused) != max(
            ref, key=lambda y: ref[y] / max(len(y), 1) if length_norm else ref[y]
        )
    assert changed > 0, "degenerate test: the LM never changed the pick"


@pytest.mark.parametrize("bonus", [0.0, 0.5])
def test_fusion_beam1_is_the_fused_greedy_path(bonus: float) -> None:
    vocab_size, dim, scale = 6, 8, 0.8
    model = _make_model(vocab_size, dim, 2, seed=31)
    lens_list = [9, 5, 12]
    enc, lens = _padded_batch(lens_list, dim, seed=32)
    lm = _TableBigram(vocab_size, seed=33)
    got = modified_beam_search(model, enc, lens, beam=1, lm=lm, lm_scale=scale, lm_token_bonus=bonus)
    plain = modified_beam_search(model, enc, lens, beam=1)
    assert got != plain, "degenerate test: the LM changed nothing"
    for b, n in enumerate(lens_list):
        frame_log_probs = _frame_log_probs(model, enc[b])
        tokens: tuple[int, ...] = ()
        for t in range(n):
            lp = frame_log_probs(t, tokens)
            scores = [lp[0]] + [
                lp[v] + scale * lm.table[lm.state(tokens), v].item() + bonus
                for v in range(1, vocab_size)
            ]
            v = max(range(vocab_size), key=lambda i: scores[i])
            if v:
                tokens = tokens + (v,)
        assert tuple(got[b]) == tokens


def test_scale_zero_is_plain_search() -> None:
    vocab_size, dim = 7, 8
    model = _make_model(vocab_size, dim, 2, seed=41)
    enc, lens = _padded_batch([6, 10, 3], dim, seed=42)
    lm = _TableBigram(vocab_size, seed=43)
    assert modified_beam_search(model, enc, lens, beam=4, lm=lm, lm_scale=0.0) == modified_beam_search(
        model, enc, lens, beam=4
    )


# The lexicon constraint (icefall_spkd.lexicon) over a toy piece set.
PIECES = ["<blk>", "<sos/eos>", "<unk>", "\u2581C", "A", "T", "\u2581T", "R", "\u2581"]
WORDS = ["CAT", "CART", "TA"]


class _FlatLm:
    """Uniform token LM: every piece and the end equally likely, one state."""

    def state(self, tokens):
        return ()

    def log_probs(self, state):
        out = torch.full((len(PIECES),), -math.log(len(PIECES)))
        out[0] = 0.0
        return out

    def eos_log_prob(self, state):
        return -math.log(len(PIECES))


def _allowed(lex, tokens) -> set:
    return {PIECES[v] for v, ok in enumerate(lex.allowed(lex.partial_word(tokens))) if ok and v}


def test_lexicon_rules_by_hand() -> None:
    from icefall_spkd.lexicon import LexiconConstrainedLm

    lex = LexiconConstrainedLm(_FlatLm(), PIECES, WORDS)
    C, A, T, T_, R, SP = 3, 4, 5, 6, 7, 8
    # Sentence start: only word starts that begin a word ("▁C", "▁T", "▁"); no specials.
    assert _allowed(lex, []) == {"\u2581C", "\u2581T", "\u2581"}
    assert lex.partial_word([C, A]) == "CA"
    assert _allowed(lex, [C, A]) == {"T", "R"}  # CA is no word: no new word yet
    assert _allowed(lex, [C, A, T]) == {"\u2581C", "\u2581T", "\u2581"}  # CAT is finished
    assert _allowed(lex, [C, A, R]) == {"T"}
    assert _allowed(lex, [T_]) == {"A"}
    assert lex.partial_word([C, A, T, T_, A]) == "TA"
    assert lex.partial_word([SP, C]) == "C"  # a bare "▁", then "▁C" starts the word C
    # after a bare "▁" a word may start either way: "▁T" or "T" (then "A": TA)
    assert _allowed(lex, [SP]) == {"\u2581C", "\u2581T", "\u2581", "T"}
    # Scores: LM log-probability plus the penalty where a rule is broken; blank untouched.
    lp = lex.log_probs(lex.state([C, A]))
    assert lp[0].item() == 0.0
    assert lp[T].item() == pytest.approx(-math.log(len(PIECES)))
    assert lp[C].item() == pytest.approx(-math.log(len(PIECES)) - 1000.0)
    assert lex.eos_log_prob(lex.state([C, A, T])) == pytest.approx(-math.log(len(PIECES)))
    assert lex.eos_log_prob(lex.state([C, A])) < -999
    with pytest.raises(ValueError, match="no words"):
        LexiconConstrainedLm(_FlatLm(), PIECES, [])


def test_search_with_lexicon_spells_only_listed_words() -> None:
    """On a random model, fused search with the lexicon only ever outputs listed words."""
    from icefall_spkd.lexicon import LexiconConstrainedLm

    vocab_size, dim = len(PIECES), 8
    model = _make_model(vocab_size, dim, 2, seed=51)
    enc, lens = _padded_batch([12, 9, 15, 6], dim, seed=52)
    lex = LexiconConstrainedLm(_FlatLm(), PIECES, WORDS)
    assert_fused_search_spells_only(model, enc, lens, lex, PIECES, WORDS)


def assert_fused_search_spells_only(model, enc, lens, lm, pieces, words) -> None:
    """Plain search writes some non-word (else the check is void); fused search with ``lm`` none."""

    def split(tokens):
        return "".join(pieces[t] for t in tokens).replace("\u2581", " ").split()

    plain = modified_beam_search(model, enc, lens, beam=4)
    assert any(w not in words for y in plain for w in split(y)), "degenerate: plain search is legal"
    got = modified_beam_search(model, enc, lens, beam=4, lm=lm, lm_scale=1.0, lm_token_bonus=2.0)
    assert any(got), "degenerate: nothing emitted"
    for y in got:
        assert all(w in words for w in split(y)), split(y)


def _internal_lm_total(model, tokens: tuple[int, ...]) -> float:
    """Sum of log P_ilm(y_u | context): the joiner on a zero encoder output, blank removed."""
    blank, cs = model.decoder.blank_id, model.decoder.context_size
    enc_dim = model.joiner.encoder_proj.in_features
    total = 0.0
    for u, v in enumerate(tokens):
        ctx = ((blank,) * cs + tokens[:u])[u:]
        dec = model.decoder(torch.tensor([ctx], dtype=torch.int64), need_pad=False)
        logits = model.joiner(torch.zeros(1, 1, enc_dim), dec, project_input=True).reshape(-1).double()
        logits[blank] = -math.inf
        total += logits.log_softmax(-1)[v].item()
    return total


@pytest.mark.parametrize("ilm_scale", [0.5, 1.2])
def test_ilm_subtraction_wide_beam_picks_the_enumerated_argmax(ilm_scale: float) -> None:
    vocab_size, dim, scale, bonus = 4, 6, 0.8, 0.9
    model = _make_model(vocab_size, dim, 2, seed=71)
    with torch.no_grad():  # a joiner bias large enough that the internal LM is far from uniform
        model.joiner.encoder_proj.bias.mul_(6.0)
    lens_list = [4, 3, 4]
    enc, lens = _padded_batch(lens_list, dim, seed=72)
    lm = _TableBigram(vocab_size, seed=73)
    kwargs = dict(beam=130, length_norm=False, lm=lm, lm_scale=scale, lm_token_bonus=bonus)
    nbest = modified_beam_search(model, enc, lens, return_nbest=True, ilm_scale=ilm_scale, **kwargs)
    without = modified_beam_search(model, enc, lens, **kwargs)
    changed = 0
    for b, n in enumerate(lens_list):
        ref = _enumerate_sequences(model, enc[b, :n], vocab_size)

        def fused(y: tuple[int, ...], ref: dict = ref) -> float:
            return ref[y] + scale * lm.total(y) + bonus * len(y) - ilm_scale * _internal_lm_total(model, y)

        order = sorted(ref, key=fused, reverse=True)
        assert [tuple(y) for y, _ in nbest[b]] == order
        changed += tuple(without[b]) != order[0]
    assert changed > 0, "degenerate test: subtracting the internal LM never changed the pick"
    with pytest.raises(ValueError, match="ilm_scale needs an external LM"):
        modified_beam_search(model, enc, lens, beam=4, ilm_scale=0.5)
