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

from icefall_spkd.ngram_lm import train_token_ngram_lm


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bpe-model", type=Path, required=True, help="the transducer's BPE model")
    p.add_argument("--text", type=Path, required=True, help="training sentences, one per line")
    p.add_argument("--order", type=int, default=6, help="n of the n-gram (default %(default)s)")
    p.add_argument("--lm-path", type=Path, required=True, help="where to write the LM")
    p.add_argument(
        "--keep-repeats", action="store_true", help="count every line, repeated ones included"
    )
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if not args.text.is_file():
        sys.exit(f"{args.text}: no such text file; run prepare.sh stage 3 first")
    if not args.bpe_model.is_file():
        sys.exit(f"{args.bpe_model}: no such BPE model; run prepare.sh stage 3 first")
    sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
    lines = [ln.strip() for ln in args.text.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not args.keep_repeats:
        lines = list(dict.fromkeys(lines))
    if not lines:
        sys.exit(f"{args.text}: no sentences in it")
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
