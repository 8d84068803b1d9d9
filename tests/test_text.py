"""Tests for icefall_spkd.text: LibriSpeech-style normalisation and sentence filtering."""

from __future__ import annotations

import re

import pytest

from icefall_spkd.text import is_clean_sentence, normalize_text, spell_number, split_sentences

LIBRISPEECH_RE = re.compile(r"^(?:[A-Z']+(?: [A-Z']+)*)?$")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello,   world!", "HELLO WORLD"),
        ("  A long-forgotten   loved one.\n", "A LONG FORGOTTEN LOVED ONE"),
        ("Don't panic; it's fine.", "DON'T PANIC IT'S FINE"),
        ("The boys' toys", "THE BOYS' TOYS"),
        ("He said 'hello' twice", "HE SAID HELLO TWICE"),
        ("It\u2019s a caf\u00e9 na\u00efve", "IT'S A CAFE NAIVE"),
        ("Collect $200 now", "COLLECT TWO HUNDRED NOW"),
        ("1,234 cats", "ONE THOUSAND TWO HUNDRED THIRTY FOUR CATS"),
        ("the 21st and 3rd and 40th", "THE TWENTY FIRST AND THIRD AND FORTIETH"),
        ("pi is 3.14", "PI IS THREE POINT ONE FOUR"),
        ("AT&T / R2-D2", "AT T R TWO D TWO"),
        ("", ""),
        ("!!! ??? ---", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["Mixed CASE, digits 42 and symbols #@% ~ <>", "  '' quoted '' ", "a\tb\nc", "x" * 3],
)
def test_normalize_text_output_is_librispeech_style_and_idempotent(raw: str) -> None:
    out = normalize_text(raw)
    assert LIBRISPEECH_RE.match(out), out
    assert normalize_text(out) == out


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "ZERO"),
        (7, "SEVEN"),
        (13, "THIRTEEN"),
        (40, "FORTY"),
        (105, "ONE HUNDRED FIVE"),
        (1042, "ONE THOUSAND FORTY TWO"),
        (2_000_019, "TWO MILLION NINETEEN"),
    ],
)
def test_spell_number(n: int, words: str) -> None:
    assert spell_number(n) == words


def test_spell_number_rejects_negative() -> None:
    with pytest.raises(ValueError):
        spell_number(-1)


@pytest.mark.parametrize(
    "raw",
    [
        "A visit to a fresh place will bring strange work.",
        'He said "stop it" and walked away slowly.',
        "Don't count your chickens before they hatch.",
        "The quick brown fox jumps over the lazy dog!",
    ],
)
def test_clean_sentences_accepted(raw: str) -> None:
    assert is_clean_sentence(raw)


@pytest.mark.parametrize(
    "raw, why",
    [
        ("Bank error in your favor, collect $200.", "digits and symbols"),
        ("I was born in 1970 in a small town.", "digits"),
        ("Mr. Smith goes to Washington today.", "abbreviation"),
        ("The letters were signed by J. R. Tolkien himself.", "initials"),
        ("The IBM machine was very large indeed.", "acronym"),
        ("Henry VIII had rather many wives indeed.", "roman numeral"),
        ("You will see x marks the spot today.", "single letter"),
        ("Too short.", "too few words"),
        (" ".join(["word"] * 26), "too many words"),
        ("Rock & roll will never die, they say.", "ampersand"),
        ("Apples, oranges, pears, etc are fruits here.", "etc"),
        ("", "empty"),
    ],
)
def test_unclean_sentences_rejected(raw: str, why: str) -> None:
    assert not is_clean_sentence(raw), why


def test_word_limits_are_inclusive() -> None:
    five = "one two three four five"
    assert is_clean_sentence(five, min_words=5, max_words=5)
    assert not is_clean_sentence(five, min_words=6)
    assert not is_clean_sentence(five, max_words=4)


def test_split_sentences() -> None:
    text = 'A horse!  A horse!\nMy kingdom for a horse? He said "Stop." Then he left. e.g. fine'
    assert split_sentences(text) == [
        "A horse!",
        "A horse!",
        "My kingdom for a horse?",
        'He said "Stop.',
        "Then he left. e.g. fine",
    ]
    assert split_sentences("   \n ") == []
