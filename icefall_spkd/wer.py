"""Word and character error rates via kaldialign, and icefall-style result files.

``results`` everywhere is a list of ``(cut_id, ref_words, hyp_words)`` where
the word lists are sequences of strings (a plain string is split on
whitespace). Every count -- in :func:`compute_wer` and in the files written by
:func:`write_error_stats` -- comes from one ``kaldialign.align`` alignment per
utterance (unit costs for insertion, deletion and substitution), so the
summary numbers and the per-utterance/per-word details always agree.

CER follows icefall's convention (``compute_CER`` in icefall's
``write_error_stats``): the characters of the words, spaces excluded, i.e.
``list("".join(words))``. A word boundary the model gets wrong but whose
letters are right ("BASE BALL" for "BASEBALL") is a word error but no
character error.

:func:`write_error_stats` returns an :class:`ErrorRate`: the WER as a float
(what callers always got) that also carries the CER and the
substitution/deletion/insertion split, which :func:`write_wer_summary` writes.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence, TextIO, Union

import kaldialign

__all__ = [
    "EPS",
    "ErrorRate",
    "align_words",
    "compute_cer",
    "compute_error_rates",
    "compute_wer",
    "read_recogs",
    "read_recogs_or_exit",
    "utterance_errors",
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


def _chars(w: Words) -> list[str]:
    """The characters of the words, spaces excluded (icefall's CER convention)."""
    return list("".join(_words(w)))


def compute_cer(refs: Sequence[Words], hyps: Sequence[Words]) -> dict[str, float]:
    """Corpus-level character error counts: :func:`compute_wer` on the characters of the words.

    Spaces are excluded (icefall's convention), so ``"AB C"`` against
    ``"A BC"`` is 0 % CER. Keys as in :func:`compute_wer`, with ``ref_words``
    counting reference characters and ``wer`` holding the CER.
    """
    return compute_wer([_chars(r) for r in refs], [_chars(h) for h in hyps])


def compute_error_rates(refs: Sequence[Words], hyps: Sequence[Words]) -> dict[str, float]:
    """WER and CER with their splits, as one flat dict.

    Returns:
      the keys of :func:`compute_wer` (word level) plus ``cer``,
      ``char_errors``, ``ref_chars``, ``char_ins``, ``char_del`` and
      ``char_sub`` (character level, spaces excluded).
    """
    out = compute_wer(refs, hyps)
    c = compute_cer(refs, hyps)
    out.update(
        cer=c["wer"],
        char_errors=c["errors"],
        ref_chars=c["ref_words"],
        char_ins=c["ins"],
        char_del=c["del"],
        char_sub=c["sub"],
    )
    return out


class ErrorRate(float):
    """A WER in percent (it *is* that float) that carries its details in ``stats``.

    ``stats`` is the dict of :func:`compute_error_rates`: word and character
    error counts, ``wer`` and ``cer``.
    """

    stats: dict

    def __new__(cls, stats: Mapping[str, float]) -> ErrorRate:
        obj = super().__new__(cls, float(stats["wer"]))
        obj.stats = dict(stats)
        return obj


def utterance_errors(results: Sequence[Result]) -> dict[str, tuple[int, int]]:
    """cut id -> ``(word errors, reference words)`` of each utterance (for the bootstrap)."""
    out: dict[str, tuple[int, int]] = {}
    for cut_id, ref, hyp in results:
        if cut_id in out:
            raise ValueError(f"utterance {cut_id} appears twice in the results")
        ref_w = _words(ref)
        i, d, s, _ = _count(align_words(ref_w, hyp))
        out[cut_id] = (i + d + s, len(ref_w))
    return out


def read_recogs(path: PathLike) -> list[tuple[str, list[str], list[str]]]:
    """Read a file written by :func:`write_recogs` back into ``results``.

    Raises ValueError naming the file and line when a ``ref=`` line is not
    followed by the ``hyp=`` line of the same cut (a truncated or foreign file).
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) % 2:
        raise ValueError(f"{path}: odd number of lines; re-run decoding to rewrite it")
    out = []
    for n in range(0, len(lines), 2):
        cut_r, sep_r, ref = lines[n].partition(":\tref=")
        cut_h, sep_h, hyp = lines[n + 1].partition(":\thyp=")
        if not sep_r or not sep_h or cut_r != cut_h:
            raise ValueError(
                f"{path}:{n + 1}: expected '<cut>:\\tref=...' then '<cut>:\\thyp=...' of the "
                "same cut; re-run decoding to rewrite it"
            )
        out.append((cut_r, ref.split(), hyp.split()))
    return out


def read_recogs_or_exit(path: PathLike) -> list[tuple[str, list[str], list[str]]]:
    """:func:`read_recogs` for command-line scripts: a missing or malformed file
    stops the script with one line naming it and saying what to do."""
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such file; decode first (spkd_transducer/decode.py)")
    try:
        return read_recogs(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None


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


def write_error_stats(path: PathLike, test_set_name: str, results: Sequence[Result]) -> ErrorRate:
    """Write a detailed error report and return the WER in percent (an :class:`ErrorRate`).

    Sections of the file, in order:

    * ``%WER``/``%CER``/``Errors`` header lines with the totals of
      :func:`compute_error_rates` (``%CER = c [ e / n, i ins, d del, s sub ]``
      counts characters, spaces excluded);
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
    stats = compute_error_rates([r for _, r, _ in results], [h for _, _, h in results])

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

    wer = ErrorRate(stats)
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
        f"{stats['ins']} ins, {stats['del']} del, {stats['sub']} sub ], "
        f"%CER {stats['cer']:.2f}%"
    )
    return wer


def _write_header(f: TextIO, test_set_name: str, stats: Mapping[str, float]) -> None:
    f.write(f"Test set: {test_set_name}\n")
    f.write(
        f"%WER = {stats['wer']:.2f} [ {stats['errors']} / {stats['ref_words']}, "
        f"{stats['ins']} ins, {stats['del']} del, {stats['sub']} sub ]\n"
    )
    f.write(
        f"%CER = {stats['cer']:.2f} [ {stats['char_errors']} / {stats['ref_chars']}, "
        f"{stats['char_ins']} ins, {stats['char_del']} del, {stats['char_sub']} sub ] "
        "(characters of the words, spaces excluded)\n"
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


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.2f}" if den > 0 else "-"


def write_wer_summary(path: PathLike, wers: Mapping[str, float]) -> None:
    """Write ``settings WER CER S D I`` lines (tab-separated), best (lowest) WER first.

    ``S``, ``D`` and ``I`` are substitutions, deletions and insertions in
    percent of the reference words (they add up to the WER). They and the CER
    come from an :class:`ErrorRate` value; a plain float gets ``-`` there.

    Args:
      path: output file.
      wers: setting name (e.g. ``"beam_size_4"``) -> WER in percent
        (:class:`ErrorRate` as returned by :func:`write_error_stats`, or float).
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write("settings\tWER\tCER\tS\tD\tI\n")
        for name, wer in sorted(wers.items(), key=lambda x: (x[1], x[0])):
            st = getattr(wer, "stats", None)
            if st is None:
                extra = ["-"] * 4
            else:
                n = st["ref_words"]
                extra = [f"{st['cer']:.2f}", _pct(st["sub"], n), _pct(st["del"], n), _pct(st["ins"], n)]
            f.write("\t".join([name, f"{wer:.2f}", *extra]) + "\n")
