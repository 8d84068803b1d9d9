#!/usr/bin/env python3
"""Decode test sets with a trained transducer (icefall-style recipe script).

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/decode.py --epoch 30 --avg 9 --use-averaged-model true \\
        --exp-dir spkd_transducer/exp --max-duration 600 \\
        --decoding-method modified_beam_search --beam-size 4 \\
        --test-sets test-clean test-other

Writes, for each test set, into ``<exp-dir>/<decoding-method>/``:
``recogs-<set>-<suffix>.txt``, ``errs-<set>-<suffix>.txt`` and
``wer-summary-<set>-<suffix>.txt``, where ``<suffix>`` is e.g.
``epoch-30-avg-9-use-averaged-model`` (``-beam-size-4`` is appended for
modified_beam_search), plus a log in ``<exp-dir>/<decoding-method>/log-decode-*``.
Model options (``--model-preset`` ...) must match the ones used for training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from icefall_spkd.data import AsrDataModule
from icefall_spkd.decoding import (
    DECODING_METHODS,
    add_averaging_arguments,
    averaging_suffix,
    decode_dataset,
    load_model_weights,
    save_results,
)
from icefall_spkd.models.presets import add_model_arguments, build_model
from icefall_spkd.training import get_params, load_bpe
from icefall_spkd.utils import cpu_threads, num_parameters, setup_logger

TEST_SETS = ("dev", "test-clean", "test-other")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_averaging_arguments(parser)
    g = parser.add_argument_group("Decoding")
    g.add_argument("--decoding-method", type=str, default="greedy_search", choices=DECODING_METHODS)
    g.add_argument("--beam-size", type=int, default=4, help="Beam for modified_beam_search.")
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
    args = get_parser().parse_args(argv)
    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)
    test_sets = [s for item in params.test_sets for s in item.split(",") if s]
    for s in test_sets:
        if s not in TEST_SETS:
            raise SystemExit(f"Unknown test set {s!r} in --test-sets; use {TEST_SETS}")

    suffix = averaging_suffix(params)
    key = "greedy_search"
    if params.decoding_method == "modified_beam_search":
        suffix += f"-beam-size-{params.beam_size}"
        key = f"beam_size_{params.beam_size}"
    out_dir = params.exp_dir / params.decoding_method
    setup_logger(out_dir / f"log-decode-{suffix}")
    logging.info("Decoding started")

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    sp = load_bpe(params)
    logging.info(params)

    model = build_model(params)
    logging.info(f"Number of model parameters: {num_parameters(model)}")
    load_model_weights(model, params)
    model.to(device).eval()

    data = AsrDataModule(args)
    getters = {"dev": data.dev_cuts, "test-clean": data.test_clean_cuts, "test-other": data.test_other_cuts}
    wers = {}
    for name in test_sets:
        dl = data.test_dataloaders(getters[name]())
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
