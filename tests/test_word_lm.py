"""The word n-gram LM and its look-ahead over word pieces (icefall_spkd.word_lm).

References: the word n-gram's own sentence probability (the Kneser-Ney
model over word ids, tested in test_ngram_lm.py), which the look-ahead scores
must reproduce along every spelling of a sentence; exact normalisation when
the pieces are single letters; the spelling rules by hand; and a fused search
that may only write listed words.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import List

import pytest
import torch

from icefall_spkd.word_lm import (
    WordNgramLm,
    WordPieceLookaheadLm,
    load_ngram_lm,
    train_word_ngram_lm,
)
from tests.test_ngram_lm import assert_fused_search_spells_only
from tests.test_search import _make_model, _padded_batch

SP = "\u2581"
# Several pieces can spell the same letters ("AB" = "A" + "B"), so each word
# has many spellings. Index 0 is the blank, 1-2 are special.
PIECES = ["<blk>", "<sos/eos>", "<unk>", SP, SP + "A", SP + "B", SP + "C", SP + "AB",
          "A", "B", "C", "AB", "BA", "CA"]  # fmt: skip
WORDS = ["A", "AB", "ABC", "BA", "BAB", "CAB", "C", "CC"]


def _corpus(seed: int, n: int = 40) -> List[List[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS[:6]) for _ in range(rng.randint(1, 5))] for _ in range(n)] + [WORDS]


def _spellings(word: str, pieces: List[str]) -> List[List[int]]:
    """Every way to write ``word`` as a word-start piece then continuing pieces."""
    out = []

    def rest(letters: str, acc: List[int]) -> None:
        if not letters:
            out.append(acc)
            return
        for v, p in enumerate(pieces):
            if v > 2 and not p.startswith(SP) and letters.startswith(p):
                rest(letters[len(p) :], acc + [v])

    for v, p in enumerate(pieces):
        if p.startswith(SP) and word.startswith(p[1:]):
            rest(word[len(p) - 1 :], [v])
    return out


def _path_score(lm: WordPieceLookaheadLm, tokens: List[int]) -> float:
    total = 0.0
    for i, t in enumerate(tokens):
        total += lm.log_probs(lm.state(tokens[:i]))[t].item()
    return total + lm.eos_log_prob(lm.state(tokens))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_spelling_scores_the_word_lm_sentence_probability(order: int) -> None:
    word_lm = train_word_ngram_lm(_corpus(seed=order), order=order)
    lm = WordPieceLookaheadLm(word_lm, PIECES)
    rng = random.Random(7)
    checked = 0
    for _ in range(30):
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
        expected = word_lm.sentence_log_prob(sentence)
        spellings = [_spellings(w, PIECES) for w in sentence]
        for combo in itertools.islice(itertools.product(*spellings), 6):
            tokens = [t for word in combo for t in word]
            # float32 scores, summed over up to ~15 pieces
            assert _path_score(lm, tokens) == pytest.approx(expected, abs=2e-4), (sentence, tokens)
            checked += 1
    assert checked > 50
    assert any(len(_spellings(w, PIECES)) > 2 for w in WORDS), "degenerate: one spelling per word"


def test_single_letter_pieces_give_normalised_distributions() -> None:
    letters = sorted({c for w in WORDS for c in w})
    pieces = ["<blk>", "<unk>"] + [SP + c for c in letters] + letters
    word_lm = train_word_ngram_lm(_corpus(seed=3), order=3)
    lm = WordPieceLookaheadLm(word_lm, pieces)
    rng = random.Random(11)
    states = 0
    for _ in range(40):
        # A random legal prefix: whole words, then part of one.
        tokens: List[int] = []
        for w in [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]:
            tokens += _spellings(w, pieces)[0]
        last = _spellings(rng.choice(WORDS), pieces)[0]
        tokens += last[: rng.randint(0, len(last))]
        state = lm.state(tokens)
        probs = lm.log_probs(state).double().exp()
        total = probs[2:].sum().item() + math.exp(lm.eos_log_prob(state))
        assert total == pytest.approx(1.0, abs=1e-5), tokens
        states += 1
    assert states == 40


def test_spelling_rules_by_hand() -> None:
    word_lm = train_word_ngram_lm(_corpus(seed=5), order=2)
    lm = WordPieceLookaheadLm(word_lm, PIECES, penalty=-1000.0)
    ix = {p: i for i, p in enumerate(PIECES)}
    ok = -100.0

    def scores(tokens):
        return lm.log_probs(lm.state([ix[p] for p in tokens]))

    start = scores([])
    assert start[0].item() == 0.0  # blank unscored
    assert start[ix[SP + "A"]] > ok and start[ix[SP]] > ok
    assert start[ix["A"]] < -999 and start[ix["<unk>"]] < -999 and start[ix["<sos/eos>"]] < -999
    # "C" then: "A" (towards CAB) and "CA"? no word starts "CCA"; "C" gives CC.
    after_c = scores([SP + "C"])
    assert after_c[ix["A"]] > ok and after_c[ix["C"]] > ok and after_c[ix["CA"]] < -999
    assert after_c[ix[SP + "A"]] > ok  # C is a word: a new word may start
    # "CA" is no word: only "B" may follow; no new word, no end.
    after_ca = scores([SP + "C", "A"])
    assert after_ca[ix["B"]] > ok
    assert all(after_ca[ix[p]] < -999 for p in (SP + "A", SP, "A", "C", "AB"))
    assert lm.eos_log_prob(lm.state([ix[SP + "C"], ix["A"]])) < -999
    assert lm.eos_log_prob(lm.state([ix[SP + "C"]])) > ok
    # A bare "▁" must be followed by letters, not by another word start or the end.
    after_space = scores([SP])
    assert after_space[ix["A"]] > ok and after_space[ix[SP + "A"]] < -999
    assert lm.eos_log_prob(lm.state([ix[SP]])) < -999
    # A path that spelled a non-word is dead from then on.
    dead = lm.state([ix[SP + "C"], ix["B"]])
    assert dead[2] and (lm.log_probs(dead)[1:] < -999).all() and lm.eos_log_prob(dead) < -999


def test_fused_search_writes_only_listed_words() -> None:
    """On a random model, search with the word LM only ever outputs words of the LM."""
    word_lm = train_word_ngram_lm(_corpus(seed=9), order=2)
    lm = WordPieceLookaheadLm(word_lm, PIECES)
    dim = 8
    model = _make_model(len(PIECES), dim, 2, seed=61)
    enc, lens = _padded_batch([14, 9, 17, 6], dim, seed=62)
    assert_fused_search_spells_only(model, enc, lens, lm, PIECES, WORDS)


def test_save_load_and_errors(tmp_path) -> None:
    word_lm = train_word_ngram_lm(_corpus(seed=1), order=3)
    path = tmp_path / "lm" / "word.pt"
    word_lm.save(path)
    again = load_ngram_lm(path)
    assert isinstance(again, WordNgramLm) and again.words == word_lm.words
    for sentence in (["A", "BAB"], ["CC", "C", "A"], []):
        assert again.sentence_log_prob(sentence) == pytest.approx(word_lm.sentence_log_prob(sentence))
    with pytest.raises(KeyError, match="'ZZ' is not a word"):
        word_lm.sentence_log_prob(["A", "ZZ"])
    with pytest.raises(FileNotFoundError, match="train_word_lm.py"):
        load_ngram_lm(tmp_path / "missing.pt")
    torch.save({"kind": "something"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an n-gram LM"):
        load_ngram_lm(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no words"):
        train_word_ngram_lm([[], []], order=2)


def test_load_fusion_lm_takes_either_kind(tmp_path) -> None:
    from icefall_spkd.decoding import load_fusion_lm
    from icefall_spkd.ngram_lm import train_token_ngram_lm
    from icefall_spkd.utils import AttributeDict

    class Vocab:  # the two methods of a SentencePieceProcessor that _pieces uses
        def get_piece_size(self):
            return len(PIECES)

        def id_to_piece(self, i):
            return PIECES[i]

    word_path, token_path = tmp_path / "word.pt", tmp_path / "token.pt"
    train_word_ngram_lm(_corpus(seed=2), order=2).save(word_path)
    train_token_ngram_lm([[4, 8], [5, 9]], order=2, vocab_size=len(PIECES)).save(token_path)
    params = AttributeDict(lm_path=str(word_path), lm_scale=0.5, vocab_size=len(PIECES), blank_id=0)
    assert isinstance(load_fusion_lm(params, Vocab()), WordPieceLookaheadLm)
    params.lm_lexicon = str(tmp_path / "words.txt")
    with pytest.raises(SystemExit, match="word LM.*drop --lm-lexicon"):
        load_fusion_lm(params, Vocab())
    params.lm_lexicon = None
    params.lm_path = str(token_path)
    assert not isinstance(load_fusion_lm(params, Vocab()), WordPieceLookaheadLm)
    params.lm_path = str(tmp_path / "missing.pt")
    with pytest.raises(SystemExit, match="missing.pt: no such LM"):
        load_fusion_lm(params, Vocab())


def test_decoding_plan_names_word_lm_results_apart(tmp_path) -> None:
    from icefall_spkd.decoding import decoding_plan
    from icefall_spkd.ngram_lm import train_token_ngram_lm
    from icefall_spkd.utils import AttributeDict

    word_path, token_path = tmp_path / "word.pt", tmp_path / "token.pt"
    train_word_ngram_lm(_corpus(seed=2), order=2).save(word_path)
    train_token_ngram_lm([[4, 8], [5, 9]], order=2, vocab_size=len(PIECES)).save(token_path)
    suffixes = {}
    for name, path in (("word", word_path), ("token", token_path)):
        params = AttributeDict(
            test_sets=["dev"], max_sym_per_frame=1, decoding_method="modified_beam_search",
            beam_size=8, epoch=6, iter=0, avg=2, use_averaged_model=True,
            lm_path=str(path), lm_scale=0.6, lm_token_bonus=1.6,
        )  # fmt: skip
        suffixes[name] = decoding_plan(params, ("dev",))[1]
    assert suffixes["token"] == "epoch-6-avg-2-use-averaged-model-beam-size-8-lm-scale-0.6-token-bonus-1.6"
    assert suffixes["word"] == "epoch-6-avg-2-use-averaged-model-beam-size-8-word-lm-scale-0.6-token-bonus-1.6"


def test_train_word_lm_script(tmp_path) -> None:
    from recipe_scripts import load_recipe_script

    script = load_recipe_script("local/train_word_lm.py")
    text = tmp_path / "transcript_words.txt"
    # the repeated line is counted once: the LM equals one trained on the distinct lines
    text.write_text("A AB C\nBA C\nA AB C\n\nCC A\n")
    out = tmp_path / "lm" / "word_2gram.pt"
    script.main(["--text", str(text), "--order", "2", "--lm-path", str(out)])
    got = load_ngram_lm(out)
    ref = train_word_ngram_lm([["A", "AB", "C"], ["BA", "C"], ["CC", "A"]], order=2)
    assert got.words == ref.words == ["A", "AB", "BA", "C", "CC"]
    assert got.sentence_log_prob(["A", "C"]) == pytest.approx(ref.sentence_log_prob(["A", "C"]))
    with pytest.raises(SystemExit, match="missing.txt: no such text file"):
        script.main(["--text", str(tmp_path / "missing.txt"), "--lm-path", str(out)])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SystemExit, match="empty.txt: no sentences"):
        script.main(["--text", str(tmp_path / "empty.txt"), "--lm-path", str(out)])
    with pytest.raises(SystemExit, match="--order must be at least 1"):
        script.main(["--text", str(text), "--order", "0", "--lm-path", str(out)])
