"""What the AISHELL-1 scripts share: their defaults, the data module, the LibriSpeech scripts.

The scripts in this directory are thin: they take the LibriSpeech recipe's
scripts (``egs/librispeech/ASR/spkd_transducer/*.py``, loaded by path) or
the library, and set AISHELL-1's defaults: the character vocabulary
``data/lang_char/tokens.txt`` instead of a BPE model, the ``aishell_cuts_*``
feature manifests, the ``dev`` and ``test`` decoding sets and CER (every
character a unit) as the metric.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Sequence, Tuple

from lhotse import CutSet

REPO = Path(__file__).resolve().parents[4]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from icefall_spkd.data import AsrDataModule  # noqa: E402
from icefall_spkd.decoding import TokenTable  # noqa: E402

LIBRISPEECH = REPO / "egs" / "librispeech" / "ASR"

TOKENS = "data/lang_char/tokens.txt"
CUTS_PREFIX = "aishell"
DECODING_SETS = ("dev", "test")
#: The SP-KD authors' models (icefall_spkd/models/presets_aishell.py).
TEACHER_PRESET = "zipformer-aishell-teacher"
STUDENT_PRESET = "zipformer-aishell-student"


def load_librispeech(relpath: str) -> ModuleType:
    """``load_librispeech("spkd_transducer/train.py")``: that script as a module."""
    path = LIBRISPEECH / relpath
    spec = importlib.util.spec_from_file_location(f"librispeech_{path.stem.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class AishellAsrDataModule(AsrDataModule):
    """:class:`AsrDataModule` on ``aishell_cuts_{train,dev,test}.jsonl.gz``.

    Training validates on ``dev``; ``dev`` and ``test`` are the decoding sets.
    """

    def decoding_cuts(self, name: str) -> CutSet:
        if name not in DECODING_SETS:
            raise ValueError(f"Unknown AISHELL-1 decoding set {name!r}; use {' or '.join(DECODING_SETS)}")
        return self._load(name)

    def test_cuts(self) -> CutSet:
        """AISHELL-1 test cuts."""
        return self._load("test")


class SpacedTokens:
    """``decode(ids)``: the symbols of a token table joined by spaces, so that
    ``icefall_spkd.decoding.decode_dataset`` (which splits at spaces) keeps every
    token, ``<unk>`` included, as one unit."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.table.symbols[int(i)] for i in ids)


def char_results(
    results: Sequence[Tuple[str, List[str], List[str]]],
) -> List[Tuple[str, List[str], List[str]]]:
    """``(cut_id, ref, hyp)`` with characters as units, as icefall's AISHELL decode
    writes them: references split into characters (spaces dropped), hypotheses as
    the decoded tokens (from :class:`SpacedTokens`). The WER that
    ``icefall_spkd.wer`` computes on these is the CER, and recogs/errs list
    characters. (Its CER column counts the characters of each unit: the same
    unless the model emits ``<unk>`` or ``<sos/eos>``.)"""
    return [(i, list("".join(r)), list(h)) for i, r, h in results]
