#!/usr/bin/env python3
"""Word errors by how often each reference word was seen in training.

Usage (from egs/librispeech/ASR)::

    ./local/errors_by_word_count.py --train-text data/lang_bpe_50/transcript_words.txt \\
        --recogs table/teacher/seed-42/modified_beam_search/recogs-test-clean-*.txt \\
        --recogs table/baseline/seed-42/modified_beam_search/recogs-test-clean-*.txt

``--train-text`` is one training transcript per line; ``prepare.sh`` stage 3
writes it as ``data/lang_bpe_<N>/transcript_words.txt``. For each
``--recogs`` file (as decode.py writes them) it prints a Markdown table: per
bucket of training counts, the share of the reference words in it and the
share of those deleted or substituted, and the insertions apart; then how
many hypothesis words are not words of the training transcripts at all
(misspellings, on a closed-vocabulary task). If the
errors gather in the rare-word buckets, the model is short of training text
rather than of training time (icefall_spkd/word_frequency.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from icefall_spkd.wer import read_recogs_or_exit
from icefall_spkd.word_frequency import (
    errors_by_train_count,
    non_word_hypotheses,
    parse_bucket_edges,
    word_counts,
)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train-text", type=Path, required=True, help="one transcript per line")
    p.add_argument("--recogs", type=Path, action="append", required=True, help="repeatable")
    p.add_argument(
        "--edges",
        default="1,3,10,100",
        help="lower edges of the count buckets after the first (0 = unseen); default %(default)s",
    )
    return p


def format_table(recogs: Path, buckets, insertions: int, non_words: tuple[int, int, int]) -> str:
    total = sum(b.words for b in buckets)
    lines = [
        f"{recogs}",
        "",
        "| times in training | reference words | deleted or substituted |",
        "|---|---|---|",
    ]
    for b in buckets:
        share = 100.0 * b.words / total if total else 0.0
        lines.append(f"| {b.label} | {share:.1f} % ({b.words}) | {b.error_rate:.1f} % ({b.errors}) |")
    errors = sum(b.errors for b in buckets) + insertions
    wer = 100.0 * errors / total if total else 0.0
    lines.append("")
    lines.append(f"insertions: {insertions}; WER {wer:.2f} % over {total} reference words")
    bad, hyp, ref = non_words
    lines.append(
        f"hypothesis words not in the training transcripts: {bad} of {hyp} "
        f"({100.0 * bad / hyp if hyp else 0.0:.1f} %; {100.0 * bad / ref if ref else 0.0:.1f} "
        "per 100 reference words)"
    )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        edges = parse_bucket_edges(args.edges)
    except ValueError as e:
        sys.exit(f"--edges: {e}")
    if not args.train_text.is_file():
        sys.exit(f"{args.train_text}: no such file; run ./prepare.sh --stage 3 to write it")
    counts = word_counts(args.train_text.read_text(encoding="utf-8").splitlines())
    print(f"{args.train_text}: {sum(counts.values())} words, {len(counts)} distinct\n")
    for path in args.recogs:
        results = read_recogs_or_exit(path)
        buckets, insertions = errors_by_train_count(results, counts, edges)
        non_words = non_word_hypotheses(results, counts)
        print(format_table(path, buckets, insertions, non_words) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
