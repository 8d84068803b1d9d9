"""LibriSpeech-style text normalisation and sentence filtering.

LibriSpeech transcripts are upper case, contain only the letters ``A``-``Z``,
apostrophes and single spaces. This module turns arbitrary English text into
that form and decides which raw sentences are "clean" enough to be spoken by
a text-to-speech engine and used as a transcript.

Digits: :func:`normalize_text` spells out numbers (cardinals such as ``42``,
ordinals such as ``3rd``, decimals such as ``2.5``), so it always returns a
LibriSpeech-style string. :func:`is_clean_sentence`, however, *rejects* any
sentence that contains a digit: a TTS engine reads ``1990`` as "nineteen
ninety" while the spelled-out transcript says "one thousand nine hundred
ninety", and a transcript that disagrees with its audio is worse than a
smaller corpus. The same reasoning rejects abbreviations (``Mr.``), initials,
acronyms (``IBM``, Roman numerals) and symbols (``$``, ``&``, ``%``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import List

__all__ = ["normalize_text", "is_clean_sentence", "split_sentences", "spell_number"]

_ONES = (
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
    "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN"
).split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = ((10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (1000, "THOUSAND"))
_ORDINAL_IRREGULAR = {
    "ONE": "FIRST",
    "TWO": "SECOND",
    "THREE": "THIRD",
    "FIVE": "FIFTH",
    "EIGHT": "EIGHTH",
    "NINE": "NINTH",
    "TWELVE": "TWELFTH",
}

# A number: digits with optional thousands commas, an optional decimal part
# and an optional ordinal suffix.
_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:st|nd|rd|th)?", re.I)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_LETTER_RE = re.compile(r"[^A-Z' ]+")
_SPACES_RE = re.compile(r"\s+")

# Characters a clean raw sentence may contain (after curly quotes are mapped
# to straight ones); anything else (digits, $, &, %, /, *, brackets) rejects it.
_CLEAN_CHARS_RE = re.compile(r"^[A-Za-z'\s.,;:!?\"()\-]+$")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc eg ie prof wm inc ltd co mt ft gen col capt rev hon lt "
    "sgt gov pres dept univ approx esq messrs".split()
)
_ABBREV_RE = re.compile(r"\b([A-Za-z]+)\.")
_INITIAL_RE = re.compile(r"(?:^|[\s(\"'])[A-Za-z]\.")
_SINGLE_LETTER_WORDS = frozenset({"A", "I", "O"})
# Sentence boundary: end punctuation, optional closing quotes/brackets, space,
# then (optional opening quote) an upper-case letter.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z])")


def _below_thousand(n: int) -> List[str]:
    """Words for ``0 < n < 1000``."""
    words: List[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n > 0:
        words.append(_ONES[n])
    return words


def spell_number(n: int) -> str:
    """Spell a non-negative integer in upper-case English: ``1042 -> ONE THOUSAND FORTY TWO``.

    Numbers of a quadrillion or more are read digit by digit.
    """
    if n < 0:
        raise ValueError(f"expected a non-negative integer, got {n}")
    if n == 0:
        return "ZERO"
    if n >= 10**15:
        return " ".join(_ONES[int(d)] for d in str(n))
    words: List[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    words += _below_thousand(n)
    return " ".join(words)


def _ordinal(cardinal: str) -> str:
    """``TWENTY ONE -> TWENTY FIRST``, ``FORTY -> FORTIETH``."""
    head, _, last = cardinal.rpartition(" ")
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return f"{head} {last}".strip()


def _spell_match(m: re.Match[str]) -> str:
    """Replacement for one :data:`_NUMBER_RE` match."""
    token = m.group(0).replace(",", "")
    suffix = token[-2:].lower() if token[-2:].isalpha() else ""
    if suffix:
        token = token[:-2]
    whole, _, frac = token.partition(".")
    words = spell_number(int(whole))
    if suffix:
        words = _ordinal(words)
    if frac:
        words += " POINT " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def _strip_accents(s: str) -> str:
    """``café -> cafe``: drop combining marks after NFKD decomposition."""
    decomposed = unicodedata.normalize("NFKD", s)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _clean_apostrophes(word: str) -> str:
    """Drop quote-like apostrophes: leading ones always, trailing ones unless
    after ``S`` (plural possessive ``BOYS'``)."""
    word = word.lstrip("'")
    if word.endswith("'") and not word.rstrip("'").endswith("S"):
        word = word.rstrip("'")
    elif word.endswith("''"):
        word = word.rstrip("'") + "'"
    return word


def normalize_text(s: str) -> str:
    """Normalise text to LibriSpeech style.

    Upper case; numbers spelled out (see module docstring); accents removed;
    every character other than ``A``-``Z`` and the apostrophe becomes a word
    boundary (so ``long-forgotten`` gives ``LONG FORGOTTEN``); quote-like
    apostrophes at word edges are dropped; words are separated by single
    spaces with no leading or trailing space. May return ``""``.
    """
    s = _strip_accents(s.translate(_APOSTROPHES))
    s = _NUMBER_RE.sub(_spell_match, s)
    s = _NOT_LETTER_RE.sub(" ", s.upper())
    words = (_clean_apostrophes(w) for w in s.split())
    return " ".join(w for w in words if w.strip("'"))


def _has_acronym(raw: str) -> bool:
    """True if a word has two or more capitals (``IBM``, ``VIII``, ``McKay``)."""
    return any(sum(c.isupper() for c in w) >= 2 for w in re.findall(r"[A-Za-z']+", raw))


def _has_abbreviation(raw: str) -> bool:
    """True for ``Mr.``-style abbreviations, initials (``J.``) and a bare ``etc``."""
    if _INITIAL_RE.search(raw):
        return True
    if any(m.group(1).lower() in _ABBREVIATIONS for m in _ABBREV_RE.finditer(raw)):
        return True
    return re.search(r"\b(?:etc|vs|eg|ie)\b", raw, re.I) is not None


def is_clean_sentence(s: str, min_words: int = 5, max_words: int = 25) -> bool:
    """Whether a raw sentence can be spoken by TTS and transcribed unambiguously.

    Rejects: characters other than letters, apostrophes, whitespace and
    ``.,;:!?"()-`` (so any digit or symbol), acronyms or shouted words (two
    capitals in one word), abbreviations and initials, single-letter words
    other than ``A``, ``I``, ``O``, and sentences whose normalised form has
    fewer than ``min_words`` or more than ``max_words`` words.
    """
    raw = _strip_accents(s.translate(_APOSTROPHES))
    if not raw.strip() or not _CLEAN_CHARS_RE.match(raw):
        return False
    if _has_acronym(raw) or _has_abbreviation(raw):
        return False
    words = normalize_text(raw).split()
    if not min_words <= len(words) <= max_words:
        return False
    return all(len(w) > 1 or w in _SINGLE_LETTER_WORDS for w in words)


def split_sentences(text: str) -> List[str]:
    """Split running text into sentences at ``.``, ``!`` or ``?`` followed by a
    capitalised word. Whitespace (including newlines) is collapsed first."""
    text = _SPACES_RE.sub(" ", text).strip()
    if not text:
        return []
    return [p.strip() for p in _SENTENCE_END_RE.split(text) if p.strip()]
