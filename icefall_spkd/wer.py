"""Word error rate via kaldialign, and icefall-style result files.

``results`` everywhere is a list of ``(cut_id, ref_words, hyp_words)`` where
the word lists are sequences of strings (a plain string is split on
whitespace). Every count -- in :func:`compute_wer` and in the files written by
:func:`write_error_stats` -- comes from one ``kaldialign.align`` alignment per
utterance (unit costs for insertion, deletion and substitution), so the
summary numbers and the per-utterance/per-word details always agree.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence, TextIO, Union

import kaldialign

__all__ = [
    "EPS",
    "align_words",
    "compute_wer",
    "write_error_stats",
    "write_recogs",
    "write_wer_summary",
]

#: Symbol for the missing side of an insertion or deletion in alignments.
EPS = "*"

Words = Union[str, Sequence[str]]
Result = tuple[str, Words, Words]
PathLike = Union[str, Path]


def _words(w: Words) -> list[str]:
    return w.split() if isinstance(w, str) else list(w)


def align_words(ref: Words, hyp: Words) -> list[tuple[str, str]]:
    """Minimum-edit-distance alignment of two word sequences.

    Returns ``(ref_word, hyp_word)`` pairs; :data:`EPS` marks the empty side
    (``(w, EPS)`` is a deletion, ``(EPS, w)`` an insertion).
    """
    ref_w, hyp_w = _words(ref), _words(hyp)
    if EPS in ref_w or EPS in hyp_w:
        raise ValueError(f"The word {EPS!r} is reserved as the alignment epsilon")
    return kaldialign.align(ref_w, hyp_w, EPS)


def _count(ali: list[tuple[str, str]]) -> tuple[int, int, int, int]:
    """``(ins, del, sub, corr)`` of one alignment."""
    ins = dels = sub = corr = 0
    for r, h in ali:
        if r == EPS:
            ins += 1
        elif h == EPS:
            dels += 1
        elif r != h:
            sub += 1
        else:
            corr += 1
    return ins, dels, sub, corr


def compute_wer(refs: Sequence[Words], hyps: Sequence[Words]) -> dict[str, float]:
    """Corpus-level word error counts.

    Args:
      refs: one reference per utterance (word list or whitespace-separated string).
      hyps: one hypothesis per utterance, same order.
    Returns:
      ``{"ins", "del", "sub", "errors", "ref_words", "corr", "num_utts",
      "sent_errors", "wer"}``; counts are ints and ``wer`` is the percentage
      ``100 * errors / ref_words`` (0.0 when there are no reference words and
      no errors, ``inf`` when only insertions are present).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    ins = dels = sub = corr = ref_words = sent_errors = 0
    for ref, hyp in zip(refs, hyps):
        ref_w = _words(ref)
        i, d, s, c = _count(align_words(ref_w, hyp))
        ins, dels, sub, corr = ins + i, dels + d, sub + s, corr + c
        ref_words += len(ref_w)
        sent_errors += int(i + d + s > 0)
    errors = ins + dels + sub
    if ref_words > 0:
        wer = 100.0 * errors / ref_words
    else:
        wer = 0.0 if errors == 0 else float("inf")
    return {
        "ins": ins,
        "del": dels,
        "sub": sub,
        "errors": errors,
        "ref_words": ref_words,
        "corr": corr,
        "num_utts": len(refs),
        "sent_errors": sent_errors,
        "wer": wer,
    }


def write_recogs(path: PathLike, results: Sequence[Result]) -> None:
    """Write references and hypotheses, two lines per utterance, sorted by cut id::

    <cut_id>:\\tref=<words>
    <cut_id>:\\thyp=<words>
    """
    with open(path, "w", encoding="utf-8") as f:
        for cut_id, ref, hyp in sorted(results, key=lambda r: r[0]):
            f.write(f"{cut_id}:\tref={' '.join(_words(ref))}\n")
            f.write(f"{cut_id}:\thyp={' '.join(_words(hyp))}\n")


def _format_alignment(ali: list[tuple[str, str]]) -> str:
    """``A (B->C) (D->*) (*->E)``: correct words bare, errors as ``(ref->hyp)``."""
    return " ".join(r if r == h else f"({r}->{h})" for r, h in ali)


def write_error_stats(path: PathLike, test_set_name: str, results: Sequence[Result]) -> float:
    """Write a detailed error report and return the WER in percent.

    Sections of the file, in order:

    * ``%WER``/``Errors`` header lines with the totals of :func:`compute_wer`;
    * ``PER-UTT DETAILS``: per cut, the alignment, correct words bare and
      errors as ``(ref->hyp)`` with ``*`` for the missing side;
    * ``SUBSTITUTIONS``, ``DELETIONS``, ``INSERTIONS``: ``count`` and the
      word(s), most frequent first;
    * ``PER-WORD STATS``: ``word corr tot_errs count_in_ref count_in_hyp``,
      most errors first, where a substitution counts as an error for both its
      words and ``corr + errors_as_ref_side == count_in_ref``.
    """
    results = sorted(results, key=lambda r: r[0])
    alis = [(cut_id, align_words(ref, hyp)) for cut_id, ref, hyp in results]
    stats = compute_wer([r for _, r, _ in results], [h for _, _, h in results])

    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    # word -> [corr, ref_side_errors, hyp_side_errors]
    words: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for _, ali in alis:
        for r, h in ali:
            if r == EPS:
                ins[h] += 1
                words[h][2] += 1
            elif h == EPS:
                dels[r] += 1
                words[r][1] += 1
            elif r != h:
                subs[(r, h)] += 1
                words[r][1] += 1
                words[h][2] += 1
            else:
                words[r][0] += 1

    wer = float(stats["wer"])
    with open(path, "w", encoding="utf-8") as f:
        _write_header(f, test_set_name, stats)
        f.write("\nPER-UTT DETAILS: corr or (ref->hyp)\n")
        for cut_id, ali in alis:
            f.write(f"{cut_id}:\t{_format_alignment(ali)}\n")

        f.write("\nSUBSTITUTIONS: count ref -> hyp\n")
        for (r, h), c in sorted(subs.items(), key=lambda x: (-x[1], x[0])):
            f.write(f"{c}   {r} -> {h}\n")
        f.write("\nDELETIONS: count ref\n")
        for w, c in sorted(dels.items(), key=lambda x: (-x[1], x[0])):
            f.write(f"{c}   {w}\n")
        f.write("\nINSERTIONS: count hyp\n")
        for w, c in sorted(ins.items(), key=lambda x: (-x[1], x[0])):
            f.write(f"{c}   {w}\n")

        f.write("\nPER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp\n")
        rows = [
            (w, corr, ref_err + hyp_err, corr + ref_err, corr + hyp_err)
            for w, (corr, ref_err, hyp_err) in words.items()
        ]
        for w, corr, errs, n_ref, n_hyp in sorted(rows, key=lambda x: (-x[2], x[0])):
            f.write(f"{w}   {corr} {errs} {n_ref} {n_hyp}\n")

    logging.info(
        f"[{test_set_name}] %WER {wer:.2f}% [{stats['errors']} / {stats['ref_words']}, "
        f"{stats['ins']} ins, {stats['del']} del, {stats['sub']} sub ]"
    )
    return wer


def _write_header(f: TextIO, test_set_name: str, stats: Mapping[str, float]) -> None:
    f.write(f"Test set: {test_set_name}\n")
    f.write(
        f"%WER = {stats['wer']:.2f} [ {stats['errors']} / {stats['ref_words']}, "
        f"{stats['ins']} ins, {stats['del']} del, {stats['sub']} sub ]\n"
    )
    f.write(
        f"Errors: {stats['ins']} insertions, {stats['del']} deletions, "
        f"{stats['sub']} substitutions, over {stats['ref_words']} reference words "
        f"({stats['corr']} correct)\n"
    )
    f.write(
        f"Utterances: {stats['num_utts']} ({stats['sent_errors']} with errors)\n"
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, "
        "DELETIONS:, INSERTIONS:, PER-WORD STATS:\n"
    )


def write_wer_summary(path: PathLike, wers: Mapping[str, float]) -> None:
    """Write ``settings<TAB>WER`` lines, best (lowest) WER first.

    Args:
      path: output file.
      wers: setting name (e.g. ``"beam_size_4"``) -> WER in percent.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write("settings\tWER\n")
        for name, wer in sorted(wers.items(), key=lambda x: (x[1], x[0])):
            f.write(f"{name}\t{wer:.2f}\n")
