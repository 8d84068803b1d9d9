"""Transcripts for the synthetic corpus: open- and closed-vocabulary sentence pools.

Two tasks are built from the same source, Debian's fortune cookies:

* **open vocabulary** (``load_sentences``): every clean 5-25-word sentence,
  about 19,000 distinct ones and 19,000 distinct words. Three hours of speech
  are far too little to learn English spelling from, so models trained on it
  on a 2-core CPU stay at 60-100 % WER.
* **closed vocabulary** (``closed_vocabulary``): only the sentences whose every
  word is among the ``vocab_words`` commonest words of the clean sentences,
  in the manner of DARPA Resource Management (about 1,000 words, read
  sentences, a few per cent WER for classic systems). With the default 2,000
  words and 4-20-word sentences it keeps about 4,500 sentences. The test
  sentences stay unseen (each sentence belongs to one split), but their words
  are the training words, so the task measures recognition, not spelling.

The open-vocabulary sentences that use a word outside the closed vocabulary
are a natural extra, harder test set for a closed-vocabulary model
(``test-open`` in :mod:`icefall_spkd.synthetic_corpus`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, Iterable, List, Sequence, Union

from icefall_spkd.text import is_clean_sentence, normalize_text, split_sentences

__all__ = [
    "FORTUNE_DIR",
    "ClosedVocabulary",
    "load_sentences",
    "closed_vocabulary",
]

FORTUNE_DIR = Path("/usr/share/games/fortunes")


@dataclass(frozen=True)
class ClosedVocabulary:
    """The closed-vocabulary task: its words, its sentences and the rest.

    ``sentences`` use only ``words``; ``others`` are the open-vocabulary
    sentences that use at least one word outside it (disjoint from
    ``sentences``).
    """

    words: FrozenSet[str]
    sentences: List[str]
    others: List[str]


def _fortune_files(fortune_dir: Path) -> List[Path]:
    """Fortune text files: those with a ``.dat`` index next to them."""
    return sorted(p.with_suffix("") for p in fortune_dir.glob("*.dat"))


def _fortune_entries(path: Path) -> Iterable[str]:
    """Entries of one fortune file, without ``-- Author`` attribution lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for entry in text.split("\n%\n"):
        lines: List[str] = []
        for line in entry.splitlines():
            if line.strip().startswith("--") or line.strip() == "%":
                break
            lines.append(line)
        yield "\n".join(lines)


def load_sentences(
    fortune_dir: Union[str, Path] = FORTUNE_DIR, min_words: int = 5, max_words: int = 25
) -> List[str]:
    """Distinct clean normalised sentences from Debian's fortunes, sorted."""
    files = _fortune_files(Path(fortune_dir))
    if not files:
        raise FileNotFoundError(
            f"no fortune files under {fortune_dir}; apt-get install fortunes fortunes-min"
        )
    sentences = set()
    for path in files:
        for entry in _fortune_entries(path):
            for raw in split_sentences(entry):
                if is_clean_sentence(raw, min_words, max_words):
                    sentences.add(normalize_text(raw))
    return sorted(sentences)


def closed_vocabulary(
    sentences: Sequence[str], vocab_words: int, min_words: int = 4, max_words: int = 20
) -> ClosedVocabulary:
    """Keep the sentences made only of the ``vocab_words`` commonest words.

    Word counts are taken over all of ``sentences``; ties at the cut-off are
    broken alphabetically, so the result is a pure function of the input.
    ``words`` is the set of words the kept sentences actually use (at most
    ``vocab_words``). Sentences outside ``[min_words, max_words]`` words are
    in neither list.
    """
    if vocab_words < 1:
        raise ValueError(f"vocab_words must be >= 1, got {vocab_words}")
    counts = Counter(w for s in sentences for w in s.split())
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    allowed = frozenset(ranked[:vocab_words])
    kept: List[str] = []
    others: List[str] = []
    for s in sorted(set(sentences)):
        words = s.split()
        if not min_words <= len(words) <= max_words:
            continue
        (kept if all(w in allowed for w in words) else others).append(s)
    used = frozenset(w for s in kept for w in s.split())
    return ClosedVocabulary(words=used, sentences=kept, others=others)
