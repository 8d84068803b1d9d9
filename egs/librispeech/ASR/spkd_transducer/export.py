#!/usr/bin/env python3
"""Average checkpoints into one self-contained ``pretrained.pt``.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/export.py --exp-dir spkd_transducer/exp \\
        --epoch 30 --avg 9 --use-averaged-model true --model-preset small \\
        --tokens data/lang_bpe_500/tokens.txt

Writes ``<exp-dir>/pretrained.pt`` = ``{"model": state_dict, "params": {...}}``,
where ``params`` holds the model hyper-parameters (preset options,
``vocab_size``, ``blank_id``, ...) so that ``pretrained.py`` can rebuild the
model without any other option. ``--output`` changes the file name.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icefall_spkd.checkpoint import atomic_torch_save
from icefall_spkd.decoding import (
    add_averaging_arguments,
    add_tokens_argument,
    build_decoding_model,
    explicit_model_flags,
    load_model_weights,
    load_vocabulary,
    model_params_for_export,
)
from icefall_spkd.models.presets import add_model_arguments
from icefall_spkd.training import get_params
from icefall_spkd.utils import num_parameters


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_averaging_arguments(parser)
    add_tokens_argument(parser)
    parser.add_argument("--output", type=Path, default=None, help="Default: <exp-dir>/pretrained.pt")
    add_model_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = get_parser()
    args = parser.parse_args(argv)
    params = get_params()
    params.update(vars(args))
    load_vocabulary(params)  # --tokens (or --bpe-model): sets vocab_size and blank_id
    # The architecture stored in the checkpoint (model flags are only needed for
    # files without one; a flag that contradicts it is an error).
    model = build_decoding_model(params, explicit_model_flags(parser, args))
    load_model_weights(model, params)
    logging.info(f"Number of model parameters: {num_parameters(model)}")
    out = Path(args.output) if args.output else Path(params.exp_dir) / "pretrained.pt"
    skip = (
        "best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch",
        "batch_idx_train", "cur_epoch", "output", "exp_dir",
    )
    # The resolved model config is enough to rebuild the model; fall back to all plain params.
    model_params = getattr(model, "model_config", None) or model_params_for_export(params, skip)
    atomic_torch_save({"model": model.state_dict(), "params": dict(model_params)}, out)
    logging.info(f"Wrote {out}")


if __name__ == "__main__":
    main()
