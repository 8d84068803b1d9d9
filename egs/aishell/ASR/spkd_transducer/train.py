#!/usr/bin/env python3
"""Train a transducer on AISHELL-1: egs/librispeech/ASR/spkd_transducer/train.py with AISHELL's defaults.

Usage (from egs/aishell/ASR, after ./prepare.sh)::

    # the authors' teacher (86.9 M parameters with the 4,336 characters)
    ./spkd_transducer/train.py --world-size 4 --num-epochs 30 --max-duration 1000 \\
        --model-preset zipformer-aishell-teacher --exp-dir spkd_transducer/exp_teacher
    # SP-KD student (13.6 M): KD 0.5, sampling 1.0 (see RESULTS.md for every row)
    ./spkd_transducer/train.py --world-size 4 --num-epochs 30 --max-duration 1000 \\
        --exp-dir spkd_transducer/exp_spkd --teacher-checkpoint spkd_transducer/exp_teacher/pretrained.pt \\
        --kd-loss pkd --kd-scale 0.5 --kd-sampler teacher --kd-num-samples 1 --kd-sampling-scale 1.0

Every option is the LibriSpeech script's (``--help``); the defaults that
differ: ``--tokens data/lang_char/tokens.txt`` (the character vocabulary;
``--bpe-model`` is unset), ``--cuts-prefix aishell`` (reads
``data/fbank/aishell_cuts_{train,dev}.jsonl.gz``; validation on dev),
``--model-preset zipformer-aishell-student`` and
``--exp-dir spkd_transducer/exp``.
"""

from __future__ import annotations

import argparse

import aishell

LIBRISPEECH_TRAIN = aishell.load_librispeech("spkd_transducer/train.py")


def get_parser() -> argparse.ArgumentParser:
    """The LibriSpeech training parser with AISHELL-1's defaults."""
    parser = LIBRISPEECH_TRAIN.get_parser()
    parser.description = __doc__
    parser.set_defaults(
        bpe_model=None,
        tokens=aishell.TOKENS,
        cuts_prefix=aishell.CUTS_PREFIX,
        model_preset=aishell.STUDENT_PRESET,
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    LIBRISPEECH_TRAIN.main(argv, parser=get_parser())


if __name__ == "__main__":
    import torch

    torch.set_num_interop_threads(1)
    main()
