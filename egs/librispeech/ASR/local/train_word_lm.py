#!/usr/bin/env python3
"""Train a word-level Kneser-Ney n-gram LM for shallow fusion.

Usage (from egs/librispeech/ASR)::

    ./local/train_word_lm.py --text data/lang_bpe_50/transcript_words.txt \\
        --order 3 --lm-path data/lm/word_3gram.pt

    ./spkd_transducer/decode.py ... --decoding-method modified_beam_search \\
        --lm-path data/lm/word_3gram.pt --lm-scale 0.6 --lm-token-bonus 1.6

``--text`` is one sentence per line, the training transcripts that
``prepare.sh`` stage 3 writes. Its words are the LM's vocabulary: with a word
LM the search spells only those words (``--lm-lexicon`` is not needed), so on
an open-vocabulary test set the LM can only hurt. Repeated lines are counted
once unless ``--keep-repeats`` is given (the synthetic corpus reads each
training sentence several times). ``icefall_spkd/word_lm.py`` describes how
the transducer's word pieces are scored. Never train it on dev or test text.
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from icefall_spkd.ngram_lm import add_lm_training_arguments, read_lm_training_sentences
from icefall_spkd.word_lm import train_word_ngram_lm


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_lm_training_arguments(p, default_order=3)
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    lines = read_lm_training_sentences(args)
    lm = train_word_ngram_lm([ln.split() for ln in lines], order=args.order)
    lm.save(args.lm_path)
    num_ngrams = sum(len(nxt) for nxt in lm.ngram.counts[-1].values())
    logging.info(
        f"{args.lm_path}: order {args.order}, {len(lines)} sentences, {len(lm.words)} words, "
        f"{num_ngrams} distinct {args.order}-grams, "
        f"discounts {', '.join(f'{d:.3f}' for d in lm.ngram.discounts)}"
    )


if __name__ == "__main__":
    main()
