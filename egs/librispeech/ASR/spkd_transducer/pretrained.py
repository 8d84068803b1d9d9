#!/usr/bin/env python3
"""Transcribe sound files with an exported ``pretrained.pt``.

Usage::

    ./spkd_transducer/pretrained.py --checkpoint spkd_transducer/exp/pretrained.pt \\
        --tokens data/lang_bpe_500/tokens.txt --method greedy_search \\
        a.flac b.wav

Audio is read by :func:`icefall_spkd.audio.read_audio` (WAV/FLAC/...,
any rate, 16/24/32-bit, channels averaged, resampled to 16 kHz). Features are 80-dim fbank from
:mod:`icefall_spkd.features`: kaldifeat when installed, otherwise lhotse's
Fbank with the same options. Prints ``<file>: <transcript>`` per file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from icefall_spkd.checkpoint import CheckpointError, _torch_load, load_state_dict_strict
from icefall_spkd.decoding import DECODING_METHODS, TokenTable
from icefall_spkd.features import FBANK_OPTIONS, make_fbank_extractor
from icefall_spkd.models.presets import build_model
from icefall_spkd.search import beam_search, greedy_search_batch, modified_beam_search
from icefall_spkd.utils import AttributeDict


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="pretrained.pt from export.py")
    parser.add_argument(
        "--tokens", type=str, default=None, help="data/lang_bpe_<N>/tokens.txt (icefall's convention)"
    )
    parser.add_argument(
        "--bpe-model", type=str, default=None, help="Still accepted: bpe.model (used when given)"
    )
    parser.add_argument("--method", type=str, default="greedy_search", choices=DECODING_METHODS)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument(
        "--max-sym-per-frame", type=int, default=1, help="Most symbols greedy_search emits per frame."
    )
    parser.add_argument("--extractor", type=str, default="auto", choices=["auto", "kaldifeat", "lhotse"])
    parser.add_argument("sound_files", type=Path, nargs="+", help="Audio files to transcribe.")
    return parser


def read_features(path: Path, extractor) -> torch.Tensor:
    """(T, 80) fbank of ``path`` read by :func:`icefall_spkd.audio.read_audio`.

    Any rate, channel count and 16/24/32-bit format soundfile reads: channels
    are averaged and the result resampled to 16 kHz. An unusable file stops
    the script with one line naming it and saying what to do.
    """
    from icefall_spkd.audio import AudioError, read_audio

    sr = FBANK_OPTIONS["sampling_rate"]
    try:
        samples = read_audio(path, sr)
    except AudioError as e:
        raise SystemExit(f"pretrained.py: error: {e}") from None
    return torch.as_tensor(extractor.extract(samples, sr), dtype=torch.float32)


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.tokens is None and args.bpe_model is None:
        parser.error("give --tokens data/lang_bpe_<N>/tokens.txt (or --bpe-model)")

    ckpt = _torch_load(args.checkpoint)
    if "params" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{args.checkpoint} is not a file written by export.py (needs 'model' and 'params')")
    params = AttributeDict(ckpt["params"])
    if args.bpe_model is None:  # as decode.py: --bpe-model is used when given
        sp = TokenTable(args.tokens)
        vocab_file, vocab_size = args.tokens, sp.vocab_size
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.load(args.bpe_model)
        vocab_file, vocab_size = args.bpe_model, sp.get_piece_size()
    if vocab_size != params.get("vocab_size", vocab_size):
        raise ValueError(
            f"{vocab_file} has {vocab_size} tokens but {args.checkpoint} was "
            f"trained with vocab_size={params.vocab_size}"
        )
    model = build_model(params)
    load_state_dict_strict(model, ckpt["model"], strict=True, what=str(args.checkpoint))
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model.to(device).eval()

    extractor = make_fbank_extractor(args.extractor)
    feats = [read_features(p, extractor) for p in args.sound_files]
    x_lens = torch.tensor([f.size(0) for f in feats], dtype=torch.int64)
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=-23.0259)  # log(1e-10)
    encoder_out, encoder_out_lens = model.forward_encoder(x.to(device), x_lens.to(device))
    if args.method == "greedy_search":
        hyps = greedy_search_batch(
            model, encoder_out, encoder_out_lens, max_sym_per_frame=args.max_sym_per_frame
        )
    elif args.method == "beam_search":
        hyps = beam_search(model, encoder_out, encoder_out_lens, beam=args.beam_size)
    else:
        hyps = modified_beam_search(model, encoder_out, encoder_out_lens, beam=args.beam_size)
    for path, h in zip(args.sound_files, hyps):
        print(f"{path}: {sp.decode(list(h))}")


if __name__ == "__main__":
    main()
