#!/usr/bin/env python3
"""Export a trained transducer to ONNX for sherpa-onnx (and onnx_pretrained.py).

Usage (from egs/librispeech/ASR)::

    # from a pretrained.pt (export.py) or any epoch-N.pt / checkpoint-N.pt
    ./spkd_transducer/export-onnx.py --checkpoint spkd_transducer/exp/pretrained.pt \\
        --tokens data/lang_bpe_50/tokens.txt --output-dir spkd_transducer/exp/onnx

    # or icefall's way: average checkpoints of an experiment directory
    ./spkd_transducer/export-onnx.py --exp-dir spkd_transducer/exp --epoch 30 --avg 9 \\
        --use-averaged-model true --tokens data/lang_bpe_50/tokens.txt

Writes ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx``, their int8
copies ``*.int8.onnx`` and ``tokens.txt`` into ``--output-dir`` (default
``<exp-dir>/onnx``, or the checkpoint's directory ``/onnx``). The model's
hyper-parameters are read from the checkpoint, so no model flag is needed.
The layout and metadata are those of icefall's exporter, which sherpa-onnx's
offline transducer reads; see :mod:`icefall_spkd.onnx_export`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icefall_spkd.checkpoint import CheckpointError
from icefall_spkd.decoding import add_averaging_arguments
from icefall_spkd.onnx_export import (
    ExportError,
    check_tokens,
    export_onnx,
    load_averaged_model,
    load_model_from_checkpoint,
    read_tokens,
)
from icefall_spkd.utils import AttributeDict, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="pretrained.pt, epoch-N.pt or checkpoint-N.pt; without it --exp-dir/--epoch/--avg choose.",
    )
    parser.add_argument("--tokens", type=Path, required=True, help="data/lang_bpe_<N>/tokens.txt")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--int8", type=str2bool, default=True, help="Also write *.int8.onnx.")
    add_averaging_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = get_parser().parse_args(argv)
    try:
        tokens = read_tokens(args.tokens)
        if args.checkpoint is not None:
            model = load_model_from_checkpoint(args.checkpoint)
            what = str(args.checkpoint)
            out_dir = args.output_dir or args.checkpoint.parent / "onnx"
        else:
            model = load_averaged_model(AttributeDict(vars(args)))
            what = f"{args.exp_dir} (--epoch {args.epoch} --avg {args.avg})"
            out_dir = args.output_dir or Path(args.exp_dir) / "onnx"
        check_tokens(tokens, args.tokens, model.decoder.vocab_size, model.decoder.blank_id, what)
    except (CheckpointError, ExportError, ValueError) as e:
        raise SystemExit(f"export-onnx.py: error: {e}") from None
    export_onnx(model, out_dir, tokens, comment=f"icefall-spkd, from {what}", int8=args.int8)
    logging.info(f"Done: {out_dir}")


if __name__ == "__main__":
    main()
