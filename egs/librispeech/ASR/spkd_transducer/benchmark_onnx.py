#!/usr/bin/env python3
"""Deployment benchmark: real-time factor on one thread and model file sizes.

For a teacher and a student (presets, or trained checkpoints), five ways to
go from 16 kHz samples to tokens, each one utterance at a time on ONE thread
(``torch.set_num_threads(1)``, onnxruntime and sherpa-onnx ``num_threads=1``):

- ``pytorch``: the project's fbank (kaldifeat or lhotse) + ``forward_encoder``
  + :func:`icefall_spkd.search.greedy_search_batch`;
- ``onnxruntime fp32`` / ``int8``: kaldi-native-fbank + the exported files
  in onnxruntime with the greedy search of :class:`OnnxTransducer` (Python loop);
- ``sherpa-onnx fp32`` / ``int8``: ``OfflineRecognizer.from_transducer(...,
  decoding_method="greedy_search")``, features and search in C++.

Every pipeline decodes the same utterances once (one untimed warm-up
utterance first). RTF = seconds of compute / seconds of audio. Sizes: the
fp32 ``state_dict`` as ``torch.save`` writes it, and the sum of the three
ONNX files. Ratios are against PyTorch greedy (speed) and the fp32 ONNX
files (size).

Audio: ``--num-utts`` synthetic utterances (``--seed``) of 4-12 s: random
tones of 150-2000 Hz between noisy gaps. With random weights (no
``--*-checkpoint``) a transducer emits a token at nearly every frame, which
makes the search cost pessimistic; ``--blank-bias`` adds to the joiner's
blank logit to bring the emission rate down. The ``tok/frame`` column shows
what each model actually emitted.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/benchmark_onnx.py --teacher small --student tiny --vocab-size 50
    ./spkd_transducer/benchmark_onnx.py --teacher-checkpoint exp_teacher/pretrained.pt \\
        --student-checkpoint exp_spkd/pretrained.pt --tokens data/lang_bpe_50/tokens.txt
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from icefall_spkd.benchmarking import format_machine_info, load_note, machine_info
from icefall_spkd.features import make_fbank_extractor, sherpa_fbank
from icefall_spkd.models.presets import build_model, num_parameters
from icefall_spkd.onnx_export import (
    OnnxTransducer,
    export_onnx,
    load_model_from_checkpoint,
    read_tokens,
)
from icefall_spkd.search import greedy_search_batch

SR = 16000


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=str, default="small", help="Teacher preset (random weights).")
    p.add_argument("--student", type=str, default="tiny", help="Student preset (random weights).")
    p.add_argument("--teacher-checkpoint", type=Path, default=None)
    p.add_argument("--student-checkpoint", type=Path, default=None)
    p.add_argument("--tokens", type=Path, default=None, help="tokens.txt (default: placeholders).")
    p.add_argument("--vocab-size", type=int, default=50, help="For presets with random weights.")
    p.add_argument("--blank-bias", type=float, default=0.0, help="Added to the blank logit.")
    p.add_argument("--num-utts", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="Where to export (default: a temp dir).")
    p.add_argument("--output", type=Path, default=None, help="Also write the table here.")
    return p


def synthetic_audio(num: int, seed: int) -> List[np.ndarray]:
    """``num`` utterances of 4-12 s: tones of random pitch between noisy gaps, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        target = rng.uniform(4, 12)
        parts: List[np.ndarray] = []
        total = 0.0
        while total < target:
            d = rng.uniform(0.05, 0.3)
            t = np.arange(int(SR * d)) / SR
            parts.append(0.3 * np.sin(2 * np.pi * rng.uniform(150, 2000) * t))
            parts.append(rng.normal(0, 0.01, int(SR * rng.uniform(0.02, 0.2))))
            total += len(parts[-2]) / SR + len(parts[-1]) / SR
        out.append(np.concatenate(parts).astype(np.float32))
    return out


def timed(fn: Callable[[np.ndarray], List[int]], audio: Sequence[np.ndarray]) -> Dict[str, float]:
    """Run ``fn`` on a warm-up utterance, then time it over ``audio``."""
    fn(audio[0][: SR * 2])
    tokens = 0
    start = time.perf_counter()
    for a in audio:
        tokens += len(fn(a))
    secs = time.perf_counter() - start
    dur = sum(len(a) for a in audio) / SR
    return {"rtf": secs / dur, "tok_per_frame": tokens / (dur * 25)}  # 25 encoder frames per s


def pipelines(model: torch.nn.Module, onnx: Dict[str, Path], unk_id: Optional[int]) -> Dict[str, Any]:
    import sherpa_onnx

    extractor = make_fbank_extractor()

    @torch.no_grad()
    def pytorch(a: np.ndarray) -> List[int]:
        x = torch.as_tensor(extractor.extract(a, SR), dtype=torch.float32)[None]
        enc, enc_lens = model.forward_encoder(x, torch.tensor([x.shape[1]]))
        return greedy_search_batch(model, enc, enc_lens)[0]

    def ort(sfx: str) -> Callable[[np.ndarray], List[int]]:
        ot = OnnxTransducer(onnx[f"encoder{sfx}"], onnx[f"decoder{sfx}"], onnx[f"joiner{sfx}"],
                            num_threads=1, unk_id=unk_id)
        return lambda a: ot.decode_features([sherpa_fbank(a)])[0]

    def sherpa(sfx: str) -> Callable[[np.ndarray], List[int]]:
        rec = sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=str(onnx[f"encoder{sfx}"]), decoder=str(onnx[f"decoder{sfx}"]),
            joiner=str(onnx[f"joiner{sfx}"]), tokens=str(onnx["tokens"]), num_threads=1,
            decoding_method="greedy_search",
        )

        def run(a: np.ndarray) -> List[int]:
            s = rec.create_stream()
            s.accept_waveform(SR, a)
            rec.decode_stream(s)
            return list(s.result.tokens)

        return run

    return {
        "pytorch greedy": pytorch,
        "onnxruntime fp32": ort(""),
        "onnxruntime int8": ort("_int8"),
        "sherpa-onnx fp32": sherpa(""),
        "sherpa-onnx int8": sherpa("_int8"),
    }


def get_model(preset: str, ckpt: Optional[Path], vocab_size: int, blank_bias: float) -> torch.nn.Module:
    if ckpt is not None:
        model = load_model_from_checkpoint(ckpt)
    else:
        model = build_model({"model_preset": preset, "vocab_size": vocab_size}).eval()
    with torch.no_grad():
        model.joiner.output_linear.bias[model.decoder.blank_id] += blank_bias
    return model


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = get_parser().parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    audio = synthetic_audio(args.num_utts, args.seed)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="benchmark_onnx_"))
    header = format_machine_info(machine_info("cpu"))
    print(header)
    print(f"# audio: {len(audio)} synthetic utterances, {sum(map(len, audio)) / SR:.1f} s; one thread")
    rows = []
    for role, preset, ckpt in (("teacher", args.teacher, args.teacher_checkpoint),
                               ("student", args.student, args.student_checkpoint)):
        model = get_model(preset, ckpt, args.vocab_size, args.blank_bias)
        vocab = model.decoder.vocab_size
        symbols = read_tokens(args.tokens) if args.tokens else (
            ["<blk>", "<sos/eos>", "<unk>"] + [f"\u2581T{i}" for i in range(3, vocab)])
        onnx = export_onnx(model, work / role, symbols, comment=f"benchmark {role}")
        pt_file = work / role / "model.pt"
        torch.save(model.state_dict(), pt_file)
        sizes = {
            "pytorch": pt_file.stat().st_size,
            "fp32": sum(onnx[k].stat().st_size for k in ("encoder", "decoder", "joiner")),
            "int8": sum(onnx[f"{k}_int8"].stat().st_size for k in ("encoder", "decoder", "joiner")),
        }
        unk = symbols.index("<unk>") if "<unk>" in symbols else None
        results = {name: timed(fn, audio) for name, fn in pipelines(model, onnx, unk).items()}
        base = results["pytorch greedy"]["rtf"]
        name = str(ckpt) if ckpt else f"{preset} (random weights)"
        for pipe, r in results.items():
            size = sizes["pytorch"] if pipe.startswith("pytorch") else sizes["int8" if "int8" in pipe else "fp32"]
            rows.append((role, name, num_parameters(model), pipe, r["rtf"], base / r["rtf"],
                         size / 1e6, size / sizes["fp32"], r["tok_per_frame"]))
    lines = ["| model | weights | params | pipeline | RTF (1 thread) | speed-up vs PyTorch | size (MB) "
             "| size / fp32 ONNX | tok/frame |", "|---|---|---|---|---|---|---|---|---|"]
    for role, name, n, pipe, rtf, speed, mb, rel, tpf in rows:
        lines.append(f"| {role} | {name} | {n / 1e6:.2f} M | {pipe} | {rtf:.4f} | {speed:.2f}x "
                     f"| {mb:.2f} | {rel:.2f} | {tpf:.2f} |")
    table = "\n".join(lines)
    print(table)
    print(load_note())
    if args.output:
        args.output.write_text(header + "\n" + table + "\n" + load_note() + "\n")


if __name__ == "__main__":
    main()
