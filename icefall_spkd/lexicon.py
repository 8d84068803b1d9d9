"""A closed-vocabulary constraint on a token LM, for shallow fusion.

On a closed-vocabulary task (every test word is a word of the task, as in
DARPA Resource Management) a transducer over word pieces can still spell
words that do not exist: "BEAUTIFUL" as "A FUL". :class:`LexiconConstrainedLm`
wraps a token LM (:class:`icefall_spkd.ngram_lm.TokenNgramLm`) so that fusion
only lets the search spell words of a given word list:

* the sentence starts with a piece that starts a word (SentencePiece's
  ``▁`` prefix), and such a piece may follow only a finished word (one in
  the list);
* every piece must leave the word being spelled a prefix of a listed word;
* the end of the sentence must follow a finished word;
* the special pieces (``<sos/eos>``, ``<unk>``) are never emitted.

A piece that breaks a rule gets ``penalty`` (default -1000, i.e. never taken
at usual LM weights) added to its LM log-probability: a large finite value,
so that scores stay finite when a beam has too few legal expansions. The
word list must come from the training transcripts, never from test text; on
an open-vocabulary set (test-open) the constraint can only hurt, and it is
reported as such.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Hashable, Iterable, Optional, Sequence, Tuple

import torch

__all__ = ["LexiconConstrainedLm", "WORD_START"]

WORD_START = "\u2581"  # SentencePiece's word-boundary mark

LexState = Tuple[Hashable, Optional[str]]


class LexiconConstrainedLm:
    """A token LM that only spells the words of ``words`` (see the module docstring).

    Args:
      lm: the token LM (``state``, ``log_probs``, ``eos_log_prob``).
      pieces: the text of every token id (``sp.id_to_piece``), blank included.
      words: the closed vocabulary.
      blank_id: left unscored (0), as the LM leaves it.
      penalty: added to the log-probability of a piece that breaks a rule.
    """

    def __init__(
        self,
        lm,
        pieces: Sequence[str],
        words: Iterable[str],
        blank_id: int = 0,
        penalty: float = -1000.0,
    ) -> None:
        self.lm = lm
        self.blank_id = blank_id
        self.penalty = penalty
        self.words: FrozenSet[str] = frozenset(words)
        if not self.words:
            raise ValueError("the lexicon has no words")
        self.prefixes = frozenset(w[:i] for w in self.words for i in range(len(w) + 1))
        self._special = [p.startswith("<") and p.endswith(">") for p in pieces]
        self._starts_word = [p.startswith(WORD_START) for p in pieces]
        self._text = [p[1:] if p.startswith(WORD_START) else p for p in pieces]
        self._masks: Dict[Optional[str], torch.Tensor] = {}
        self._log_cache: Dict[LexState, torch.Tensor] = {}

    def partial_word(self, tokens: Sequence[int]) -> Optional[str]:
        """The letters of the word being spelled: the pieces since the last word start.

        ``None`` before the first token (only a word start may come).
        """
        if not tokens:
            return None
        i = len(tokens)
        while i > 0 and not self._starts_word[tokens[i - 1]]:
            i -= 1
        start = max(i - 1, 0)
        return "".join(self._text[t] for t in tokens[start:])

    def state(self, tokens: Sequence[int]) -> LexState:
        """The wrapped LM's state and the word being spelled (``None`` at the start)."""
        return (self.lm.state(tokens), self.partial_word(tokens))

    def _finished(self, partial: Optional[str]) -> bool:
        """A word may start here: at the sentence start, after a bare ``▁``, after a listed word."""
        return partial is None or partial == "" or partial in self.words

    def allowed(self, partial: Optional[str]) -> list[bool]:
        """Which token ids may follow the partial word ``partial`` (blank: True)."""
        finished = self._finished(partial)
        out = []
        for v, text in enumerate(self._text):
            if v == self.blank_id:
                out.append(True)
            elif self._special[v]:
                out.append(False)
            elif self._starts_word[v]:
                out.append(finished and text in self.prefixes)
            else:
                out.append(partial is not None and partial + text in self.prefixes)
        return out

    def log_probs(self, state: LexState) -> torch.Tensor:
        """The wrapped LM's log-probabilities plus ``penalty`` where a rule is broken.

        Cached per state (the search asks for the same states frame after
        frame): do not modify the tensor.
        """
        cached = self._log_cache.get(state)
        if cached is None:
            lm_state, partial = state
            mask = self._masks.get(partial)
            if mask is None:
                mask = torch.tensor([0.0 if ok else self.penalty for ok in self.allowed(partial)])
                self._masks[partial] = mask
            cached = self.lm.log_probs(lm_state) + mask
            self._log_cache[state] = cached
        return cached

    def eos_log_prob(self, state: LexState) -> float:
        """The wrapped LM's end-of-sentence log-probability, penalised after an unfinished word."""
        lm_state, partial = state
        out = self.lm.eos_log_prob(lm_state)
        return out if self._finished(partial) else out + self.penalty
