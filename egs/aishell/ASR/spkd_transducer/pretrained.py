#!/usr/bin/env python3
"""Transcribe sound files with an exported ``pretrained.pt``:
egs/librispeech/ASR/spkd_transducer/pretrained.py with ``--tokens data/lang_char/tokens.txt``
by default. Prints ``<file>: <characters>`` per file.

Usage (from egs/aishell/ASR)::

    ./spkd_transducer/pretrained.py --checkpoint spkd_transducer/exp_spkd/pretrained.pt \\
        --method modified_beam_search a.wav b.wav
"""

from __future__ import annotations

import sys

import aishell


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Later occurrences win in argparse: a --tokens given on the command line overrides this one.
    aishell.load_librispeech("spkd_transducer/pretrained.py").main(["--tokens", aishell.TOKENS, *argv])


if __name__ == "__main__":
    main()
