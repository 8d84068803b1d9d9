#!/usr/bin/env python3
"""Decode test sets with a trained transducer (icefall-style recipe script).

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/decode.py --epoch 30 --avg 9 --use-averaged-model true \\
        --exp-dir spkd_transducer/exp --max-duration 600 \\
        --tokens data/lang_bpe_500/tokens.txt \\
        --decoding-method modified_beam_search --beam-size 4 \\
        --test-sets test-clean test-other dev-clean dev-other

    # greedy search with up to 2 symbols per frame; the synthetic corpus's dev set
    ./spkd_transducer/decode.py --epoch 30 --avg 9 --decoding-method greedy_search \\
        --max-sym-per-frame 2 --test-sets dev

Decoding methods: ``greedy_search`` (``--max-sym-per-frame``, default 1),
``beam_search`` (icefall's standard beam search, several symbols per frame)
and ``modified_beam_search`` (one symbol per frame), both with ``--beam-size``.
``modified_beam_search`` also takes ``--lm-path`` (a token n-gram LM made by
``local/train_token_lm.py``, or a word n-gram LM made by
``local/train_word_lm.py``), ``--lm-scale`` and ``--lm-token-bonus`` for
shallow fusion (``--ilm-scale`` also subtracts the model's internal LM),
and ``--lm-lexicon`` to make a token LM spell only the words
of a list (a word LM spells only its own words);
the result files then end in ``-lm-scale-<s>`` (and ``-token-bonus-<b>``,
``-ilm-scale-<m>``, ``-lexicon``).
``--use-averaged-model`` is true by default (as in icefall): the model
averaged over epochs ``epoch-avg`` (excluded) to ``epoch``.

Decoding sets: ``test-clean``, ``test-other``, ``dev-clean``, ``dev-other``
(LibriSpeech, icefall's names) and ``dev`` (the synthetic corpus's
development set; for LibriSpeech it is dev-clean + dev-other, the set
train.py validates on).

Writes, for each set, into ``<exp-dir>/<decoding-method>/`` (icefall's
layout): ``recogs-<set>-<suffix>.txt``, ``errs-<set>-<suffix>.txt`` and
``wer-summary-<set>-<suffix>.txt``, where ``<suffix>`` is e.g.
``epoch-30-avg-9-use-averaged-model`` (``-beam-size-4`` is appended for the
beam searches, ``-max-sym-per-frame-K`` for greedy search with K > 1), plus a
log ``<exp-dir>/<decoding-method>/log-decode-<suffix>-<date>``.
Model options (``--model-preset`` ...) must match the ones used for training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from icefall_spkd.data import DECODING_SETS, AsrDataModule
from icefall_spkd.decoding import (
    DECODING_METHODS,
    add_averaging_arguments,
    add_tokens_argument,
    build_decoding_model,
    decode_dataset,
    decoding_plan,
    explicit_model_flags,
    load_fusion_lm,
    load_model_weights,
    load_vocabulary,
    save_results,
)
from icefall_spkd.models.presets import add_model_arguments
from icefall_spkd.training import get_params
from icefall_spkd.utils import cpu_threads, num_parameters, setup_logger

TEST_SETS = DECODING_SETS


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_averaging_arguments(parser)
    add_tokens_argument(parser)
    g = parser.add_argument_group("Decoding")
    g.add_argument("--decoding-method", type=str, default="greedy_search", choices=DECODING_METHODS)
    g.add_argument(
        "--beam-size", type=int, default=4, help="Beam of beam_search and modified_beam_search."
    )
    g.add_argument(
        "--max-sym-per-frame",
        type=int,
        default=1,
        help="Most symbols greedy_search emits on one frame.",
    )
    g.add_argument(
        "--lm-path",
        type=str,
        default=None,
        help="Token or word n-gram LM (local/train_token_lm.py, local/train_word_lm.py) for "
        "shallow fusion in modified_beam_search.",
    )
    g.add_argument(
        "--lm-scale", type=float, default=0.3, help="Weight of --lm-path's log-probabilities."
    )
    g.add_argument(
        "--lm-token-bonus",
        type=float,
        default=0.0,
        help="With --lm-path: reward per emitted token, against the LM's push to delete.",
    )
    g.add_argument(
        "--ilm-scale",
        type=float,
        default=0.0,
        help="With --lm-path: weight of the model's internal LM (zero-encoder estimate), "
        "subtracted in the fusion (internal-LM estimation).",
    )
    g.add_argument(
        "--lm-lexicon",
        type=str,
        default=None,
        help="With --lm-path: spell only the words of this file (closed-vocabulary tasks; "
        "e.g. data/lang_bpe_50/transcript_words.txt, the training text).",
    )
    g.add_argument(
        "--test-sets",
        type=str,
        nargs="+",
        default=["test-clean", "test-other"],
        help=f"Any of {', '.join(TEST_SETS)} (space- or comma-separated).",
    )
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)
    test_sets, suffix, key = decoding_plan(params, TEST_SETS)
    out_dir = params.exp_dir / params.decoding_method
    setup_logger(out_dir / f"log-decode-{suffix}")
    logging.info("Decoding started")

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    logging.info(f"Device: {device}")
    sp = load_vocabulary(params)  # --bpe-model when given, else --tokens
    logging.info(params)
    params.lm = load_fusion_lm(params, sp)  # after logging params: the LM is large

    # The architecture stored in the checkpoint (model flags are only needed for
    # files without one; a flag that contradicts it is an error).
    model = build_decoding_model(params, explicit_model_flags(parser, args))
    logging.info(f"Number of model parameters: {num_parameters(model)}")
    load_model_weights(model, params)
    model.to(device).eval()

    data = AsrDataModule(args)
    wers = {}
    for name in test_sets:
        dl = data.test_dataloaders(data.decoding_cuts(name))
        results = decode_dataset(params, model, sp, dl, desc=name)
        wers[name], _ = save_results(params, name, results, out_dir, suffix, key)

    summary = ", ".join(f"{k} {v:.2f}" for k, v in wers.items())
    logging.info(f"Summary: {params.decoding_method} {suffix}: WER(%) {summary}")
    logging.info("Done!")


if __name__ == "__main__":
    # On GPU one CPU thread is enough; on CPU every core (or OMP_NUM_THREADS).
    torch.set_num_threads(1 if torch.cuda.is_available() else cpu_threads())
    torch.set_num_interop_threads(1)
    main()
