#!/usr/bin/env python3
"""WER per speaker (for the synthetic corpus: per TTS voice) of decode.py's recogs files.

Usage (from egs/librispeech/ASR)::

    ./local/wer_by_speaker.py --speakers download/synthetic/SPEAKERS.TXT \\
        --recogs exp/teacher/modified_beam_search/recogs-test-other-clean-*.txt \\
        --recogs exp/teacher/modified_beam_search/recogs-test-other-*.txt

The speaker is the first ``-``-separated field of the utterance id
(LibriSpeech's ``<speaker>-<chapter>-<utterance>``). ``--speakers`` (the
synthetic corpus's ``SPEAKERS.TXT``, or LibriSpeech's) adds each speaker's
engine and voice, or its name, to the table. With the probe splits of
``prepare.sh --probe-splits true`` this tells which unseen voices a model
fails on, apart from reverb and noise.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

from icefall_spkd.wer import compute_wer, read_recogs_or_exit


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recogs", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--speakers", type=Path, default=None, help="SPEAKERS.TXT (optional)")
    return p


def read_speakers(path: Path) -> Dict[str, str]:
    """``speaker id -> description`` from a ``|``-separated SPEAKERS.TXT (``;`` comments).

    The description joins the fields after the id that are not the subsets
    column's split list: for the synthetic corpus ``engine voice``.
    """
    out: Dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2 or not fields[0]:
            raise ValueError(f"{path}:{n}: expected 'ID | ...'; is this a SPEAKERS.TXT?")
        out[fields[0]] = " ".join(fields[1:3])
    return out


def wer_by_speaker(results) -> Dict[str, dict]:
    """``speaker -> compute_wer(...)`` over that speaker's utterances, in id order."""
    refs: Dict[str, List[List[str]]] = defaultdict(list)
    hyps: Dict[str, List[List[str]]] = defaultdict(list)
    for cut_id, ref, hyp in results:
        speaker = cut_id.split("-")[0]
        refs[speaker].append(ref)
        hyps[speaker].append(hyp)
    return {s: compute_wer(refs[s], hyps[s]) for s in sorted(refs)}


def format_table(path: Path, per_speaker: Dict[str, dict], names: Dict[str, str]) -> str:
    lines = [str(path), "", "| speaker | voice | utterances | words | WER (%) | S / D / I |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for speaker, w in per_speaker.items():
        lines.append(
            f"| {speaker} | {names.get(speaker, '-')} | {w['num_utts']} | {w['ref_words']} | "
            f"{w['wer']:.2f} | {w['sub']} / {w['del']} / {w['ins']} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    names: Dict[str, str] = {}
    if args.speakers is not None:
        if not args.speakers.is_file():
            sys.exit(f"{args.speakers}: no such file; the synthetic corpus writes download/synthetic/SPEAKERS.TXT")
        try:
            names = read_speakers(args.speakers)
        except ValueError as e:
            sys.exit(str(e))
    for path in args.recogs:
        results = read_recogs_or_exit(path)
        print(format_table(path, wer_by_speaker(results), names) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
