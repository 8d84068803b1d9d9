"""Tests of icefall_spkd.wer on a hand-checked example.

Hand alignment (each is the unique minimum-cost alignment):

  u1  ref THE CAT SAT ON THE MAT    hyp THE CAT SAT ON MAT
      -> second THE deleted                     ins 0  del 1  sub 0  corr 5
  u2  ref A B C                     hyp A X C D
      -> B->X substituted, D inserted           ins 1  del 0  sub 1  corr 2
      (inserting X instead would need B->C, C->D: cost 3 > 2)
  u3  ref HELLO WORLD               hyp HELLO WORLD
      -> correct                                ins 0  del 0  sub 0  corr 2
  u4  ref GOOD MORNING              hyp (empty)
      -> both deleted                           ins 0  del 2  sub 0  corr 0
  u5  ref (empty)                   hyp UH
      -> UH inserted                            ins 1  del 0  sub 0  corr 0

Totals: ins 2, del 3, sub 1, errors 6, reference words 6+3+2+2+0 = 13,
correct 9, utterances with errors 4 of 5; WER = 600 / 13 = 46.1538...%.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from icefall_spkd.wer import (
    compute_wer,
    write_error_stats,
    write_recogs,
    write_wer_summary,
)

RESULTS = [
    ("u3", "HELLO WORLD".split(), "HELLO WORLD".split()),
    ("u1", "THE CAT SAT ON THE MAT".split(), "THE CAT SAT ON MAT".split()),
    ("u2", "A B C".split(), "A X C D".split()),
    ("u4", "GOOD MORNING".split(), []),
    ("u5", [], ["UH"]),
]
EXPECTED_WER = 100.0 * 6 / 13


def test_compute_wer_hand_checked() -> None:
    stats = compute_wer([r for _, r, _ in RESULTS], [h for _, _, h in RESULTS])
    assert stats["ins"] == 2
    assert stats["del"] == 3
    assert stats["sub"] == 1
    assert stats["errors"] == 6
    assert stats["ref_words"] == 13
    assert stats["corr"] == 9
    assert stats["num_utts"] == 5
    assert stats["sent_errors"] == 4
    assert stats["wer"] == pytest.approx(EXPECTED_WER)


def test_compute_wer_strings_and_edge_cases() -> None:
    assert compute_wer(["A B C"], ["A X C D"])["errors"] == 2
    assert compute_wer([""], [""])["wer"] == 0.0
    assert compute_wer([""], ["UH"])["wer"] == float("inf")
    with pytest.raises(ValueError):
        compute_wer(["A"], [])
    with pytest.raises(ValueError):
        compute_wer(["A * B"], ["A B"])


def test_write_error_stats(tmp_path: Path) -> None:
    path = tmp_path / "errs-test-clean.txt"
    wer = write_error_stats(path, "test-clean", RESULTS)
    assert wer == pytest.approx(EXPECTED_WER)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "%WER = 46.15 [ 6 / 13, 2 ins, 3 del, 1 sub ]" in lines
    assert (
        "Errors: 2 insertions, 3 deletions, 1 substitutions, over 13 reference words (9 correct)"
        in lines
    )
    # Per-utterance alignments, sorted by cut id.
    utt_lines = [ln for ln in lines if ln.startswith("u") and ":\t" in ln]
    assert utt_lines == [
        "u1:\tTHE CAT SAT ON (THE->*) MAT",
        "u2:\tA (B->X) C (*->D)",
        "u3:\tHELLO WORLD",
        "u4:\t(GOOD->*) (MORNING->*)",
        "u5:\t(*->UH)",
    ]

    def section(name: str) -> list[str]:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(name))
        out = []
        for ln in lines[start + 1 :]:
            if not ln:
                break
            out.append(ln)
        return out

    assert section("SUBSTITUTIONS:") == ["1   B -> X"]
    assert section("DELETIONS:") == ["1   GOOD", "1   MORNING", "1   THE"]
    assert section("INSERTIONS:") == ["1   D", "1   UH"]
    per_word = {ln.split()[0]: [int(x) for x in ln.split()[1:]] for ln in section("PER-WORD")}
    # word: [corr, tot_errs, count_in_ref, count_in_hyp]
    assert per_word["THE"] == [1, 1, 2, 1]
    assert per_word["B"] == [0, 1, 1, 0]
    assert per_word["X"] == [0, 1, 0, 1]
    assert per_word["D"] == [0, 1, 0, 1]
    assert per_word["GOOD"] == [0, 1, 1, 0]
    assert per_word["UH"] == [0, 1, 0, 1]
    assert per_word["CAT"] == [1, 0, 1, 1]
    assert sum(v[1] for v in per_word.values()) == 6 + 1  # a substitution counts for both words


def test_write_recogs_and_summary(tmp_path: Path) -> None:
    recogs = tmp_path / "recogs.txt"
    write_recogs(recogs, RESULTS)
    lines = recogs.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == [
        "u1:\tref=THE CAT SAT ON THE MAT",
        "u1:\thyp=THE CAT SAT ON MAT",
        "u2:\tref=A B C",
        "u2:\thyp=A X C D",
    ]
    assert lines[-2:] == ["u5:\tref=", "u5:\thyp=UH"]

    summary = tmp_path / "wer-summary.txt"
    write_wer_summary(summary, {"beam_size_4": 7.5, "greedy_search": 8.25, "beam_size_8": 7.125})
    assert summary.read_text(encoding="utf-8").splitlines() == [
        "settings\tWER",
        "beam_size_8\t7.12",
        "beam_size_4\t7.50",
        "greedy_search\t8.25",
    ]
