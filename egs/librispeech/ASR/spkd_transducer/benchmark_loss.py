#!/usr/bin/env python3
"""Pruned vs full RNN-T loss: forward+backward time and peak memory, side by side.

Both methods run the model's own code on the same random encoder output
``(B, T, C)`` and random references ``(B, U)``:

* ``pruned``: :meth:`Transducer.transducer_outputs` -- the simple (smoothed)
  loss on ``simple_am_proj``/``simple_lm_proj``, the prune ranges from its
  occupancies, the real joiner on ``(B, T, R, V)`` only, and the pruned loss;
  the training loss ``simple_loss_scale * simple + pruned`` is back-propagated.
  (The simple loss is part of the cost: pruning needs it.)
* ``full``: :meth:`Transducer.full_rnnt_loss` -- the real joiner on the full
  ``(B, T, U+1, V)`` lattice, log-softmax, and the RNN-T recursion.

The encoder itself is not run (identical for both); gradients flow into the
decoder, joiner and the encoder output.

Timing: ``--warmup`` untimed rounds, then ``--repeats`` rounds; each round runs
both methods, in alternating order, so slow drifts of a busy machine hit both
alike. Reported: median and inter-quartile range of forward, backward and
total seconds.

Peak memory: on CUDA the extra ``torch.cuda.max_memory_allocated`` of one
forward+backward over what was allocated before it. On CPU, the peak RSS
growth of one forward+backward in a fresh subprocess per method (after one
warm-up call there; see ``icefall_spkd/benchmarking.py``). Both count every
temporary of the step, including the parameter gradients it creates.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/benchmark_loss.py                      # B=8 T=250 U=60 V=500, preset small
    ./spkd_transducer/benchmark_loss.py --device cuda --repeats 20
    ./spkd_transducer/benchmark_loss.py --batch-size 2 --num-frames 50 --num-symbols 10 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from icefall_spkd.benchmarking import (
    PeakMemory,
    add_common_arguments,
    cuda_peak_memory,
    format_bytes,
    format_machine_info,
    load_note,
    machine_info,
    resolve_device,
    run_interleaved,
    setup_torch,
    subprocess_peak_memory,
    summarize,
    synchronize,
)
from icefall_spkd.models.presets import PRESETS, build_model

METHODS = ("pruned", "full")


class LossStep:
    """One forward+backward of a loss method on fixed random inputs (callable).

    Args:
      method: ``"pruned"`` or ``"full"``.
      preset: model preset (decoder and joiner sizes matter; the encoder is unused).
      batch_size, num_frames, num_symbols, vocab_size: ``B``, ``T`` (encoder
        frames), ``U``, ``V``.
      prune_range: ``R`` of the pruned loss.
      length_spread: 0 = every utterance has ``T`` frames and ``U`` symbols;
        ``s > 0`` draws utterance ``b > 0``'s lengths uniformly from
        ``[(1 - s) * max, max]`` (utterance 0 keeps the maximum).
      simple_loss_scale, lm_scale, am_scale: as in training.
      seed: weights and data.
      device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        method: str,
        preset: str = "small",
        batch_size: int = 8,
        num_frames: int = 250,
        num_symbols: int = 60,
        vocab_size: int = 500,
        prune_range: int = 5,
        length_spread: float = 0.0,
        simple_loss_scale: float = 0.5,
        lm_scale: float = 0.25,
        am_scale: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.prune_range = prune_range
        self.simple_loss_scale = simple_loss_scale
        self.lm_scale = lm_scale
        self.am_scale = am_scale
        self.device = torch.device(device)

        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = build_model({"model_preset": preset, "vocab_size": vocab_size})
        self.model.encoder = None  # not used; keeps its weights out of the measurement
        self.model.to(self.device).train()
        C = self.model.simple_am_proj.in_features

        B, T, U = batch_size, num_frames, num_symbols
        frac = 1.0 - length_spread * torch.rand(B, generator=g)
        frac[0] = 1.0
        self.encoder_out_lens = (frac * T).round().clamp(min=1).to(torch.int64).to(self.device)
        self.y_lens = (frac * U).round().to(torch.int64).to(self.device)
        self.encoder_out = torch.randn(B, T, C, generator=g).to(self.device).requires_grad_()
        self.y_padded = torch.randint(1, vocab_size, (B, U), generator=g).to(self.device)

        self.forward_times: List[float] = []
        self.last_loss: float = float("nan")
        self.logits_shape: tuple = ()

    def forward(self) -> torch.Tensor:
        """The scalar loss (sum over the batch) of this method."""
        if self.method == "pruned":
            out = self.model.transducer_outputs(
                self.encoder_out,
                self.encoder_out_lens,
                self.y_padded,
                self.y_lens,
                prune_range=self.prune_range,
                am_scale=self.am_scale,
                lm_scale=self.lm_scale,
            )
            self.logits_shape = tuple(out.logits.shape)
            return self.simple_loss_scale * out.simple_loss + out.pruned_loss
        B, T, _ = self.encoder_out.shape
        self.logits_shape = (B, T, self.y_padded.shape[1] + 1, self.model.vocab_size)
        return self.model.full_rnnt_loss(
            self.encoder_out, self.encoder_out_lens, self.y_padded, self.y_lens, reduction="sum"
        )

    def __call__(self) -> None:
        """Forward (timed into ``forward_times``), backward, then free the gradients.

        Freeing the gradients inside the call means a peak-memory measurement
        of one call starts without them and counts them at their peak.
        """
        synchronize(self.device)
        t0 = time.perf_counter()
        loss = self.forward()
        synchronize(self.device)
        self.forward_times.append(time.perf_counter() - t0)
        loss.backward()
        self.last_loss = float(loss.detach()) / self.encoder_out.shape[0]
        self.model.zero_grad(set_to_none=True)
        self.encoder_out.grad = None


def make_loss_step(**kwargs: Any) -> Callable[[], None]:
    """Factory for :func:`subprocess_peak_memory` (keyword arguments of :class:`LossStep`)."""
    return LossStep(**kwargs)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", "-B", type=int, default=8, help="Utterances B.")
    parser.add_argument("--num-frames", "-T", type=int, default=250, help="Encoder frames T.")
    parser.add_argument("--num-symbols", "-U", type=int, default=60, help="Reference tokens U.")
    parser.add_argument("--vocab-size", "-V", type=int, default=500, help="Vocabulary V.")
    parser.add_argument("--prune-range", type=int, default=5, help="Prune range R.")
    parser.add_argument(
        "--model-preset",
        type=str,
        default="small",
        choices=sorted(PRESETS),
        help="Preset giving the decoder/joiner sizes.",
    )
    parser.add_argument(
        "--length-spread",
        type=float,
        default=0.0,
        help="0: all utterances full length; s: lengths uniform in [(1-s)*max, max].",
    )
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed rounds.")
    parser.add_argument(
        "--methods",
        type=str,
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="Which losses to run.",
    )
    parser.add_argument(
        "--skip-memory", action="store_true", help="Do not measure peak memory."
    )
    add_common_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    threads = setup_torch(args.num_threads, args.seed)
    print(format_machine_info(machine_info(device)))
    B, T, U, V, R = (
        args.batch_size,
        args.num_frames,
        args.num_symbols,
        args.vocab_size,
        args.prune_range,
    )
    print(
        f"# Loss benchmark: B={B} T={T} U={U} V={V} R={R} preset={args.model_preset} "
        f"length_spread={args.length_spread} warmup={args.warmup} repeats={args.repeats}"
    )

    kwargs: Dict[str, Any] = dict(
        preset=args.model_preset,
        batch_size=B,
        num_frames=T,
        num_symbols=U,
        vocab_size=V,
        prune_range=R,
        length_spread=args.length_spread,
        seed=args.seed,
        device=str(device),
    )
    steps = {m: LossStep(m, **kwargs) for m in args.methods}
    times = run_interleaved(steps, repeats=args.repeats, warmup=args.warmup, device=device)
    # What the table needs from each step, kept before the steps are freed.
    forward_times = {m: s.forward_times[-args.repeats :] for m, s in steps.items()}
    logits_shapes = {m: s.logits_shape for m, s in steps.items()}
    losses = {m: s.last_loss for m, s in steps.items()}

    memory: Dict[str, Optional[PeakMemory]] = {m: None for m in args.methods}
    if not args.skip_memory and device.type == "cuda":
        for m, step in steps.items():
            memory[m] = cuda_peak_memory(step, device)
    del steps  # free this process's tensors (before the CPU memory children run)
    if not args.skip_memory and device.type == "cpu":
        here = os.path.abspath(__file__)
        for m in args.methods:
            memory[m] = subprocess_peak_memory(
                f"{here}:make_loss_step", dict(kwargs, method=m), warmup=1, threads=threads
            )

    header = (
        f"{'method':<8} {'logits shape':<22} {'logits size':>11} "
        f"{'forward s (IQR)':>24} {'backward s (IQR)':>24} {'fwd+bwd s (IQR)':>24} "
        f"{'peak mem':>11} {'loss/utt':>9}"
    )
    print(header)
    print("-" * len(header))
    totals = {}
    for m in args.methods:
        totals[m] = total = summarize(times[m])
        fwd = summarize(forward_times[m])
        bwd = summarize([t - f for t, f in zip(times[m], forward_times[m])])
        n_logits = 1
        for d in logits_shapes[m]:
            n_logits *= d
        mem = memory[m]
        mem_s = format_bytes(mem.peak_bytes) if mem is not None else "n/a"
        if mem is not None and not mem.reset_ok:
            mem_s = ">=" + mem_s
        print(
            f"{m:<8} {str(logits_shapes[m]):<22} {format_bytes(4 * n_logits):>11} "
            f"{fwd.fmt():>24} {bwd.fmt():>24} {total.fmt():>24} {mem_s:>11} {losses[m]:9.2f}"
        )

    mem_kind = {
        "rss": "peak RSS growth of one fwd+bwd, fresh subprocess per method after 1 warm-up call",
        "cuda": "CUDA max_memory_allocated growth of one fwd+bwd",
    }
    kinds = {mem.kind for mem in memory.values() if mem is not None}
    kind = ", ".join(mem_kind.get(k, k) for k in sorted(kinds)) or "not measured"
    print(f"# peak mem: {kind}.")
    print(
        "# loss/utt: per-utterance loss of the last call; pruned = "
        "simple_loss_scale*simple + pruned, so it is not expected to equal full."
    )
    print(load_note())
    head = f"SUMMARY loss B={B} T={T} U={U} V={V} R={R} device={device} threads={threads}:"
    if "pruned" in totals and "full" in totals:
        t_ratio = totals["full"].median / totals["pruned"].median
        mp, mf = memory["pruned"], memory["full"]
        m_ratio = (
            f"{mf.peak_bytes / mp.peak_bytes:.1f}x"
            if mp is not None and mf is not None and mp.peak_bytes > 0
            else "n/a"
        )
        print(
            f"{head} full/pruned time {t_ratio:.1f}x (median fwd+bwd "
            f"{totals['full'].median:.3f} s vs {totals['pruned'].median:.3f} s), "
            f"full/pruned peak memory {m_ratio}"
        )
    else:
        print(head + " " + " ".join(f"{m} {t.median:.3f} s" for m, t in totals.items()))

if __name__ == "__main__":
    main()
