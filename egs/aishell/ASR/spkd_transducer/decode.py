#!/usr/bin/env python3
"""Decode AISHELL-1's dev and test sets; CER (every character a unit) is the metric.

Usage (from egs/aishell/ASR)::

    ./spkd_transducer/decode.py --epoch 30 --avg 9 --use-averaged-model true \\
        --exp-dir spkd_transducer/exp_spkd --model-preset zipformer-aishell-student \\
        --decoding-method modified_beam_search --beam-size 4 --test-sets dev test

The options are those of egs/librispeech/ASR/spkd_transducer/decode.py, with
AISHELL-1's defaults: ``--tokens data/lang_char/tokens.txt``,
``--cuts-prefix aishell``, ``--test-sets dev test``,
``--model-preset zipformer-aishell-student``. The same library code decodes
(:mod:`icefall_spkd.decoding`); references are then split into characters and
hypotheses into their tokens, as icefall's AISHELL decode does, so
``recogs-*`` and ``errs-*`` list characters and the error rate in ``errs-*``
and ``wer-summary-*`` (its WER and CER columns, equal unless the model emits
``<unk>``) is the CER. Files go to
``<exp-dir>/<decoding-method>/`` under the LibriSpeech script's names.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import aishell
import torch

from icefall_spkd.decoding import (
    build_decoding_model,
    decode_dataset,
    decoding_plan,
    explicit_model_flags,
    load_model_weights,
    load_vocabulary,
    save_results,
)
from icefall_spkd.training import get_params
from icefall_spkd.utils import cpu_threads, num_parameters, setup_logger


def get_parser() -> argparse.ArgumentParser:
    """The LibriSpeech decoding parser with AISHELL-1's defaults."""
    parser = aishell.load_librispeech("spkd_transducer/decode.py").get_parser()
    parser.description = __doc__
    parser.set_defaults(
        tokens=aishell.TOKENS,
        cuts_prefix=aishell.CUTS_PREFIX,
        test_sets=list(aishell.DECODING_SETS),
        model_preset=aishell.STUDENT_PRESET,
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Decode; returns ``{set: CER %}``."""
    parser = get_parser()
    args = parser.parse_args(argv)
    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)
    test_sets, suffix, key = decoding_plan(params, aishell.DECODING_SETS)
    out_dir = params.exp_dir / params.decoding_method
    setup_logger(out_dir / f"log-decode-{suffix}")
    logging.info("Decoding started")

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    table = load_vocabulary(params)  # --tokens data/lang_char/tokens.txt
    logging.info(params)
    # The architecture stored in the checkpoint (model flags only for files without one).
    model = build_decoding_model(params, explicit_model_flags(parser, args))
    logging.info(f"Number of model parameters: {num_parameters(model)}")
    load_model_weights(model, params)
    model.to(device).eval()

    data = aishell.AishellAsrDataModule(args)
    cers = {}
    for name in test_sets:
        dl = data.test_dataloaders(data.decoding_cuts(name))
        results = aishell.char_results(decode_dataset(params, model, aishell.SpacedTokens(table), dl, desc=name))
        cers[name], _ = save_results(params, name, results, out_dir, suffix, key)
    summary = ", ".join(f"{k} {v:.2f}" for k, v in cers.items())
    logging.info(f"Summary: {params.decoding_method} {suffix}: CER(%) {summary}")
    logging.info("Done!")
    return cers


if __name__ == "__main__":
    torch.set_num_threads(1 if torch.cuda.is_available() else cpu_threads())
    torch.set_num_interop_threads(1)
    main()
