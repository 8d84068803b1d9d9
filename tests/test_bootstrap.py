"""The paired bootstrap (icefall_spkd.bootstrap) against exact answers."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from icefall_spkd.bootstrap import bootstrap_differences, paired_arrays, paired_bootstrap
from icefall_spkd.wer import compute_wer, utterance_errors

# Three utterances: reference words, errors of system a and of system b.
R3, A3, B3 = [4, 6, 10], [1, 3, 2], [2, 1, 6]


def _exact_distribution(ref, ea, eb) -> dict[float, float]:
    """Every one of the U**U equally likely ordered draws, enumerated: value -> probability."""
    U = len(ref)
    counts: Counter[float] = Counter()
    for draw in itertools.product(range(U), repeat=U):
        num = sum(ea[i] - eb[i] for i in draw)
        den = sum(ref[i] for i in draw)
        counts[round(100.0 * num / den, 9)] += 1
    return {v: c / U**U for v, c in counts.items()}


def _exact_quantile(dist: dict[float, float], q: float) -> float:
    """The smallest value whose cumulative probability reaches ``q``."""
    cdf = 0.0
    for v in sorted(dist):
        cdf += dist[v]
        if cdf >= q - 1e-12:
            return v
    return max(dist)


def test_identical_systems_give_a_zero_width_interval_at_zero() -> None:
    rng = np.random.default_rng(1)
    ref = rng.integers(1, 20, size=50)
    errs = rng.integers(0, 5, size=50)
    res = paired_bootstrap(ref, errs, errs, num_resamples=2000)
    assert (res.difference, res.low, res.high) == (0.0, 0.0, 0.0)
    assert res.share_a_better == 0.0


def test_a_constant_extra_error_per_utterance_is_an_exact_difference() -> None:
    # every utterance has 5 words and b makes exactly one more error on each:
    # every resample has WER(a) - WER(b) = -1/5 = -20 %, so the interval is that point
    ref = [5] * 30
    a = np.random.default_rng(2).integers(0, 3, size=30)
    res = paired_bootstrap(ref, a, a + 1, num_resamples=2000)
    assert res.difference == pytest.approx(-20.0)
    assert res.low == pytest.approx(-20.0) and res.high == pytest.approx(-20.0)
    assert res.share_a_better == 1.0


def test_known_extra_errors_are_inside_the_interval() -> None:
    rng = np.random.default_rng(3)
    U = 400
    ref = rng.integers(5, 25, size=U)
    a = rng.binomial(ref, 0.2)
    extra = rng.binomial(1, 0.5, size=U) * rng.integers(1, 3, size=U)  # b's extra errors
    b = a + extra
    exact = -100.0 * extra.sum() / ref.sum()  # the difference on the whole set, by hand
    res = paired_bootstrap(ref, a, b, num_resamples=4000, seed=7)
    assert res.difference == pytest.approx(exact)
    assert res.low <= exact <= res.high
    assert res.high < 0  # b is worse on every resample that matters
    # the interval shrinks with more utterances (about 1/sqrt(U))
    small = paired_bootstrap(ref[:100], a[:100], b[:100], num_resamples=4000, seed=7)
    assert (small.high - small.low) > 1.5 * (res.high - res.low)


def test_brute_force_on_three_utterances() -> None:
    """All 27 resamples of 3 utterances enumerated: the estimate must follow the exact law."""
    exact = _exact_distribution(R3, A3, B3)
    B = 40000
    reps = np.round(bootstrap_differences(R3, A3, B3, num_resamples=B, seed=11), 9)
    got = Counter(reps.tolist())
    assert set(got) <= set(exact)
    for v, p in exact.items():
        sigma = math.sqrt(p * (1 - p) / B)
        assert abs(got[v] / B - p) < 5 * sigma, (v, got[v] / B, p)
    mean = sum(v * p for v, p in exact.items())
    assert reps.mean() == pytest.approx(mean, abs=0.3)
    # the percentile intervals are the exact quantiles (the CDF stays >= 0.01 away from them)
    for conf in (0.95, 0.6):
        res = paired_bootstrap(R3, A3, B3, num_resamples=B, confidence=conf, seed=11)
        alpha = 1 - conf
        assert res.low == pytest.approx(_exact_quantile(exact, alpha / 2))
        assert res.high == pytest.approx(_exact_quantile(exact, 1 - alpha / 2))
    assert res.difference == pytest.approx(100.0 * (6 - 9) / 20)


def test_seeded_and_reproducible() -> None:
    x = bootstrap_differences(R3, A3, B3, num_resamples=500, seed=5)
    y = bootstrap_differences(R3, A3, B3, num_resamples=500, seed=5)
    z = bootstrap_differences(R3, A3, B3, num_resamples=500, seed=6)
    assert np.array_equal(x, y) and not np.array_equal(x, z)


def test_pooled_runs_give_the_difference_of_seed_averaged_wers() -> None:
    """Two seeds of each system from real transcripts: the point estimate is the
    difference of the mean WERs as compute_wer gives them, and the runs are paired."""
    refs = ["A B C", "D E", "F G H I"]
    hyps = {
        ("a", 0): ["A B C", "D", "F G H I"],
        ("a", 1): ["A X C", "D E", "F G H"],
        ("b", 0): ["A", "D E Z", "F G I"],
        ("b", 1): ["A B C D", "E", "G H I"],
    }
    per_run = {
        k: utterance_errors([(f"u{i}", r, h) for i, (r, h) in enumerate(zip(refs, hs))])
        for k, hs in hyps.items()
    }
    ref, ea, eb = paired_arrays(
        [per_run[("a", 0)], per_run[("a", 1)]], [per_run[("b", 0)], per_run[("b", 1)]]
    )
    assert ref.tolist() == [3, 2, 4] and ea.shape == (2, 3)
    wer = {k: compute_wer(refs, hs)["wer"] for k, hs in hyps.items()}
    expected = (wer[("a", 0)] + wer[("a", 1)]) / 2 - (wer[("b", 0)] + wer[("b", 1)]) / 2
    res = paired_bootstrap(ref, ea, eb, num_resamples=1000)
    assert res.difference == pytest.approx(expected)
    assert res.num_runs == 2 and res.num_utts == 3
    assert res.low <= expected <= res.high


def test_unpaired_input_is_refused_with_the_utterance_named() -> None:
    a = {"u1": (1, 3), "u2": (0, 2)}
    with pytest.raises(ValueError, match="b run 0: utterance u2 is in one run"):
        paired_arrays([a], [{"u1": (1, 3), "u3": (0, 2)}])
    with pytest.raises(ValueError, match="u2 has 5 reference words"):
        paired_arrays([a], [{"u1": (1, 3), "u2": (0, 5)}])
    with pytest.raises(ValueError, match="2 run"):
        paired_arrays([a, a], [a])
    with pytest.raises(ValueError, match="pair"):
        bootstrap_differences([3, 2], [[1, 0], [0, 0]], [1, 0])
