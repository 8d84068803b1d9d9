"""Word errors by training count (icefall_spkd/word_frequency.py, local/errors_by_word_count.py)."""

from __future__ import annotations

import random

import pytest
from recipe_scripts import load_recipe_script

from icefall_spkd.wer import compute_wer, write_recogs
from icefall_spkd.word_frequency import (
    errors_by_train_count,
    non_word_hypotheses,
    parse_bucket_edges,
    word_counts,
)


def test_hand_counted_example():
    counts = word_counts(["A A A B", "A A"])  # A: 5, B: 1, C: never
    results = [
        ("u1", "A B C".split(), "A X C D".split()),  # B substituted, D inserted
        ("u2", "C A".split(), "A".split()),  # C deleted
    ]
    buckets, insertions = errors_by_train_count(results, counts, [1, 3])
    assert [(b.label, b.words, b.errors) for b in buckets] == [
        ("0", 2, 1),
        ("1-2", 1, 1),
        (">=3", 2, 0),
    ]
    assert insertions == 1
    assert buckets[0].error_rate == pytest.approx(50.0)
    # hypothesis words never seen in training: X and D in u1 (C is a reference
    # word, but training never saw it either)
    assert non_word_hypotheses(results, counts) == (3, 5, 5)


def test_buckets_add_up_to_the_wer():
    """Over random hypotheses, bucket errors plus insertions are the WER's numerator
    and bucket words its denominator, as compute_wer counts them."""
    rng = random.Random(0)
    vocab = [f"W{i}" for i in range(12)]
    counts = {w: rng.choice([0, 1, 2, 5, 40, 200]) for w in vocab}
    results = []
    for n in range(40):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 8))]
        hyp = [w if rng.random() < 0.6 else rng.choice(vocab) for w in ref]
        hyp = [w for w in hyp if rng.random() < 0.9] + rng.sample(vocab, rng.randint(0, 2))
        results.append((f"u{n}", ref, hyp))
    buckets, insertions = errors_by_train_count(results, counts, [1, 3, 10, 100])
    wer = compute_wer([r for _, r, _ in results], [h for _, _, h in results])
    assert sum(b.words for b in buckets) == wer["ref_words"]
    assert sum(b.errors for b in buckets) + insertions == wer["ins"] + wer["del"] + wer["sub"]
    # every word lands in the bucket of its count
    assert buckets[0].words == sum(counts[w] == 0 for _, r, _ in results for w in r)


@pytest.mark.parametrize("spec", ["", "0,3", "3,3", "5,2", "a,b"])
def test_bad_edges_are_refused(spec):
    with pytest.raises(ValueError, match="edges"):
        parse_bucket_edges(spec)


def test_script_prints_the_table(tmp_path, capsys):
    script = load_recipe_script("local/errors_by_word_count.py")
    train = tmp_path / "transcript_words.txt"
    train.write_text("A A A B\nA A\n", encoding="utf-8")
    recogs = tmp_path / "recogs-test-clean.txt"
    write_recogs(recogs, [("u1", "A B C", "A X C D"), ("u2", "C A", "A")])
    assert script.main(["--train-text", str(train), "--recogs", str(recogs), "--edges", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "| 1-2 | 20.0 % (1) | 100.0 % (1) |" in out
    assert "insertions: 1; WER 60.00 % over 5 reference words" in out
    assert "not in the training transcripts: 3 of 5 (60.0 %; 60.0 per 100 reference words)" in out
    with pytest.raises(SystemExit, match="no such file"):
        script.main(["--train-text", str(tmp_path / "missing.txt"), "--recogs", str(recogs)])
