#!/usr/bin/env python3
"""The internal LM's token perplexity of trained transducers on a set's transcripts.

Runs no audio: the prediction network and joiner of each model score the
reference transcripts with the encoder switched off
(``icefall_spkd/internal_lm.py``, the zero-encoder estimate). A low perplexity
means the model already holds a strong token LM of its own, and shallow
fusion with an external LM has less to add.

Usage (from egs/librispeech/ASR), one or more experiment directories of the
same vocabulary, each averaged as decode.py would::

    ./local/internal_lm_ppl.py --epoch 2 --avg 2 --use-averaged-model true \\
        --bpe-model data/lang_bpe_50/bpe.model --test-set dev \\
        --exp-dirs table9all/baseline/seed-42 table9all/pkd/seed-42

Logs one line per directory and writes ``<exp-dir>/internal-lm-<set>-<suffix>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from icefall_spkd.data import DECODING_SETS, AsrDataModule
from icefall_spkd.decoding import (
    add_averaging_arguments,
    add_tokens_argument,
    analysis_params,
    load_analysis_model,
)
from icefall_spkd.internal_lm import internal_lm_log_probs, perplexity
from icefall_spkd.models.presets import add_model_arguments
from icefall_spkd.utils import cpu_threads, setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_averaging_arguments(parser)
    add_tokens_argument(parser)
    g = parser.add_argument_group("Internal LM")
    g.add_argument("--exp-dirs", nargs="+", required=True, help="run directories to score")
    g.add_argument("--test-set", default="dev", choices=DECODING_SETS)
    g.add_argument("--batch-size", type=int, default=64, help="transcripts per forward pass")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def score_dir(parser: argparse.ArgumentParser, args: argparse.Namespace, exp_dir: Path,
              texts: list[str]) -> dict:  # fmt: skip
    """Internal-LM perplexity of the model in ``exp_dir`` on ``texts``."""
    params, suffix = analysis_params(args, exp_dir)
    sp, model = load_analysis_model(parser, args, params)
    token_ids = [sp.encode(t) for t in texts]
    log_probs = []
    for start in range(0, len(token_ids), args.batch_size):
        log_probs += internal_lm_log_probs(model, token_ids[start : start + args.batch_size],
                                           blank_id=params.blank_id)  # fmt: skip
    tokens = sum(len(s) for s in token_ids)
    result = {
        "exp_dir": str(exp_dir),
        "test_set": args.test_set,
        "averaging": suffix,
        "sentences": len(texts),
        "tokens": tokens,
        "perplexity": perplexity(log_probs),
        "log_prob_per_token": sum(float(lp.sum()) for lp in log_probs) / tokens,
    }
    out = exp_dir / f"internal-lm-{args.test_set}-{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    dirs = [Path(d) for d in args.exp_dirs]
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"--exp-dirs: {d} is not a directory; give trained run directories")
    setup_logger(dirs[0] / "log" / f"log-internal-lm-{args.test_set}")
    cuts = AsrDataModule(args).decoding_cuts(args.test_set)
    texts = [c.supervisions[0].text for c in cuts]
    for d in dirs:
        r = score_dir(parser, args, d, texts)
        logging.info(
            f"{d}: internal-LM perplexity {r['perplexity']:.3f} on {args.test_set} "
            f"({r['sentences']} sentences, {r['tokens']} tokens, {r['averaging']})"
        )


if __name__ == "__main__":
    torch.set_num_threads(cpu_threads())
    torch.set_num_interop_threads(1)
    main()
