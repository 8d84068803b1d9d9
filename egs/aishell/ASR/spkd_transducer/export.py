#!/usr/bin/env python3
"""Average checkpoints into ``pretrained.pt``: egs/librispeech/ASR/spkd_transducer/export.py
with ``--tokens data/lang_char/tokens.txt`` by default.

Usage (from egs/aishell/ASR)::

    ./spkd_transducer/export.py --exp-dir spkd_transducer/exp_teacher --epoch 30 --avg 9 \\
        --use-averaged-model true --model-preset zipformer-aishell-teacher
"""

from __future__ import annotations

import sys

import aishell


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Later occurrences win in argparse: a --tokens given on the command line overrides this one.
    aishell.load_librispeech("spkd_transducer/export.py").main(["--tokens", aishell.TOKENS, *argv])


if __name__ == "__main__":
    main()
