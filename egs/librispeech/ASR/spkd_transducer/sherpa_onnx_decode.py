#!/usr/bin/env python3
"""Transcribe audio with sherpa-onnx, the runtime users ship the student with.

Usage (from egs/librispeech/ASR), after ``export-onnx.py``::

    # files (any sampling rate: sherpa-onnx resamples)
    ./spkd_transducer/sherpa_onnx_decode.py --onnx-dir spkd_transducer/exp/onnx a.wav b.flac

    # the first N utterances of a cut manifest, with their references
    ./spkd_transducer/sherpa_onnx_decode.py --onnx-dir spkd_transducer/exp/onnx \\
        --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz --num-utts 1

``--int8 true`` (default) uses ``encoder/decoder/joiner.int8.onnx``. Greedy
search, as ``sherpa_onnx.OfflineRecognizer.from_transducer`` runs it. With
``--cuts`` each utterance prints ``REF:``/``HYP:`` lines and the script ends
with the word error count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from icefall_spkd.audio import AudioError, read_audio
from icefall_spkd.utils import str2bool
from icefall_spkd.wer import compute_error_rates


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--onnx-dir", type=Path, required=True, help="export-onnx.py's --output-dir."
    )
    parser.add_argument("--int8", type=str2bool, default=True, help="Use the int8 models.")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--cuts", type=Path, help="A lhotse cut manifest to take utterances from.")
    parser.add_argument("--num-utts", type=int, default=1, help="With --cuts: how many.")
    parser.add_argument("files", nargs="*", type=Path, help="Audio files.")
    return parser


def make_recognizer(onnx_dir: Path, int8: bool, num_threads: int):
    """A sherpa-onnx offline transducer recognizer over export-onnx.py's files."""
    import sherpa_onnx

    suffix = ".int8.onnx" if int8 else ".onnx"
    names = {part: onnx_dir / f"{part}{suffix}" for part in ("encoder", "decoder", "joiner")}
    names["tokens"] = onnx_dir / "tokens.txt"
    for path in names.values():
        if not path.is_file():
            sys.exit(
                f"{path}: not found; run ./spkd_transducer/export-onnx.py --output-dir {onnx_dir}"
            )
    return sherpa_onnx.OfflineRecognizer.from_transducer(
        **{k: str(v) for k, v in names.items()},
        num_threads=num_threads,
        decoding_method="greedy_search",
    )


def transcribe(recognizer, samples: np.ndarray, rate: int) -> str:
    stream = recognizer.create_stream()
    stream.accept_waveform(rate, samples.astype(np.float32))
    recognizer.decode_stream(stream)
    return stream.result.text.strip()


def cut_audio(cuts_path: Path, num_utts: int) -> List[Tuple[str, str, np.ndarray, int]]:
    """(id, reference, 16 kHz samples, rate) of the first ``num_utts`` cuts."""
    from lhotse import load_manifest_lazy

    out = []
    for cut in load_manifest_lazy(cuts_path):
        if len(out) == num_utts:
            break
        ref = " ".join(s.text for s in cut.supervisions)
        out.append((cut.id, ref, cut.load_audio()[0], cut.sampling_rate))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    if not args.files and args.cuts is None:
        sys.exit("give audio files or --cuts MANIFEST")
    recognizer = make_recognizer(args.onnx_dir, args.int8, args.num_threads)
    for path in args.files:
        try:
            samples = read_audio(path)  # 16 kHz mono float32
        except AudioError as e:
            sys.exit(str(e))
        print(f"{path}: {transcribe(recognizer, samples, 16000)}")
    if args.cuts is not None:
        refs, hyps = [], []
        for cut_id, ref, samples, rate in cut_audio(args.cuts, args.num_utts):
            hyp = transcribe(recognizer, samples, rate)
            print(f"{cut_id}\nREF: {ref}\nHYP: {hyp}")
            refs.append(ref.split())
            hyps.append(hyp.split())
        rates = compute_error_rates(refs, hyps)
        print(
            f"sherpa-onnx greedy search on {len(refs)} utterance(s): "
            f"WER {rates['wer']:.2f} %, CER {rates['cer']:.2f} %"
        )


if __name__ == "__main__":
    main()
