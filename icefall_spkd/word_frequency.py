"""Word errors split by how often each reference word occurs in training.

A recogniser trained on a few hours of speech spells frequent words right
and rare ones wrong; when most of the errors sit on words seen only a few
times in training, more distinct training text (not more epochs) is what the
model needs. :func:`errors_by_train_count` measures that from a decoding's
``recogs-*.txt`` and the training transcripts.

Each reference word is scored from one minimum-edit-distance alignment
(:func:`icefall_spkd.wer.align_words`): it is an error when it is deleted or
substituted. Insertions have no reference word, so they are counted
separately, not in any bucket; summed with the buckets' errors they give
the WER's numerator.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from .wer import EPS, Result, align_words

__all__ = [
    "FrequencyBucket",
    "errors_by_train_count",
    "non_word_hypotheses",
    "parse_bucket_edges",
    "word_counts",
]


@dataclass(frozen=True)
class FrequencyBucket:
    """Reference words whose training count lies in ``[low, high]``."""

    low: int
    high: Optional[int]  # inclusive; None: no upper bound
    words: int  # reference word tokens in the bucket
    errors: int  # of those, deleted or substituted

    @property
    def label(self) -> str:
        if self.high is None:
            return f">={self.low}"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    @property
    def error_rate(self) -> float:
        """Errors per reference word of the bucket, in per cent (0 if empty)."""
        return 100.0 * self.errors / self.words if self.words else 0.0


def word_counts(transcripts: Iterable[str]) -> Counter:
    """Word counts over whitespace-split transcript lines."""
    return Counter(w for line in transcripts for w in line.split())


def parse_bucket_edges(spec: str) -> list[int]:
    """``"1,3,10,100"`` -> ``[1, 3, 10, 100]``: the lower edges of the buckets
    after the first, which starts at 0 (words never seen in training).

    Raises ValueError unless the edges are positive and strictly increasing.
    """
    try:
        edges = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bucket edges must be integers like '1,3,10,100', got {spec!r}") from None
    if not edges or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bucket edges must be positive and increasing, got {spec!r}")
    return edges


def errors_by_train_count(
    results: Sequence[Result], train_counts: Mapping[str, int], edges: Sequence[int]
) -> tuple[list[FrequencyBucket], int]:
    """Split the reference words of ``results`` by their training count.

    ``edges`` are the lower edges of every bucket but the first (see
    :func:`parse_bucket_edges`): edges ``[1, 3]`` give the buckets 0, 1-2 and
    >=3. Returns the buckets and the number of inserted words.
    """
    lows = [0, *edges]
    highs: list[Optional[int]] = [e - 1 for e in edges] + [None]
    words = [0] * len(lows)
    errors = [0] * len(lows)
    insertions = 0
    for _cut, ref, hyp in results:
        for r, h in align_words(ref, hyp):
            if r == EPS:
                insertions += 1
                continue
            k = bisect.bisect_right(lows, train_counts.get(r, 0)) - 1
            words[k] += 1
            errors[k] += r != h
    buckets = [FrequencyBucket(lo, hi, n, e) for lo, hi, n, e in zip(lows, highs, words, errors)]
    return buckets, insertions


def non_word_hypotheses(
    results: Sequence[Result], train_counts: Mapping[str, int]
) -> tuple[int, int, int]:
    """How many hypothesis words are not words of the training transcripts.

    On a closed-vocabulary task such a word is a misspelling or a word cut in
    two ("COME FUSION" for "CONFUSION"), an error a lexicon-constrained search
    cannot make. Returns ``(non-words, hypothesis words, reference words)``
    over all utterances.
    """
    non_words = hyp_words = ref_words = 0
    for _cut, ref, hyp in results:
        ref_words += len(ref)
        hyp_words += len(hyp)
        non_words += sum(1 for w in hyp if train_counts.get(w, 0) == 0)
    return non_words, hyp_words, ref_words
