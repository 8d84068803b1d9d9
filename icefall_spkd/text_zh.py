"""Mandarin transcripts for the AISHELL-1 recipe: normalisation and the character vocabulary.

Normalisation (:func:`normalize_zh`) gives the text icefall's AISHELL
recipes train on (lhotse's ``prepare_aishell`` plus icefall's
``sed 's/[ \\t\\r\\n]*//g'`` before building ``lang_char``):

* full-width forms (U+FF01-U+FF5E) become their ASCII counterparts and the
  ideographic space U+3000 a space (lhotse maps the full-width ``ａｂｃｋｔ``
  of AISHELL-1's transcripts this way; every full-width form is mapped here);
* Latin letters are upper-cased (lhotse's ``text_normalize`` does ``upper()``);
  AISHELL-1 has a handful of them and icefall's ``lang_char`` keeps them as
  tokens;
* all white space is removed (lhotse removes the word-segmentation spaces of
  ``aishell_transcript_v0.8.txt``; the units are characters);
* punctuation (Unicode categories ``P*``: ``，。、！？“”《》`` and ASCII) is
  removed: it is not spoken and AISHELL-1's transcripts carry none. Signs
  that are read aloud (``%`` is "百分之", ``@``, ``#``, ``&``, ...; see
  :data:`SPOKEN_SIGNS`) are not punctuation here.

What is left must be CJK ideographs or ``A``-``Z``. Anything else (digits,
symbols such as ``%``, kana, Cyrillic, ...) is spoken as something the
transcript does not spell, so :func:`normalize_zh` raises
:class:`UnsupportedText` naming the characters, and the data checks drop the
utterance with the reason ``unsupported_characters``.

Vocabulary (:func:`char_table`, :class:`CharTokenizer`): ``tokens.txt`` as
icefall's ``local/prepare_char.py`` lays it out: ``<blk>`` 0, ``<sos/eos>``
1, ``<unk>`` 2, then every character in order of first appearance in the
given texts (no disambiguation symbols: nothing here builds an L graph).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Union

from icefall_spkd.decoding import TokenTable

SPECIAL_TOKENS = ("<blk>", "<sos/eos>", "<unk>")

#: Signs in Unicode's punctuation categories that are read aloud, so not removed.
SPOKEN_SIGNS = frozenset("%‰‱#&@*/\\§")


class UnsupportedText(ValueError):
    """A transcript with characters the character vocabulary must not hold."""


def is_cjk(ch: str) -> bool:
    """CJK unified ideographs (basic, extension A) and compatibility ideographs."""
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF


def _half_width(ch: str) -> str:
    o = ord(ch)
    if 0xFF01 <= o <= 0xFF5E:
        return chr(o - 0xFEE0)
    if o == 0x3000:
        return " "
    return ch


def normalize_zh(text: str) -> str:
    """AISHELL-style normalised transcript (see the module docstring).

    Returns the characters without spaces ("" for a transcript of only
    spaces and punctuation). Raises :class:`UnsupportedText` for characters
    other than CJK ideographs and Latin letters.
    """
    out: List[str] = []
    bad: List[str] = []
    for ch in text:
        ch = _half_width(ch)
        if ch.isspace() or (unicodedata.category(ch).startswith("P") and ch not in SPOKEN_SIGNS):
            continue
        if "a" <= ch <= "z":
            ch = ch.upper()
        if is_cjk(ch) or "A" <= ch <= "Z":
            out.append(ch)
        elif ch not in bad:
            bad.append(ch)
    if bad:
        raise UnsupportedText(
            f"characters other than Chinese and Latin letters: {''.join(bad)!r} in {text[:80]!r}"
        )
    return "".join(out)


def char_table(texts: Iterable[str]) -> Dict[str, int]:
    """``{symbol: id}``: the specials, then characters in order of first appearance."""
    table = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for text in texts:
        for ch in text:
            if not ch.isspace() and ch not in table:
                table[ch] = len(table)
    return table


def write_tokens(table: Dict[str, int], path: Union[str, Path]) -> None:
    """Write ``<symbol> <id>`` lines, by id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s} {i}" for s, i in sorted(table.items(), key=lambda kv: kv[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class CharTokenizer(TokenTable):
    """A character ``tokens.txt`` with the parts of sentencepiece's API training uses.

    ``encode(texts, out_type=int)`` maps each non-space character to its id
    (``<unk>`` when absent), ``decode(ids)`` joins the characters (no spaces:
    AISHELL transcripts have none), ``get_piece_size()``, ``piece_to_id``
    and ``id_to_piece`` as in sentencepiece.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        super().__init__(path)
        self.ids = {s: i for i, s in self.symbols.items()}
        if "<unk>" not in self.ids:
            raise ValueError(f"{self.path}: no '<unk>' symbol (prepare.sh's char stage writes one)")
        self.unk_id = self.ids["<unk>"]

    def encode(self, texts: Union[str, Sequence[str]], out_type: type = int) -> Union[List[int], List[List[int]]]:
        """Token ids of one text or of a list of texts (spaces skipped)."""
        if out_type is not int:
            raise ValueError("CharTokenizer.encode supports out_type=int only")
        if isinstance(texts, str):
            return [self.ids.get(ch, self.unk_id) for ch in texts if not ch.isspace()]
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The characters of an id sequence, joined without spaces."""
        return "".join(self.symbols[int(i)] for i in ids)

    def get_piece_size(self) -> int:
        return self.vocab_size

    def piece_to_id(self, piece: str) -> int:
        return self.ids.get(piece, self.unk_id)

    def id_to_piece(self, i: int) -> str:
        return self.symbols[int(i)]


def load_char_tokenizer(params: Any) -> CharTokenizer:
    """``CharTokenizer(params.tokens)``; sets ``params.vocab_size`` and ``params.blank_id`` (0).

    What ``icefall_spkd.training.run`` uses instead of ``--bpe-model`` when a
    recipe gives ``--tokens`` and no BPE model (egs/aishell/ASR).
    """
    table = CharTokenizer(params.tokens)
    params.vocab_size = table.vocab_size
    params.blank_id = 0
    return table
