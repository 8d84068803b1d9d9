"""A word n-gram LM, used by a word-piece transducer through prefix look-ahead.

The token LM of :mod:`icefall_spkd.ngram_lm` sees about 8 word pieces, one
or two words at BPE 50. A word n-gram sees ``order - 1`` whole words, but
the transducer emits pieces, so :class:`WordPieceLookaheadLm` turns it into
a token LM for shallow fusion (the ``TokenLm`` protocol of
:mod:`icefall_spkd.search`), in the manner of LM look-ahead in WFST
decoders.

Look-ahead
----------
With ``h`` the words finished so far, ``P(w | h)`` the word LM and
``M_h(p) = sum of P(w | h) over the words w that start with the letters p``:

* a piece that extends the word being spelled from ``p`` to ``p'`` scores
  ``log M_h(p') - log M_h(p)`` (a word starting a sentence or following a
  finished word has ``p = ""``, and ``M_h("")`` is one minus the end
  probability);
* a piece that starts a new word after the finished word ``w`` first closes
  ``w`` with ``log P(w | h) - log M_h(w)`` (the share of ``M_h(w)`` that is
  ``w`` itself rather than a longer word such as ``ws``), then scores its
  own letters against the new history ``h w``;
* the end of the sentence closes the last word the same way and adds
  ``log P(end | h w)``.

The terms telescope: the scores along any spelling of a sentence of listed
words, whatever its split into pieces, sum to the word LM's log-probability
of the sentence. A word outside the list cannot be spelled: a piece that
leaves the letters a prefix of no listed word, a word start after an
unfinished word, a word start or an end right after a bare ``▁``, and the
special pieces (``<unk>``, ``<sos/eos>``) get ``penalty`` (as in
:class:`icefall_spkd.lexicon.LexiconConstrainedLm`, which this LM makes
unnecessary). When the pieces are single letters (each word has one
spelling), every state's scores sum to one over the pieces and the end;
``tests/test_word_lm.py`` checks both properties.

The word n-gram itself is a :class:`icefall_spkd.ngram_lm.TokenNgramLm`
over word ids (id 0 unused, words ``1 .. W``), i.e. interpolated
Kneser-Ney. Train it with ``local/train_word_lm.py`` on training
transcripts only, never on dev or test text.
"""

from __future__ import annotations

import bisect
import functools
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from icefall_spkd.checkpoint import atomic_torch_save
from icefall_spkd.lexicon import WORD_START
from icefall_spkd.ngram_lm import History, TokenNgramLm, train_token_ngram_lm

__all__ = [
    "WordNgramLm",
    "WordPieceLookaheadLm",
    "train_word_ngram_lm",
    "load_ngram_lm",
    "is_word_lm_file",
]

# (word history, letters of the word being spelled or None at the start, dead)
WordLmState = Tuple[History, Optional[str], bool]


class WordNgramLm:
    """A Kneser-Ney n-gram over the words of ``words`` (see the module docstring).

    Args:
      words: the vocabulary, in the order of the ids ``1 .. len(words)``.
      ngram: the n-gram over those ids (``vocab_size = len(words) + 1``, blank 0).
    """

    def __init__(self, words: Sequence[str], ngram: TokenNgramLm) -> None:
        if ngram.vocab_size != len(words) + 1 or ngram.blank_id != 0:
            raise ValueError("the n-gram must be over ids 1..len(words) with id 0 unused")
        self.words = list(words)
        self.ngram = ngram
        self.word_ids: Dict[str, int] = {w: i + 1 for i, w in enumerate(self.words)}
        if len(self.word_ids) != len(self.words):
            raise ValueError("the word list has repeats")

    @property
    def order(self) -> int:
        return self.ngram.order

    def ids(self, sentence: Sequence[str]) -> List[int]:
        """Word ids of ``sentence``; ``KeyError`` naming a word outside the vocabulary."""
        out = []
        for w in sentence:
            if w not in self.word_ids:
                raise KeyError(f"'{w}' is not a word of the LM")
            out.append(self.word_ids[w])
        return out

    def sentence_log_prob(self, sentence: Sequence[str]) -> float:
        """Natural-log probability of the words of ``sentence`` and the end."""
        return self.ngram.sequence_log_prob(self.ids(sentence), with_eos=True)

    def save(self, path: Union[str, Path]) -> None:
        """Write the model to ``path`` (a ``torch.save`` dict), atomically."""
        atomic_torch_save(
            {
                "kind": "word_ngram_kn",
                "words": self.words,
                "order": self.ngram.order,
                "counts": self.ngram.counts,
                "discounts": self.ngram.discounts,
            },
            path,
        )


def train_word_ngram_lm(sentences: Iterable[Sequence[str]], order: int) -> WordNgramLm:
    """Count ``sentences`` (lists of words) into a Kneser-Ney word n-gram.

    The vocabulary is every word of ``sentences``, sorted.
    """
    sentences = [list(s) for s in sentences]
    words = sorted({w for s in sentences for w in s})
    if not words:
        raise ValueError("no words to train a word n-gram LM on")
    ids = {w: i + 1 for i, w in enumerate(words)}
    sequences = [[ids[w] for w in s] for s in sentences]
    ngram = train_token_ngram_lm(sequences, order=order, vocab_size=len(words) + 1, blank_id=0)
    return WordNgramLm(words, ngram)


@functools.lru_cache(maxsize=4)
def _read_lm_file(path: str, mtime_ns: int) -> Any:
    """``torch.load`` of an LM file, once per file version (decode.py names its results
    by the LM's kind before it loads the LM; run_table.py asks for every row)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _lm_file_state(path: Path) -> Any:
    return _read_lm_file(str(path), path.stat().st_mtime_ns)


def load_ngram_lm(path: Union[str, Path]) -> Union[TokenNgramLm, WordNgramLm]:
    """Read a token LM (``local/train_token_lm.py``) or a word LM (``local/train_word_lm.py``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such LM; make one with local/train_token_lm.py or local/train_word_lm.py"
        )
    try:
        state = _lm_file_state(path)
    except Exception:
        state = None
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "token_ngram_kn":
        return TokenNgramLm.from_state(state)
    if kind == "word_ngram_kn":
        words = state["words"]
        ngram = TokenNgramLm(state["order"], len(words) + 1, state["counts"], state["discounts"], 0)
        return WordNgramLm(words, ngram)
    raise ValueError(
        f"{path}: not an n-gram LM written by local/train_token_lm.py or local/train_word_lm.py"
    )


def is_word_lm_file(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a word LM of :meth:`WordNgramLm.save`.

    False for a missing or unreadable file and for anything else: the
    loader (:func:`load_ngram_lm`) gives the error.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        state = _lm_file_state(path)
    except Exception:  # not a torch file
        return False
    return isinstance(state, dict) and state.get("kind") == "word_ngram_kn"


class WordPieceLookaheadLm:
    """The word LM as a token LM over word pieces, by prefix look-ahead.

    Args:
      word_lm: the word n-gram.
      pieces: the text of every token id (``sp.id_to_piece``), blank included.
      blank_id: left unscored (0).
      penalty: the score of a piece (or end) that cannot continue a listed word.
    """

    def __init__(
        self, word_lm: WordNgramLm, pieces: Sequence[str], blank_id: int = 0, penalty: float = -1000.0
    ) -> None:
        self.word_lm = word_lm
        self.blank_id = blank_id
        self.penalty = penalty
        self.vocab_size = len(pieces)
        self._special = [p.startswith("<") and p.endswith(">") for p in pieces]
        self._starts_word = [p.startswith(WORD_START) for p in pieces]
        self._text = [p[1:] if p.startswith(WORD_START) else p for p in pieces]
        # Words sorted by their letters: the words with a given prefix are one
        # contiguous range, so M_h(prefix) is a difference of cumulative sums.
        order = sorted(range(len(word_lm.words)), key=lambda i: word_lm.words[i])
        self._sorted_words = [word_lm.words[i] for i in order]
        self._sorted_slots = np.array([i + 1 for i in order], dtype=np.int64)
        self._range_cache: Dict[str, Tuple[int, int]] = {}
        self._cumsum_cache: Dict[History, np.ndarray] = {}
        self._extend_cache: Dict[Tuple[Optional[str], bool], Tuple[np.ndarray, np.ndarray]] = {}
        self._log_cache: Dict[WordLmState, torch.Tensor] = {}

    # -- prefix masses --------------------------------------------------
    def _range(self, prefix: str) -> Tuple[int, int]:
        """``[lo, hi)`` of the sorted words that start with ``prefix`` (empty if none)."""
        r = self._range_cache.get(prefix)
        if r is None:
            lo = bisect.bisect_left(self._sorted_words, prefix)
            hi = lo
            if prefix:
                hi = bisect.bisect_left(self._sorted_words, prefix + "\U0010ffff", lo)
            else:
                hi = len(self._sorted_words)
            r = (lo, hi)
            self._range_cache[prefix] = r
        return r

    def _cumsum(self, history: History) -> np.ndarray:
        """Cumulative ``P(w | history)`` over the sorted words, with a leading 0."""
        cs = self._cumsum_cache.get(history)
        if cs is None:
            dist = self.word_lm.ngram.distribution(history)
            cs = np.concatenate([[0.0], np.cumsum(dist[self._sorted_slots])])
            self._cumsum_cache[history] = cs
        return cs

    def _log_mass(self, history: History, prefix: str) -> float:
        """``log M_history(prefix)``; ``-inf`` when no word starts with ``prefix``."""
        lo, hi = self._range(prefix)
        if lo == hi:
            return -math.inf
        cs = self._cumsum(history)
        return math.log(max(cs[hi] - cs[lo], 1e-300))

    def _close(self, history: History, word: str) -> Tuple[float, History]:
        """The closing term of ``word`` after ``history``, and the history after it."""
        wid = self.word_lm.word_ids[word]
        p_word = self.word_lm.ngram.distribution(history)[wid]
        closing = math.log(p_word) - self._log_mass(history, word)
        return closing, self.word_lm.ngram.state(history + (wid,))

    # -- the TokenLm protocol ------------------------------------------
    def state(self, tokens: Sequence[int]) -> WordLmState:
        """The finished words' history, the word being spelled, and whether the path is dead."""
        ngram = self.word_lm.ngram
        finished: List[int] = []
        partial: Optional[str] = None
        dead = False
        for t in tokens:
            if self._special[t] or t == self.blank_id:
                dead = True
                break
            if self._starts_word[t]:
                if partial is not None:
                    wid = self.word_lm.word_ids.get(partial)
                    if wid is None:
                        dead = True
                        break
                    finished.append(wid)
                partial = self._text[t]
            else:
                if partial is None:
                    dead = True
                    break
                partial += self._text[t]
        if not dead and partial is not None:
            lo, hi = self._range(partial)
            dead = lo == hi  # no listed word starts with these letters
        return (ngram.state(finished), partial, dead)

    def log_probs(self, state: WordLmState) -> torch.Tensor:
        """Look-ahead scores of every piece after ``state`` (blank 0); cached, do not modify."""
        cached = self._log_cache.get(state)
        if cached is not None:
            return cached
        history, partial, dead = state
        out = np.full(self.vocab_size, self.penalty, dtype=np.float64)
        if not dead:
            # Continuing pieces extend the partial word within the same history.
            if partial is not None:
                base = self._log_mass(history, partial)
                for v in range(self.vocab_size):
                    if self._is_piece(v) and not self._starts_word[v]:
                        score = self._log_mass(history, partial + self._text[v])
                        if score > -math.inf:
                            out[v] = score - base
            # Word-start pieces: after a finished word (closing it) or at the start.
            start_history: Optional[History] = None
            closing = 0.0
            if partial is None:
                start_history = history
            elif partial in self.word_lm.word_ids:
                closing, start_history = self._close(history, partial)
            if start_history is not None:
                for v in range(self.vocab_size):
                    if self._is_piece(v) and self._starts_word[v]:
                        score = self._log_mass(start_history, self._text[v])
                        if score > -math.inf:
                            out[v] = closing + score
        out[self.blank_id] = 0.0
        cached = torch.from_numpy(out).float()
        self._log_cache[state] = cached
        return cached

    def _is_piece(self, v: int) -> bool:
        return v != self.blank_id and not self._special[v]

    def eos_log_prob(self, state: WordLmState) -> float:
        """``log P(end)`` after closing the last word; ``penalty`` after an unfinished one."""
        history, partial, dead = state
        ngram = self.word_lm.ngram
        if dead:
            return self.penalty
        if partial is None:
            return ngram.eos_log_prob(history)
        if partial not in self.word_lm.word_ids:
            return self.penalty
        closing, after = self._close(history, partial)
        return closing + ngram.eos_log_prob(after)
