#!/usr/bin/env python3
"""Train a token-level Kneser-Ney n-gram LM for shallow fusion.

Usage (from egs/librispeech/ASR)::

    ./local/train_token_lm.py --bpe-model data/lang_bpe_50/bpe.model \\
        --text data/lang_bpe_50/transcript_words.txt --order 6 \\
        --lm-path data/lm/token_6gram_bpe_50.pt

    ./spkd_transducer/decode.py ... --decoding-method modified_beam_search \\
        --lm-path data/lm/token_6gram_bpe_50.pt --lm-scale 0.3

``--text`` is one sentence per line (``prepare.sh`` stage 3 writes the
training transcripts as ``data/lang_bpe_<N>/transcript_words.txt``). Lines
that repeat are counted once unless ``--keep-repeats`` is given: the
synthetic corpus reads each training sentence several times, and repeated
lines would only skew the Kneser-Ney discounts. The tokens are the BPE
model's ids, i.e. the transducer's own output units
(``icefall_spkd/ngram_lm.py`` describes the model). Never train it on dev or
test text.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

import sentencepiece as spm

from icefall_spkd.ngram_lm import (
    add_lm_training_arguments,
    read_lm_training_sentences,
    train_token_ngram_lm,
)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bpe-model", type=Path, required=True, help="the transducer's BPE model")
    add_lm_training_arguments(p, default_order=6)
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if not args.bpe_model.is_file():
        sys.exit(f"{args.bpe_model}: no such BPE model; run prepare.sh stage 3 first")
    lines = read_lm_training_sentences(args)
    sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
    sequences = sp.encode(lines, out_type=int)
    lm = train_token_ngram_lm(sequences, order=args.order, vocab_size=sp.get_piece_size())
    lm.save(args.lm_path)
    num_ngrams = sum(len(nxt) for nxt in lm.counts[-1].values())
    logging.info(
        f"{args.lm_path}: order {args.order}, {len(lines)} sentences, "
        f"{sum(len(s) for s in sequences)} tokens, {num_ngrams} distinct {args.order}-grams, "
        f"discounts {', '.join(f'{d:.3f}' for d in lm.discounts)}"
    )


if __name__ == "__main__":
    main()
