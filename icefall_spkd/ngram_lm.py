"""A token-level n-gram language model with interpolated Kneser-Ney smoothing.

It is meant for shallow fusion in transducer beam search
(:func:`icefall_spkd.search.modified_beam_search` with ``lm=``): the tokens
are the transducer's own BPE ids, so no lexicon or FST is needed, and with
small BPE vocabularies (about letters) an order of 6-8 learns the spelling of
every training word and a little of the word order.

Model
-----
Every training sequence is padded on the left with ``order - 1`` copies of a
begin symbol and followed by an end symbol (:attr:`TokenNgramLm.eos`). For a
history ``h`` of ``k - 1`` tokens (``k`` the order being evaluated) and a
token ``w``, with ``c`` the counts of order ``k`` (raw counts at the highest
order, continuation counts -- the number of distinct tokens seen before
``h w`` -- below it)::

    P_k(w | h) = (max(c(h w) - D_k, 0) + D_k * N1+(h .) * P_{k-1}(w | h[1:])) / c(h .)

where ``c(h .)`` sums ``c(h w)`` over ``w`` and ``N1+(h .)`` counts the ``w``
with ``c(h w) > 0``. A history never seen falls back to ``P_{k-1}``. The
recursion ends at the uniform distribution over the predicted symbols (every
token id except the blank, plus the end symbol). ``D_k`` is the usual
estimate ``n1 / (n1 + 2 n2)`` from the counts-of-counts of order ``k``
(Chen and Goodman 1998), clipped to ``[0.1, 0.9]``.

Every distribution sums to one over the predicted symbols;
``tests/test_ngram_lm.py`` checks that and a hand-computed example.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch

from icefall_spkd.checkpoint import atomic_torch_save

__all__ = [
    "TokenNgramLm",
    "train_token_ngram_lm",
    "add_lm_training_arguments",
    "read_lm_training_sentences",
]

History = Tuple[int, ...]


class TokenNgramLm:
    """Interpolated Kneser-Ney n-gram over token ids ``0 .. vocab_size - 1``.

    Args:
      order: n, at least 1.
      vocab_size: the transducer's vocabulary size (blank included).
      counts: for each order ``k = 1 .. n`` (index ``k - 1``), a map from a
        history of ``k - 1`` symbols to ``{next symbol: count}`` (raw counts
        at order ``n``, continuation counts below).
      discounts: ``D_k`` per order, index ``k - 1``.
      blank_id: the id the model never predicts (it gets log-probability 0
        in :meth:`log_probs`, so fusion leaves blank scores alone).
    """

    def __init__(
        self,
        order: int,
        vocab_size: int,
        counts: Sequence[Dict[History, Dict[int, int]]],
        discounts: Sequence[float],
        blank_id: int = 0,
    ) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if len(counts) != order or len(discounts) != order:
            raise ValueError(f"need {order} count tables and discounts")
        self.order = order
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.bos = vocab_size  # begin padding (never predicted)
        self.eos = vocab_size + 1
        self.counts = [dict(c) for c in counts]
        self.discounts = list(discounts)
        # Dense arrays are indexed by symbol id; slots ``blank`` and ``bos`` stay 0.
        self._num_slots = vocab_size + 2
        predicted = np.ones(self._num_slots)
        predicted[[blank_id, self.bos]] = 0.0
        self._uniform = predicted / predicted.sum()
        self._cache: Dict[History, np.ndarray] = {}
        self._log_cache: Dict[History, torch.Tensor] = {}

    def state(self, tokens: Sequence[int]) -> History:
        """The history that predicts the token after ``tokens`` (begin-padded)."""
        n = self.order - 1
        if n == 0:
            return ()
        tail = tuple(tokens[-n:])
        return (self.bos,) * (n - len(tail)) + tail

    def _distribution(self, history: History) -> np.ndarray:
        """``P(. | history)`` over all slots, by the recursion of the module docstring."""
        cached = self._cache.get(history)
        if cached is not None:
            return cached
        k = len(history) + 1
        lower = self._uniform if k == 1 else self._distribution(history[1:])
        table = self.counts[k - 1].get(history)
        if not table:
            dist = lower
        else:
            d = self.discounts[k - 1]
            total = float(sum(table.values()))
            dist = lower * (d * len(table) / total)
            for w, c in table.items():
                dist[w] += max(c - d, 0.0) / total
        self._cache[history] = dist
        return dist

    def distribution(self, history: History) -> np.ndarray:
        """``P(. | history)`` over every slot (ids, then begin and end); cached, do not modify."""
        return self._distribution(history)

    def log_probs(self, history: History) -> torch.Tensor:
        """``log P(w | history)`` for every token id ``w`` (shape ``(vocab_size,)``).

        The blank's entry is 0 (it is not a word piece; fusion must not score it).
        The tensor is cached and shared: do not modify it.
        """
        cached = self._log_cache.get(history)
        if cached is None:
            dist = self._distribution(history)[: self.vocab_size].copy()
            dist[self.blank_id] = 1.0
            cached = torch.from_numpy(np.log(dist)).float()
            self._log_cache[history] = cached
        return cached

    def eos_log_prob(self, history: History) -> float:
        """``log P(end of sentence | history)``."""
        return math.log(self._distribution(history)[self.eos])

    def sequence_log_prob(self, tokens: Sequence[int], with_eos: bool = True) -> float:
        """Total natural-log probability of ``tokens`` (and the end symbol)."""
        total = 0.0
        for i, w in enumerate(tokens):
            total += math.log(self._distribution(self.state(tokens[:i]))[w])
        if with_eos:
            total += self.eos_log_prob(self.state(tokens))
        return total

    def save(self, path: Union[str, Path]) -> None:
        """Write the model to ``path`` (a ``torch.save`` dict), atomically."""
        atomic_torch_save(
            {
                "kind": "token_ngram_kn",
                "order": self.order,
                "vocab_size": self.vocab_size,
                "blank_id": self.blank_id,
                "counts": self.counts,
                "discounts": self.discounts,
            },
            path,
        )

    @classmethod
    def load(cls, path: Union[str, Path]) -> TokenNgramLm:
        """Read a model written by :meth:`save`; a clear error for anything else."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such LM; make one with local/train_token_lm.py")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("kind") != "token_ngram_kn":
            raise ValueError(f"{path}: not a token n-gram LM written by local/train_token_lm.py")
        return cls.from_state(state)

    @classmethod
    def from_state(cls, state: Dict) -> TokenNgramLm:
        """The model of a dict written by :meth:`save` (already read)."""
        return cls(
            state["order"], state["vocab_size"], state["counts"], state["discounts"], state["blank_id"]
        )


def _discount(table: Dict[History, Dict[int, int]]) -> float:
    """``n1 / (n1 + 2 n2)`` from the counts-of-counts of one order, clipped to [0.1, 0.9]."""
    n1 = n2 = 0
    for nxt in table.values():
        for c in nxt.values():
            n1 += c == 1
            n2 += c == 2
    if n1 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def train_token_ngram_lm(
    sequences: Iterable[Sequence[int]], order: int, vocab_size: int, blank_id: int = 0
) -> TokenNgramLm:
    """Count ``sequences`` (token-id lists) and build the Kneser-Ney model.

    Raises ``ValueError`` on an id outside ``[0, vocab_size)``, on the blank
    id, or when there is no sequence at all.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    bos, eos = vocab_size, vocab_size + 1
    top: Dict[History, Dict[int, int]] = defaultdict(lambda: defaultdict(int))
    # For continuation counts: which distinct symbols precede each n-gram of order k < n.
    preceders: List[Dict[Tuple[History, int], set]] = [defaultdict(set) for _ in range(order - 1)]
    num_sequences = 0
    for seq in sequences:
        num_sequences += 1
        for t in seq:
            if not 0 <= t < vocab_size or t == blank_id:
                raise ValueError(f"token id {t} is not a word piece of a {vocab_size}-token vocabulary")
        padded = [bos] * (order - 1) + list(seq) + [eos]
        for i in range(order - 1, len(padded)):
            w = padded[i]
            history = tuple(padded[i - order + 1 : i])
            top[history][w] += 1
            # The k-gram ending at i (history of k - 1 symbols) and the symbol before it.
            for k in range(1, order):
                h_k = tuple(padded[i - k + 1 : i])
                preceders[k - 1][(h_k, w)].add(padded[i - k])
    if num_sequences == 0:
        raise ValueError("no training sequences for the n-gram LM")
    counts: List[Dict[History, Dict[int, int]]] = []
    for k in range(1, order):
        table: Dict[History, Dict[int, int]] = defaultdict(dict)
        for (h, w), before in preceders[k - 1].items():
            table[h][w] = len(before)
        counts.append(dict(table))
    counts.append({h: dict(nxt) for h, nxt in top.items()})
    discounts = [_discount(t) for t in counts]
    return TokenNgramLm(order, vocab_size, counts, discounts, blank_id)


def add_lm_training_arguments(parser: argparse.ArgumentParser, default_order: int) -> None:
    """The options the n-gram training scripts share: --text, --order, --lm-path, --keep-repeats."""
    parser.add_argument("--text", type=Path, required=True, help="training sentences, one per line")
    parser.add_argument(
        "--order", type=int, default=default_order, help="n of the n-gram (default %(default)s)"
    )
    parser.add_argument("--lm-path", type=Path, required=True, help="where to write the LM")
    parser.add_argument(
        "--keep-repeats", action="store_true", help="count every line, repeated ones included"
    )


def read_lm_training_sentences(args: argparse.Namespace) -> List[str]:
    """The non-empty lines of ``args.text``, repeats dropped unless ``--keep-repeats``.

    Exits with a one-line message when the file is missing or has no sentence,
    or when ``--order`` is below 1.
    """
    if args.order < 1:
        raise SystemExit(f"--order must be at least 1, got {args.order}")
    if not args.text.is_file():
        raise SystemExit(f"{args.text}: no such text file; run prepare.sh stage 3 first")
    lines = [ln.strip() for ln in args.text.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not args.keep_repeats:
        lines = list(dict.fromkeys(lines))
    if not lines:
        raise SystemExit(f"{args.text}: no sentences in it")
    return lines
