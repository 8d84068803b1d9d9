#!/usr/bin/env python3
"""Training throughput per model preset: seconds of audio trained per second of wall time.

Each step is what ``train.py`` does for one batch without KD: the model's
``forward`` (encoder, simple loss, prune ranges, pruned loss), the loss
``simple_loss_scale * simple + pruned`` (the scales after the warm-up), backward,
an optimizer step (``icefall_spkd.optim.build_optimizer``: ScaledAdam for
Zipformer rows, AdamW for Conformer rows, as train.py; ``--optimizer``) and
``zero_grad``. Zipformer rows run at a fixed ScheduledFloat batch count
(``--zipformer-batch-count``). ``--reference P ...`` adds rows ``ref:P``: the
reference package's Zipformer encoder (``zipformer==0.1.3``) at preset P's
configuration inside this package's transducer (see
:mod:`icefall_spkd.zipformer_bench`). The rows' steps are INTERLEAVED (one
step of each row per round), so load changes on a shared machine hit them
alike; ratios: each Zipformer row against the Conformer row of the closest
parameter count, and ours against the reference.

Batches are synthetic: utterances of uniform random duration in
``[--min-duration, --max-duration]`` s are packed until the next one would
exceed ``--max-duration-per-batch`` s (like lhotse's ``max_duration``), with
random 80-dim features at 100 frames/s and ``round(duration * --tokens-per-second)``
random tokens. The same batches (fixed by ``--seed``) are used for every preset.

Per preset: ``--warmup-steps`` untimed steps, then up to ``--steps`` timed
steps, stopping early once ``--max-seconds-per-preset`` of timed steps have
run (at least ``--min-steps``). Throughput = audio seconds of the timed steps /
their wall seconds. On CUDA the peak ``max_memory_allocated`` of the timed
steps is shown as well.

The hours-per-epoch columns are an EXTRAPOLATION from this machine: 100 h
(train-clean-100) or 960 h of audio divided by the measured throughput; they
leave out data loading, validation, checkpointing, speed perturbation (icefall
triples the 960 h set with it) and any KD teacher.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/benchmark_training.py                       # tiny small medium large, 60 s batches
    ./spkd_transducer/benchmark_training.py --device cuda --autocast bf16 --max-duration-per-batch 600
    ./spkd_transducer/benchmark_training.py --presets tiny --steps 2 --max-duration-per-batch 10
    # Zipformer beside Conformer of about the same size, and the reference Zipformer
    ./spkd_transducer/benchmark_training.py --presets small zipformer-paper-student \
        --reference zipformer-paper-student --max-duration-per-batch 37
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from icefall_spkd.benchmarking import (
    add_common_arguments,
    format_bytes,
    format_machine_info,
    load_note,
    machine_info,
    resolve_device,
    setup_torch,
    summarize,
    time_call,
)
from icefall_spkd.models.presets import PRESETS, ZIPFORMER_PRESETS, num_parameters
from icefall_spkd.optim import build_optimizer
from icefall_spkd.zipformer_bench import (
    REF_PREFIX,
    add_reference_argument,
    build_bench_model,
    is_zipformer,
    nearest_pairs,
    set_steady_batch_count,
)

FRAMES_PER_SECOND = 100
FEATURE_DIM = 80


class SyntheticBatch:
    """Padded features, lengths and token lists of one synthetic batch."""

    def __init__(self, x: torch.Tensor, x_lens: torch.Tensor, y: List[List[int]], audio_s: float):
        self.x = x
        self.x_lens = x_lens
        self.y = y
        self.audio_s = audio_s

    def to(self, device: torch.device) -> SyntheticBatch:
        """The same batch with tensors on ``device``."""
        return SyntheticBatch(self.x.to(device), self.x_lens.to(device), self.y, self.audio_s)


def make_batches(
    num_batches: int,
    max_duration: float,
    min_utt: float,
    max_utt: float,
    tokens_per_second: float,
    vocab_size: int,
    seed: int,
) -> List[SyntheticBatch]:
    """``num_batches`` synthetic batches of at most ``max_duration`` s (at least one utterance each)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        durs: List[float] = []
        while True:
            d = rng.uniform(min_utt, max_utt)
            if durs and sum(durs) + d > max_duration:
                break
            durs.append(d)
            if sum(durs) >= max_duration:
                break
        frames = [max(7, round(d * FRAMES_PER_SECOND)) for d in durs]
        x = torch.randn(len(frames), max(frames), FEATURE_DIM, generator=g)
        for i, n in enumerate(frames):
            x[i, n:] = 0.0
        y = [
            [rng.randrange(1, vocab_size) for _ in range(max(1, round(d * tokens_per_second)))]
            for d in durs
        ]
        batches.append(
            SyntheticBatch(
                x, torch.tensor(frames, dtype=torch.int64), y, sum(frames) / FRAMES_PER_SECOND
            )
        )
    return batches


def make_step(
    name: str, args: argparse.Namespace, device: torch.device
) -> Tuple[torch.nn.Module, Callable[[SyntheticBatch], float]]:
    """The model of one row and its training step (see the module docstring)."""
    torch.manual_seed(args.seed)
    model = build_bench_model(name, args.vocab_size).to(device)
    model.train()
    which = args.optimizer if args.optimizer != "auto" else (
        "scaled_adam" if is_zipformer(name) else "adamw"
    )
    lr = args.base_lr if args.base_lr is not None else (0.045 if which == "scaled_adam" else 3e-3)
    optimizer = build_optimizer(model, lr=lr, optimizer=which)
    if is_zipformer(name):
        set_steady_batch_count(model, args.zipformer_batch_count)
    use_fp16 = args.autocast == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_fp16 and device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)

    def step(batch: SyntheticBatch) -> float:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            simple, pruned = model(
                batch.x,
                batch.x_lens,
                batch.y,
                prune_range=args.prune_range,
                am_scale=args.am_scale,
                lm_scale=args.lm_scale,
            )
        loss = args.simple_loss_scale * simple + pruned
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()) / len(batch.y)

    model.optimizer_name = which
    return model, step


def benchmark_presets(
    names: List[str], batches: List[SyntheticBatch], args: argparse.Namespace, device: torch.device
) -> Dict[str, Dict[str, Any]]:
    """Warm-up, then timed steps of every row INTERLEAVED (one step of each row per
    round), so that a change in the machine's load hits every row alike."""
    on_device = [b.to(device) for b in batches]
    rows: Dict[str, Dict[str, Any]] = {}
    steps: Dict[str, Callable[[SyntheticBatch], float]] = {}
    for name in names:
        model, step = make_step(name, args, device)
        for i in range(args.warmup_steps):
            step(on_device[i % len(on_device)])
        steps[name] = step
        rows[name] = {"params": num_parameters(model), "optimizer": model.optimizer_name,
                      "times": [], "audio": [], "loss_per_utt": float("nan"), "peak_bytes": None}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget_start = time.perf_counter()
    for i in range(args.steps):
        batch = on_device[(args.warmup_steps + i) % len(on_device)]
        for name in names:
            dt, loss = time_call(steps[name], batch, device=device)
            rows[name]["times"].append(dt)
            rows[name]["audio"].append(batch.audio_s)
            rows[name]["loss_per_utt"] = loss
        elapsed = time.perf_counter() - budget_start
        if i + 1 >= args.min_steps and elapsed >= args.max_seconds_per_preset * len(names):
            break
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        for r in rows.values():
            r["peak_bytes"] = peak  # shared by the interleaved rows
    return rows


def profile_row(name: str, batches: List[SyntheticBatch], args: argparse.Namespace, device: torch.device) -> None:
    """``--profile``: torch.profiler over ``--steps`` training steps of one row (after the
    warm-up); prints the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    _, step = make_step(name, args, device)
    on_device = [b.to(device) for b in batches]
    for i in range(args.warmup_steps):
        step(on_device[i % len(on_device)])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(args.steps):
            step(on_device[(args.warmup_steps + i) % len(on_device)])
    print(f"# torch.profiler: {name}, {args.steps} training steps, top {args.profile_rows} by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


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
        help="Model presets to benchmark (Conformer or Zipformer, e.g. zipformer-aishell-teacher).",
    )
    parser.add_argument(
        "--max-duration-per-batch",
        type=float,
        default=60.0,
        help="Audio seconds per batch (like lhotse's --max-duration).",
    )
    parser.add_argument("--min-duration", type=float, default=5.0, help="Shortest utterance, s.")
    parser.add_argument("--max-duration", type=float, default=15.0, help="Longest utterance, s.")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=4.0,
        help="Reference tokens per audio second (BPE-500 LibriSpeech is about 4).",
    )
    parser.add_argument("--vocab-size", type=int, default=500, help="Vocabulary (with blank).")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Untimed steps per preset.")
    parser.add_argument("--steps", type=int, default=5, help="Most timed steps per preset.")
    parser.add_argument("--min-steps", type=int, default=2, help="Fewest timed steps per preset.")
    parser.add_argument(
        "--max-seconds-per-preset",
        type=float,
        default=30.0,
        help="Stop timing a preset after this many seconds (once --min-steps are done).",
    )
    parser.add_argument(
        "--autocast",
        type=str,
        default="none",
        choices=["none", "bf16", "fp16"],
        help="Mixed precision (fp16 uses a GradScaler on CUDA).",
    )
    add_reference_argument(parser)
    parser.add_argument(
        "--optimizer",
        type=str,
        default="auto",
        choices=["auto", "scaled_adam", "adamw"],
        help="auto: ScaledAdam for Zipformer rows, AdamW for Conformer rows (train.py's defaults).",
    )
    parser.add_argument(
        "--profile",
        type=str,
        default=None,
        help="Instead of the table: profile --steps training steps of this row (a preset or "
        "ref:<preset>) with torch.profiler and print the top operators.",
    )
    parser.add_argument("--profile-rows", type=int, default=20, help="Operators shown by --profile.")
    parser.add_argument(
        "--zipformer-batch-count",
        type=float,
        default=5000.0,
        help="ScheduledFloat batch count of the Zipformer rows (their dropout, skip rates and "
        "balancer probabilities depend on it).",
    )
    parser.add_argument(
        "--base-lr", type=float, default=None, help="Learning rate (default 0.045 ScaledAdam, 3e-3 AdamW)."
    )
    parser.add_argument("--prune-range", type=int, default=5, help="Pruned RNN-T range.")
    parser.add_argument("--lm-scale", type=float, default=0.25, help="Simple-loss LM smoothing.")
    parser.add_argument("--am-scale", type=float, default=0.0, help="Simple-loss AM smoothing.")
    parser.add_argument(
        "--simple-loss-scale", type=float, default=0.5, help="Weight of the simple loss."
    )
    add_common_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    if not 0 < args.min_duration <= args.max_duration:
        raise SystemExit("need 0 < --min-duration <= --max-duration")
    if args.steps < 1 or args.min_steps < 1:
        raise SystemExit("--steps and --min-steps must be >= 1")
    device = resolve_device(args.device)
    threads = setup_torch(args.num_threads, args.seed)
    print(format_machine_info(machine_info(device)))

    batches = make_batches(
        args.warmup_steps + args.steps,
        args.max_duration_per_batch,
        args.min_duration,
        args.max_duration,
        args.tokens_per_second,
        args.vocab_size,
        args.seed,
    )
    if args.profile:
        profile_row(args.profile, batches, args, device)
        print(load_note())
        return
    mean_audio = sum(b.audio_s for b in batches) / len(batches)
    mean_utts = sum(len(b.y) for b in batches) / len(batches)
    print(
        f"# Training benchmark: batches of <= {args.max_duration_per_batch} s "
        f"(mean {mean_audio:.1f} s, {mean_utts:.1f} utterances of {args.min_duration}-"
        f"{args.max_duration} s), {args.tokens_per_second} tokens/s, autocast {args.autocast}, "
        f"warm-up {args.warmup_steps}, up to {args.steps} timed steps "
        f"(<= {args.max_seconds_per_preset} s per preset)"
    )
    width = max(7, *(len(n) for n in [*args.presets, *(REF_PREFIX + p for p in args.reference)]))
    header = (
        f"{'preset':<{width}} {'params':>8} {'steps':>5} {'s/step (IQR)':>24} {'audio-s/s':>9} "
        f"{'h/epoch 100h':>12} {'h/epoch 960h':>12} {'peak mem':>10} {'loss/utt':>9} optimizer"
    )
    print(header)
    print("-" * len(header))
    summary = []
    names = list(args.presets) + [REF_PREFIX + p for p in args.reference]
    rows = benchmark_presets(names, batches, args, device)
    throughput: Dict[str, float] = {}
    for name in names:
        res = rows[name]
        stats = summarize(res["times"])
        throughput[name] = sum(res["audio"]) / sum(res["times"])
        tp = throughput[name]
        print(
            f"{name:<{width}} {res['params'] / 1e6:7.2f}M {len(res['times']):5d} {stats.fmt():>24} "
            f"{tp:9.1f} {100 / tp:12.1f} {960 / tp:12.1f} "
            f"{format_bytes(res['peak_bytes']):>10} {res['loss_per_utt']:9.1f} {res['optimizer']}"
        )
        summary.append(f"{name}={tp:.1f}")
    params = {n: rows[n]["params"] for n in names}
    for z, c in nearest_pairs(params):
        print(f"# ratio {z} / {c} (closest Conformer by parameters): {throughput[z] / throughput[c]:.2f}x")
    for p in args.reference:
        if p in throughput:
            print(f"# ratio {p} / {REF_PREFIX}{p} (ours / reference encoder): "
                  f"{throughput[p] / throughput[REF_PREFIX + p]:.2f}x")  # fmt: skip
    print(
        "# h/epoch = hours of audio / throughput: an EXTRAPOLATION from this machine, one process, "
        "no data loading, validation, speed perturbation or KD teacher."
    )
    if device.type != "cuda":
        print("# peak mem: only measured on CUDA (see benchmark_loss.py for CPU peak memory).")
    print(load_note())
    print(
        f"SUMMARY training device={device} threads={threads} autocast={args.autocast} "
        f"audio-s/s: {' '.join(summary)}"
    )


if __name__ == "__main__":
    main()
