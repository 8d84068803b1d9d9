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

The same at the character level (characters of the words, spaces excluded):

  u1  THECATSATONTHEMAT (17) vs THECATSATONMAT (14): hyp is ref without one
      THE, so 3 deletions and nothing else (cost >= 3 = the length difference)
  u2  ABC vs AXCD: B->X, D inserted               ins 1  del 0   sub 1
  u3  HELLOWORLD (10): correct
  u4  GOODMORNING (11) vs nothing                 ins 0  del 11  sub 0
  u5  nothing vs UH                               ins 2  del 0   sub 0

Totals: ins 3, del 14, sub 1, errors 18 over 17+3+10+11 = 41 characters;
CER = 1800 / 41 = 43.9024...%.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from icefall_spkd.wer import (
    ErrorRate,
    compute_cer,
    compute_error_rates,
    compute_wer,
    read_recogs,
    read_recogs_or_exit,
    utterance_errors,
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
EXPECTED_CER = 100.0 * 18 / 41


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


def test_compute_cer_hand_checked() -> None:
    stats = compute_cer([r for _, r, _ in RESULTS], [h for _, _, h in RESULTS])
    assert (stats["ins"], stats["del"], stats["sub"]) == (3, 14, 1)
    assert stats["ref_words"] == 41  # characters here
    assert stats["wer"] == pytest.approx(EXPECTED_CER)
    # the textbook example: KITTEN -> SITTING is K->S, E->I and G inserted
    kitten = compute_cer(["KITTEN"], ["SITTING"])
    assert (kitten["ins"], kitten["del"], kitten["sub"]) == (1, 0, 2)
    assert kitten["wer"] == pytest.approx(300 / 6)


def test_cer_excludes_spaces() -> None:
    # a wrong word boundary with the right letters: word errors, no character error
    both = compute_error_rates(["BASEBALL GAME"], ["BASE BALL GAME"])
    assert (both["sub"], both["ins"], both["wer"]) == (1, 1, 100.0)
    assert both["cer"] == 0.0 and both["ref_chars"] == 12
    assert compute_cer(["AB C"], ["A BC"])["wer"] == 0.0
    with pytest.raises(ValueError):
        compute_cer(["A*B"], ["AB"])  # the epsilon inside a word is caught at character level


def test_write_error_stats(tmp_path: Path) -> None:
    path = tmp_path / "errs-test-clean.txt"
    wer = write_error_stats(path, "test-clean", RESULTS)
    assert wer == pytest.approx(EXPECTED_WER)
    assert isinstance(wer, ErrorRate) and wer.stats["cer"] == pytest.approx(EXPECTED_CER)
    assert (wer.stats["char_ins"], wer.stats["char_del"], wer.stats["char_sub"]) == (3, 14, 1)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "%WER = 46.15 [ 6 / 13, 2 ins, 3 del, 1 sub ]" in lines
    assert (
        "%CER = 43.90 [ 18 / 41, 3 ins, 14 del, 1 sub ] (characters of the words, spaces excluded)"
        in lines
    )
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

    assert read_recogs(recogs) == sorted(
        [(c, list(r), list(h)) for c, r, h in RESULTS], key=lambda r: r[0]
    )
    (tmp_path / "bad.txt").write_text("u1:\tref=A B\nu2:\thyp=A B\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_recogs(tmp_path / "bad.txt")
    # the scripts' reader: the same results, one-line exits for bad files
    assert read_recogs_or_exit(recogs) == read_recogs(recogs)
    with pytest.raises(SystemExit, match="bad.txt:1: expected"):
        read_recogs_or_exit(tmp_path / "bad.txt")
    with pytest.raises(SystemExit, match="missing.txt: no such file; decode first"):
        read_recogs_or_exit(tmp_path / "missing.txt")

    summary = tmp_path / "wer-summary.txt"
    write_wer_summary(summary, {"beam_size_4": 7.5, "greedy_search": 8.25, "beam_size_8": 7.125})
    assert summary.read_text(encoding="utf-8").splitlines() == [
        "settings\tWER\tCER\tS\tD\tI",
        "beam_size_8\t7.12\t-\t-\t-\t-",
        "beam_size_4\t7.50\t-\t-\t-\t-",
        "greedy_search\t8.25\t-\t-\t-\t-",
    ]
    # what write_error_stats returns carries CER and the split: S 1, D 3, I 2 of 13 words
    wer = write_error_stats(tmp_path / "errs.txt", "test", RESULTS)
    write_wer_summary(summary, {"greedy_search": wer})
    assert summary.read_text(encoding="utf-8").splitlines()[1] == (
        "greedy_search\t46.15\t43.90\t7.69\t23.08\t15.38"
    )


def test_utterance_errors_hand_checked() -> None:
    assert utterance_errors(RESULTS) == {
        "u1": (1, 6), "u2": (2, 3), "u3": (0, 2), "u4": (2, 2), "u5": (1, 0)
    }  # fmt: skip
    with pytest.raises(ValueError, match="u1"):
        utterance_errors([RESULTS[1], RESULTS[1]])
