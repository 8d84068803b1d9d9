#!/usr/bin/env python3
"""Real-time factor of greedy_search_batch and modified_beam_search per model preset.

Input: ``--num-utts`` synthetic utterances with durations drawn uniformly from
``[--min-duration, --max-duration]`` seconds (fixed by ``--seed``, so every
preset decodes the same audio), as random 80-dim "fbank" frames at 100 frames
per second. They are sorted by duration and decoded in batches of
``--batch-size`` utterances.

Per batch the encoder runs once (timed), then each search method runs on its
output (timed separately). With ``--repeats N`` everything is repeated N times
and the median total over repeats is reported. One untimed warm-up batch runs
first for each preset.

RTF = compute seconds / audio seconds (lower is faster; < 1 is faster than
real time). Reported: the encoder's RTF, each search's own RTF, and the
end-to-end RTF of each method (encoder + search).

Random weights: a random-weight model does not emit like a trained one (its
arg-max is rarely blank, so greedy search emits a token at almost every
frame and re-runs the decoder for nearly every utterance at every frame);
trained transducers are blank-heavy. Search times on random weights are
therefore a pessimistic stand-in. The ``tok/frame`` column shows the greedy
emission rate actually seen. ``--blank-bias B`` adds B to the joiner's blank
logit; on random weights the joiner's output hardly varies from frame to
frame, so the rate jumps steeply (e.g. from 1.0 to 0.0 between B=0 and B=2-4,
differently per preset) rather than settling at a trained model's rate: use
it to bracket the search cost between "a token every frame" (B=0) and "no
token at all" (large B), reading ``tok/frame``. ``--checkpoint`` loads a
trained model instead (a ``save_checkpoint`` file or ``pretrained.pt``; the
preset must match it), which gives representative search times. Encoder time
does not depend on the weights.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/benchmark_decoding.py                           # tiny small medium large
    ./spkd_transducer/benchmark_decoding.py --presets small --checkpoint exp/pretrained.pt
    ./spkd_transducer/benchmark_decoding.py --presets tiny --num-utts 4 --min-duration 2 --max-duration 4
    # Zipformer beside the Conformer of about its size, and the reference Zipformer encoder
    ./spkd_transducer/benchmark_decoding.py --presets small zipformer-paper-student \
        --reference zipformer-paper-student --methods greedy_search

Zipformer presets and ``--reference`` rows (the reference package's encoder
inside this package's transducer, :mod:`icefall_spkd.zipformer_bench`) are
timed like the Conformer presets; the RTF ratios pair each Zipformer with the
Conformer of the closest parameter count.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Dict, List, Optional

import torch

from icefall_spkd.benchmarking import (
    add_common_arguments,
    format_machine_info,
    load_note,
    machine_info,
    resolve_device,
    setup_torch,
    summarize,
    time_call,
)
from icefall_spkd.checkpoint import load_checkpoint
from icefall_spkd.models.presets import PRESETS, ZIPFORMER_PRESETS, num_parameters
from icefall_spkd.search import greedy_search_batch, modified_beam_search
from icefall_spkd.zipformer_bench import (
    REF_PREFIX,
    add_reference_argument,
    build_bench_model,
    nearest_pairs,
)

FRAMES_PER_SECOND = 100  # 10 ms fbank frame shift
FEATURE_DIM = 80
METHODS = ("greedy_search", "modified_beam_search")


def make_utterances(
    num_utts: int, min_duration: float, max_duration: float, seed: int
) -> List[torch.Tensor]:
    """Random ``(frames, 80)`` feature matrices with durations uniform in ``[min, max]`` s."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(num_utts):
        dur = rng.uniform(min_duration, max_duration)
        feats.append(torch.randn(max(7, round(dur * FRAMES_PER_SECOND)), FEATURE_DIM, generator=g))
    return feats


def make_batches(
    feats: List[torch.Tensor], batch_size: int, device: torch.device
) -> List[tuple[torch.Tensor, torch.Tensor]]:
    """Sort by length (longest first), pad into ``(x (N, T, 80), x_lens (N,))`` batches."""
    feats = sorted(feats, key=lambda f: -f.shape[0])
    batches = []
    for i in range(0, len(feats), batch_size):
        chunk = feats[i : i + batch_size]
        x = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
        x_lens = torch.tensor([f.shape[0] for f in chunk], dtype=torch.int64)
        batches.append((x.to(device), x_lens.to(device)))
    return batches


def run_search(
    method: str, model: torch.nn.Module, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int
) -> List[List[int]]:
    """Dispatch to the search function."""
    if method == "greedy_search":
        return greedy_search_batch(model, enc, enc_lens)
    return modified_beam_search(model, enc, enc_lens, beam=beam)  # type: ignore[return-value]


def benchmark_preset(
    model: torch.nn.Module,
    batches: List[tuple[torch.Tensor, torch.Tensor]],
    methods: List[str],
    beam: int,
    repeats: int,
    device: torch.device,
) -> Dict[str, Any]:
    """Time encoder and searches over all batches; medians over ``repeats`` of the summed seconds."""
    model.eval()
    enc_totals: List[float] = []
    search_totals: Dict[str, List[float]] = {m: [] for m in methods}
    tokens = 0
    frames = 0
    with torch.inference_mode():
        # warm-up on the shortest batch
        x, x_lens = batches[-1]
        enc, enc_lens = model.forward_encoder(x, x_lens)
        for m in methods:
            run_search(m, model, enc, enc_lens, beam)

        turn = 0
        for r in range(repeats):
            enc_s = 0.0
            search_s = dict.fromkeys(methods, 0.0)
            for x, x_lens in batches:
                dt, (enc, enc_lens) = time_call(model.forward_encoder, x, x_lens, device=device)
                enc_s += dt
                # alternate the methods' order from batch to batch
                order = methods if turn % 2 == 0 else methods[::-1]
                turn += 1
                for m in order:
                    dt, hyps = time_call(run_search, m, model, enc, enc_lens, beam, device=device)
                    search_s[m] += dt
                    if r == 0 and m == methods[0]:
                        tokens += sum(len(h) for h in hyps)
                        frames += int(enc_lens.sum())
            enc_totals.append(enc_s)
            for m in methods:
                search_totals[m].append(search_s[m])
    return {
        "encoder": summarize(enc_totals),
        "search": {m: summarize(v) for m, v in search_totals.items()},
        "tokens_per_frame": tokens / max(frames, 1),
        "rate_method": methods[0],
    }


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        type=str,
        nargs="+",
        default=["tiny", "small", "medium", "large"],
        choices=sorted(PRESETS) + sorted(ZIPFORMER_PRESETS),
        help="Model presets to benchmark (Conformer or Zipformer).",
    )
    add_reference_argument(parser)
    parser.add_argument(
        "--methods",
        type=str,
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="Search methods.",
    )
    parser.add_argument("--beam-size", type=int, default=4, help="Beam of modified_beam_search.")
    parser.add_argument("--num-utts", type=int, default=20, help="Synthetic utterances.")
    parser.add_argument("--min-duration", type=float, default=5.0, help="Shortest utterance, s.")
    parser.add_argument("--max-duration", type=float, default=15.0, help="Longest utterance, s.")
    parser.add_argument("--batch-size", type=int, default=10, help="Utterances per batch.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed passes over all batches.")
    parser.add_argument("--vocab-size", type=int, default=500, help="Vocabulary (with blank).")
    parser.add_argument(
        "--blank-bias",
        type=float,
        default=0.0,
        help="Added to the joiner's blank logit of a random model (0: unchanged); a large "
        "value (e.g. 10) gives the all-blank lower bound of search time, see the docstring.",
    )
    parser.add_argument(
        "--checkpoint",
        type=str,
        default=None,
        help="Load trained weights (needs exactly one --presets entry matching the checkpoint).",
    )
    add_common_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    if args.checkpoint and len(args.presets) != 1:
        raise SystemExit("--checkpoint needs exactly one --presets entry (the checkpoint's size)")
    if not 0 < args.min_duration <= args.max_duration:
        raise SystemExit("need 0 < --min-duration <= --max-duration")
    device = resolve_device(args.device)
    threads = setup_torch(args.num_threads, args.seed)
    print(format_machine_info(machine_info(device)))

    feats = make_utterances(args.num_utts, args.min_duration, args.max_duration, args.seed)
    audio_s = sum(f.shape[0] for f in feats) / FRAMES_PER_SECOND
    batches = make_batches(feats, args.batch_size, device)
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights"
    print(
        f"# Decoding benchmark: {args.num_utts} utterances, {audio_s:.1f} s of audio "
        f"({args.min_duration}-{args.max_duration} s each), batch size {args.batch_size}, "
        f"beam {args.beam_size}, repeats {args.repeats}, {weights}, blank bias {args.blank_bias}"
    )

    short = {"greedy_search": "greedy", "modified_beam_search": f"beam{args.beam_size}"}
    names = list(args.presets) + [REF_PREFIX + p for p in args.reference]
    width = max(7, *(len(n) for n in names))
    cols = [f"{'preset':<{width}} {'params':>8} {'enc s':>8} {'enc RTF':>8}"]
    for m in args.methods:
        cols.append(f"{short[m] + ' s':>9} {short[m] + ' RTF':>10} {short[m] + ' e2e RTF':>14}")
    cols.append(f"{'tok/frame':>9}")
    header = " ".join(cols)
    print(header)
    print("-" * len(header))

    summary = []
    enc_rtf: Dict[str, float] = {}
    e2e_rtf: Dict[str, float] = {}
    params: Dict[str, int] = {}
    for preset in names:
        torch.manual_seed(args.seed)
        model = build_bench_model(preset, args.vocab_size)
        params[preset] = num_parameters(model)
        if args.checkpoint:
            load_checkpoint(args.checkpoint, model=model)
        elif args.blank_bias:
            with torch.no_grad():
                model.joiner.output_linear.bias[model.blank_id] += args.blank_bias
        model.to(device)
        res = benchmark_preset(model, batches, args.methods, args.beam_size, args.repeats, device)
        enc = res["encoder"].median
        enc_rtf[preset] = enc / audio_s
        row = [f"{preset:<{width}} {num_parameters(model) / 1e6:7.2f}M {enc:8.2f} {enc / audio_s:8.4f}"]
        for m in args.methods:
            s = res["search"][m].median
            row.append(f"{s:9.2f} {s / audio_s:10.4f} {(enc + s) / audio_s:14.4f}")
            summary.append(f"{preset}/{short[m]}={(enc + s) / audio_s:.4f}")
            if m == args.methods[0]:
                e2e_rtf[preset] = (enc + s) / audio_s
        row.append(f"{res['tokens_per_frame']:9.3f}")
        print(" ".join(row))
        del model

    for z, c in nearest_pairs(params):
        print(f"# RTF ratio {z} / {c} (closest Conformer by parameters): encoder "
              f"{enc_rtf[z] / enc_rtf[c]:.2f}x, e2e {short[args.methods[0]]} {e2e_rtf[z] / e2e_rtf[c]:.2f}x")  # fmt: skip
    for p in args.reference:
        if p in enc_rtf:
            print(f"# RTF ratio {p} / {REF_PREFIX}{p} (ours / reference encoder): encoder "
                  f"{enc_rtf[p] / enc_rtf[REF_PREFIX + p]:.2f}x")  # fmt: skip
    print(
        "# RTF = compute s / audio s. 'e2e' = encoder + search. tok/frame = greedy tokens "
        "per encoder frame (40 ms);\n# trained LibriSpeech BPE-500 models emit roughly 0.1-0.2 "
        "(about 4 tokens per second of speech)."
    )
    if not args.checkpoint:
        print(
            "# NOTE: random weights -- search time differs from a trained (blank-heavy) model; "
            "use --checkpoint for representative search times (--blank-bias 10 gives the "
            "all-blank lower bound). "
            "Encoder time is representative."
        )
    print(load_note())
    print(
        f"SUMMARY decoding device={device} threads={threads} audio={audio_s:.1f}s "
        f"e2e RTF: {' '.join(summary)}"
    )


if __name__ == "__main__":
    main()
