"""Paired bootstrap of the WER difference between two systems on the same utterances.

Two systems ``a`` and ``b`` decoded the same test set. Their WER difference
``WER(a) - WER(b)`` on that set is one number; how much of it would survive
another draw of test utterances is what the bootstrap estimates (Bisani and
Ney, ICASSP 2004, "Bootstrap estimates for confidence intervals in ASR
performance evaluation"):

1. draw ``U`` utterances with replacement from the ``U`` of the set (the
   same draw for both systems: the comparison is *paired*);
2. on the draw, ``WER = sum of errors / sum of reference words`` for each
   system (a corpus-level WER, not a mean of per-utterance WERs), and their
   difference;
3. repeat ``num_resamples`` times; the interval is the ``(1-c)/2`` and
   ``(1+c)/2`` percentiles of the differences (percentile bootstrap).

Several runs of each system (seeds) are pooled by resampling utterances only:
a resampled utterance brings its errors in every run of both systems, and the
statistic is ``sum over runs and drawn utterances of (errors_a - errors_b)``
over ``runs * sum of drawn reference words``, which is the difference of the
run-averaged WERs (every run has the same reference words). The interval
then measures the uncertainty from the choice of test utterances for the
seed-averaged systems; the seed-to-seed spread is reported separately (the
``±`` of the table). Runs are paired by position (the driver pairs equal seeds).

Everything is seeded (:func:`numpy.random.default_rng`), so a table is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Tuple

import numpy as np

__all__ = ["BootstrapResult", "bootstrap_differences", "paired_arrays", "paired_bootstrap"]

#: cut id -> (word errors, reference words), as :func:`icefall_spkd.wer.utterance_errors` gives
UttErrors = Mapping[str, Tuple[int, int]]


@dataclass(frozen=True)
class BootstrapResult:
    """The outcome of :func:`paired_bootstrap` (all WERs in percent).

    Attributes:
      difference: ``WER(a) - WER(b)`` on the whole set (run-averaged).
      low, high: the percentile interval of the difference.
      confidence: e.g. 0.95.
      share_a_better: share of resamples where ``a`` has the lower WER.
      num_resamples, num_utts, num_runs: what it was computed from.
    """

    difference: float
    low: float
    high: float
    confidence: float
    share_a_better: float
    num_resamples: int
    num_utts: int
    num_runs: int


def _as_runs(errors: np.ndarray, num_utts: int, name: str) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[1] != num_utts:
        raise ValueError(
            f"{name}: expected {num_utts} error counts per run, got an array of shape {e.shape}"
        )
    return e


def bootstrap_differences(
    ref_words: Sequence[int],
    errors_a: Sequence,
    errors_b: Sequence,
    num_resamples: int = 10000,
    seed: int = 0,
) -> np.ndarray:
    """The ``num_resamples`` bootstrap replicates of ``WER(a) - WER(b)`` (percent).

    Args:
      ref_words: reference words of each of the ``U`` utterances.
      errors_a, errors_b: word errors per utterance, shape ``[U]`` (one run)
        or ``[K, U]`` (``K`` runs, paired by position); same ``K`` for both.
      num_resamples: number of replicates.
      seed: seed of the random draws.
    Returns:
      float array of ``num_resamples`` differences; a replicate whose draw
      has no reference words (possible only with empty references) is NaN.
    """
    r = np.asarray(ref_words, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError("ref_words: expected a non-empty list of per-utterance word counts")
    U = r.size
    a, b = _as_runs(errors_a, U, "errors_a"), _as_runs(errors_b, U, "errors_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} runs of system a but {b.shape[0]} of b; pair them")
    K = a.shape[0]
    d = (a - b).sum(axis=0)  # per utterance, summed over runs
    rng = np.random.default_rng(seed)
    out = np.empty(num_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // U)  # rows of the index matrix per step (memory bound)
    for start in range(0, num_resamples, chunk):
        m = min(chunk, num_resamples - start)
        idx = rng.integers(0, U, size=(m, U))
        num, den = d[idx].sum(axis=1), K * r[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + m] = np.where(den > 0, 100.0 * num / den, np.nan)
    return out


def paired_bootstrap(
    ref_words: Sequence[int],
    errors_a: Sequence,
    errors_b: Sequence,
    num_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile confidence interval of ``WER(a) - WER(b)``; arguments as :func:`bootstrap_differences`."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    reps = bootstrap_differences(ref_words, errors_a, errors_b, num_resamples, seed)
    reps = reps[~np.isnan(reps)]
    r = np.asarray(ref_words, dtype=np.float64)
    a = _as_runs(errors_a, r.size, "errors_a")
    b = _as_runs(errors_b, r.size, "errors_b")
    if r.sum() <= 0:
        raise ValueError("the references hold no words; a WER difference is undefined")
    diff = 100.0 * float((a - b).sum()) / (a.shape[0] * float(r.sum()))
    alpha = 1.0 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1.0 - alpha / 2])
    return BootstrapResult(
        difference=diff,
        low=float(low),
        high=float(high),
        confidence=confidence,
        share_a_better=float(np.mean(reps < 0)),
        num_resamples=int(reps.size),
        num_utts=int(r.size),
        num_runs=int(a.shape[0]),
    )


def paired_arrays(
    runs_a: Sequence[UttErrors], runs_b: Sequence[UttErrors], names: Tuple[str, str] = ("a", "b")
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line up per-utterance errors of paired runs: ``(ref_words [U], errors_a [K,U], errors_b [K,U])``.

    Every run must hold the same utterances with the same reference word
    counts (the same test set); the first difference is reported as a
    ValueError naming the run and the utterance.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(
            f"{len(runs_a)} run(s) of {names[0]} and {len(runs_b)} of {names[1]}: "
            "need the same positive number, paired"
        )
    cuts = sorted(runs_a[0])
    refs = {c: runs_a[0][c][1] for c in cuts}
    for name, runs in zip(names, (runs_a, runs_b)):
        for k, run in enumerate(runs):
            if set(run) != set(cuts):
                odd = sorted(set(run) ^ set(cuts))[0]
                raise ValueError(
                    f"{name} run {k}: utterance {odd} is in one run and not the other; "
                    "decode both systems on the same test set"
                )
            for c in cuts:
                if run[c][1] != refs[c]:
                    raise ValueError(
                        f"{name} run {k}: utterance {c} has {run[c][1]} reference words, "
                        f"another run {refs[c]}; decode both systems on the same test set"
                    )
    ref = np.array([refs[c] for c in cuts], dtype=np.int64)
    ea = np.array([[run[c][0] for c in cuts] for run in runs_a], dtype=np.int64)
    eb = np.array([[run[c][0] for c in cuts] for run in runs_b], dtype=np.int64)
    return ref, ea, eb
