#!/usr/bin/env python3
"""What SP-KD's samples add to PKD's window, and how sure the teacher is there.

Decodes nothing: runs the teacher over a decoding set, draws SP-KD's samples
from it (the ``teacher`` sampler), and compares the KD windows of the samples
with the reference's (``icefall_spkd/kd_diagnostics.py``): the share of the
samples' window nodes that the reference's window already holds, the new
nodes per reference node, the teacher's entropy on each kind of node, and
how often a sample is the reference itself.

Usage (from egs/librispeech/ASR)::

    ./local/kd_sample_overlap.py --exp-dir exp/teacher9h --epoch 6 --avg 2 \\
        --bpe-model data/lang_bpe_50/bpe.model --test-set dev --num-samples 2 \\
        --kd-prune-range 5 --max-duration 40

``--test-set train`` takes the first ``--train-utts`` training utterances
instead: the data the KD terms are computed on. Writes
``<exp-dir>/kd-sample-overlap-<set>-<suffix>-n<N>-r<R>-t<temperature>.json`` and logs
a summary.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
from tqdm import tqdm

from icefall_spkd.data import DECODING_SETS, AsrDataModule
from icefall_spkd.decoding import (
    add_averaging_arguments,
    add_tokens_argument,
    analysis_params,
    input_order,
    load_analysis_model,
)
from icefall_spkd.kd_diagnostics import add_counts, sample_window_overlap, summarise
from icefall_spkd.models.presets import add_model_arguments
from icefall_spkd.utils import cpu_threads, setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_averaging_arguments(parser)
    add_tokens_argument(parser)
    g = parser.add_argument_group("Samples")
    g.add_argument(
        "--test-set",
        default="dev",
        choices=(*DECODING_SETS, "train"),
        help="a decoding set, or train (its first --train-utts utterances: what KD sees)",
    )
    g.add_argument("--train-utts", type=int, default=400)
    g.add_argument("--num-samples", type=int, default=2, help="SP-KD's N")
    g.add_argument("--kd-prune-range", type=int, default=5, help="the KD window width R_kd")
    g.add_argument("--kd-sample-temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=42, help="of the sampler")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    params, suffix = analysis_params(args, args.exp_dir)
    name = (
        f"kd-sample-overlap-{args.test_set}-{suffix}-n{args.num_samples}-r{args.kd_prune_range}"
        f"-t{args.kd_sample_temperature:g}"
    )
    setup_logger(params.exp_dir / "log" / f"log-{name}")
    sp, model = load_analysis_model(parser, args, params)
    generator = torch.Generator().manual_seed(args.seed)
    data = AsrDataModule(args)
    total: dict = {}
    if args.test_set == "train":
        cuts = data.train_cuts().subset(first=args.train_utts)
    else:
        cuts = data.decoding_cuts(args.test_set)
    for batch in tqdm(data.test_dataloaders(cuts), unit="batch"):
        x_lens, texts, _ = input_order(batch)
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(batch["inputs"], x_lens)
        refs = [sp.encode(t) for t in texts]
        counts = sample_window_overlap(
            model, enc, enc_lens, refs, args.num_samples, args.kd_prune_range,
            args.kd_sample_temperature, generator,
        )  # fmt: skip
        total = add_counts(total, counts)
    summary = summarise(total)
    out = params.exp_dir / f"{name}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "counts": total, "summary": summary}, indent=2))  # fmt: skip
    logging.info(
        f"{args.test_set}, N={args.num_samples}, R={args.kd_prune_range}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
    )
    logging.info(f"Wrote {out}")


if __name__ == "__main__":
    torch.set_num_threads(cpu_threads())
    torch.set_num_interop_threads(1)
    main()
