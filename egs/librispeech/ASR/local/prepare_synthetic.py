#!/usr/bin/env python3
"""Build the offline synthetic LibriSpeech stand-in and its lhotse manifests.

Run from ``egs/librispeech/ASR`` (``prepare.sh --corpus synthetic`` does)::

    ./local/prepare_synthetic.py --corpus-dir download/synthetic \\
        --output-dir data/manifests --train-hours 3.0 --nj 2

It writes ``<output-dir>/librispeech_{recordings,supervisions}_<part>.jsonl.gz``
for the parts ``train``, ``dev``, ``test-clean``, ``test-other`` and, for the
closed-vocabulary task (the default), ``test-open``. Re-running
reuses the audio already made (resumable). See
``icefall_spkd/synthetic_corpus.py`` for what each split contains.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from icefall_spkd.synthetic_corpus import build_synthetic_corpus
from icefall_spkd.utils import str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path("download/synthetic"),
        help="Where the synthesised FLAC files go (LibriSpeech layout).",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("data/manifests"),
        help="Where the lhotse manifests go.",
    )
    parser.add_argument(
        "--train-hours", type=float, default=3.0, help="Approximate size of train, in hours."
    )
    parser.add_argument("--dev-utts", type=int, default=200, help="Utterances in dev.")
    parser.add_argument(
        "--test-utts",
        type=int,
        default=200,
        help="Utterances in each of test-clean and test-other.",
    )
    parser.add_argument(
        "--task",
        choices=("closed", "open"),
        default="closed",
        help="closed: sentences of the --vocab-words commonest words (plus a test-open set); "
        "open: every clean sentence.",
    )
    parser.add_argument(
        "--vocab-words", type=int, default=2000, help="Closed task: vocabulary size."
    )
    parser.add_argument(
        "--train-degraded-fraction",
        type=float,
        default=0.3,
        help="Share of train utterances with test-other's reverb and noise.",
    )
    parser.add_argument(
        "--probe-splits",
        type=str2bool,
        default=False,
        help="Also make test-other-clean (test-other without reverb and noise) and "
        "test-clean-degraded (test-clean with test-other's reverb and noise).",
    )
    parser.add_argument(
        "--espeak-seen-variants",
        type=int,
        default=3,
        help="espeak-ng voices per seen accent (3 to 6): more voices in train, dev and "
        "test-clean; test-other's held-out voices stay the same.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Everything follows this seed.")
    parser.add_argument("--nj", type=int, default=2, help="Parallel worker processes.")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    logging.info(f"Arguments: {vars(args)}")
    build_synthetic_corpus(
        corpus_dir=args.corpus_dir,
        output_dir=args.output_dir,
        train_hours=args.train_hours,
        dev_utts=args.dev_utts,
        test_utts=args.test_utts,
        seed=args.seed,
        nj=args.nj,
        task=args.task,
        vocab_words=args.vocab_words,
        train_degraded_fraction=args.train_degraded_fraction,
        probe_splits=args.probe_splits,
        espeak_seen_variants_per_accent=args.espeak_seen_variants,
    )
    logging.info(f"Manifests are in {args.output_dir}")


if __name__ == "__main__":
    main()
