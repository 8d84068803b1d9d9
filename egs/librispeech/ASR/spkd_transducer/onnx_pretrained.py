#!/usr/bin/env python3
"""Transcribe 16 kHz sound files with the ONNX files of export-onnx.py (greedy search).

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/onnx_pretrained.py \\
        --encoder-model-filename spkd_transducer/exp/onnx/encoder.onnx \\
        --decoder-model-filename spkd_transducer/exp/onnx/decoder.onnx \\
        --joiner-model-filename spkd_transducer/exp/onnx/joiner.onnx \\
        --tokens spkd_transducer/exp/onnx/tokens.txt \\
        a.wav b.flac

The network runs in onnxruntime alone (no PyTorch model); the ``*.int8.onnx``
files work the same way. Features are computed as sherpa-onnx computes them,
with kaldi-native-fbank and the options of :mod:`icefall_spkd.features`
(which are also the training features). The greedy search is sherpa-onnx's:
at most one symbol per frame, ``<unk>`` treated like blank. Files must be
16 kHz (as with icefall's onnx_pretrained.py); several channels are averaged.
Prints ``<file>: <transcript>`` per file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Sequence

import numpy as np

from icefall_spkd.audio import AudioError, load_audio_file, to_mono
from icefall_spkd.features import FBANK_OPTIONS, sherpa_fbank
from icefall_spkd.onnx_export import ExportError, OnnxTransducer, read_tokens


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder-model-filename", type=Path, required=True)
    parser.add_argument("--decoder-model-filename", type=Path, required=True)
    parser.add_argument("--joiner-model-filename", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt written by export-onnx.py")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("sound_files", type=Path, nargs="+", help="16 kHz WAV/FLAC files.")
    return parser


def read_16k(path: Path) -> np.ndarray:
    """Mono float samples of a 16 kHz file; :class:`AudioError` (one line) otherwise."""
    data, rate = load_audio_file(path)
    sr = FBANK_OPTIONS["sampling_rate"]
    if rate != sr:
        raise AudioError(
            f"{path}: is {rate} Hz but the model needs {sr} Hz; resample it "
            f"(sox {path} -r {sr} -c 1 out.wav) or use pretrained.py, which resamples"
        )
    return to_mono(data)


def tokens_to_text(ids: Sequence[int], symbols: Sequence[str]) -> str:
    """BPE pieces joined, ``▁`` read as a word boundary."""
    return "".join(symbols[i] for i in ids).replace("\u2581", " ").strip()


def transcribe(model: OnnxTransducer, files: Sequence[Path]) -> List[List[int]]:
    """Greedy token ids of each file (one batch)."""
    feats = [sherpa_fbank(read_16k(p)) for p in files]
    return model.decode_features(feats)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = get_parser().parse_args(argv)
    try:
        symbols = read_tokens(args.tokens)
        unk = symbols.index("<unk>") if "<unk>" in symbols else None
        model = OnnxTransducer(args.encoder_model_filename, args.decoder_model_filename,
                               args.joiner_model_filename, num_threads=args.num_threads, unk_id=unk)
        if model.vocab_size != len(symbols):
            raise ExportError(
                f"{args.tokens}: has {len(symbols)} tokens but {args.decoder_model_filename} has "
                f"vocab_size={model.vocab_size}; give the tokens.txt written next to the ONNX files"
            )
        hyps = transcribe(model, args.sound_files)
    except (AudioError, ExportError) as e:
        raise SystemExit(f"onnx_pretrained.py: error: {e}") from None
    for path, ids in zip(args.sound_files, hyps):
        print(f"{path}: {tokens_to_text(ids, symbols)}")


if __name__ == "__main__":
    main()
