#!/usr/bin/env python3
"""Cost of SP-KD per training step, side by side with its floor.

One *training step* of the student = forward + backward + AdamW step +
``zero_grad`` on one synthetic batch. Methods (all measured in the same run,
interleaved round by round, the order rotating):

* ``none``: the baseline student (``--kd-loss none``): student encoder,
  ``transducer_outputs`` (simple loss, prune ranges, pruned loss), loss
  ``simple_loss_scale * simple + pruned``.
* ``floor``: ``none`` + the teacher forward pass on the reference (encoder and
  ``transducer_outputs`` under ``no_grad``, teacher in eval mode). Any KD
  method needs at least this, so ratios are given against it.
* ``pkd``: ``floor`` + :func:`icefall_spkd.kd.compute_kd_losses` with
  ``kd_loss=pkd`` and no sampler (reference only); loss ``+ lambda * kd``.
* ``spkd-N{n}``: ``pkd`` + the ``teacher`` sampler with ``N = n`` sequences per
  utterance; loss ``+ lambda * kd + lambda * rho * kd_samp``.
* ``spkd-N{n}-unshared`` (for the largest ``n``, unless ``--no-unshared``):
  the same with ``--kd-share-nodes false``, i.e. every window node of every
  sampled sequence evaluated, even where several sequences repeat it.
  ``node share`` is the fraction of window nodes that are distinct.

The batch: ``B`` utterances of ``4 * T + 3`` random 80-dim feature frames
(``T`` encoder frames after the conformer's 4x subsampling; ``T = 200`` is
~8 s of audio) and ``U`` random tokens in ``[1, V)`` each. Weights are random
(untrained). An untrained joiner gives blank ~1/V of the mass, so the
teacher sampler would emit on nearly every frame (``T`` tokens per sample, 5x
a real transcript); to sample sequences of realistic length, the teacher's
blank logit bias is raised by ``--teacher-blank-bias`` (default: ``log((1 - p)
/ p * (V - 1))`` with ``p = U / T``, so ~``U`` tokens per sample, like a
trained teacher). What matters here is the amount of work, which depends on
``T``, ``U``, ``V``, ``N`` and the number of emitted tokens (printed as
``samp tokens/seq``).

A trained teacher on real speech samples sequences that agree on most
tokens, which the random teacher cannot imitate (its samples share few
window nodes). ``--teacher-checkpoint`` loads a trained teacher (its preset
and vocabulary come from the file) and ``--cuts`` takes the batch from the
first ``B`` utterances of a cut manifest (features and BPE-encoded
transcripts; run from egs/librispeech/ASR so that feature paths resolve);
``T`` and ``U`` are then those of the data.

Breakdown: after the timed rounds, ``--profile-steps`` extra steps of each SP-KD
method run with section timers (``time.perf_counter`` around each part,
``torch.cuda.synchronize`` at both ends of each section on CUDA) installed
through :func:`icefall_spkd.kd.profiling`; medians per section are shown
with their share of the step. ``other`` is the step total minus the sections.

Usage (from egs/librispeech/ASR)::

    ./spkd_transducer/benchmark_kd.py                            # teacher small, student tiny, CPU
    ./spkd_transducer/benchmark_kd.py --steps 20 --num-threads 2
    ./spkd_transducer/benchmark_kd.py --device cuda --teacher-preset large --student-preset small
    ./spkd_transducer/benchmark_kd.py -B 2 -T 30 -U 8 --steps 2 --warmup 1   # smoke test
    # a trained teacher on real utterances (the comparison table's)
    ./spkd_transducer/benchmark_kd.py --teacher-checkpoint table/teacher/seed-42/pretrained.pt \
        --cuts data/fbank/librispeech_cuts_train.jsonl.gz --bpe-model data/lang_bpe_50/bpe.model -B 8
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import torch

from icefall_spkd import kd as kd_module
from icefall_spkd import pruned_rnnt
from icefall_spkd.benchmarking import (
    add_common_arguments,
    format_machine_info,
    machine_info,
    resolve_device,
    run_interleaved,
    setup_torch,
    summarize,
    synchronize,
)
from icefall_spkd.kd import compute_kd_losses
from icefall_spkd.kd_options import DEFAULTS as KD_DEFAULTS
from icefall_spkd.models.presets import PRESETS, ZIPFORMER_PRESETS, build_model, num_parameters
from icefall_spkd.optim import build_optimizer

FEATURE_DIM = 80

# Breakdown rows, in step order: (section name, label).
SECTIONS = (
    ("teacher_ref", "teacher forward on reference (encoder + transducer_outputs)"),
    ("student_ref", "student forward on reference (encoder + transducer_outputs)"),
    ("ref:teacher", "PKD ref: teacher joiner on KD window"),
    ("ref:student", "PKD ref: student joiner on KD window"),
    ("ref:kd_math", "PKD ref: KD loss math"),
    ("sampler", "sampler (teacher ancestral sampling)"),
    ("samp:teacher", "teacher forward on samples (dec, window, joiner)"),
    ("samp:student", "student decoder/joiner on samples"),
    ("samp:kd_math", "KD loss math on samples"),
    ("samp:shared_nodes", "samples: both joiners + KD math on distinct nodes"),
    ("backward", "backward"),
    ("optimizer", "optimizer step + zero_grad"),
)


class SectionTimer:
    """Wall time per named section, summed within a step (``section`` nests flatly)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: Dict[str, float] = defaultdict(float)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.current[name] += time.perf_counter() - t0

    def take(self) -> Dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out


_NULL = SectionTimer(torch.device("cpu"))


@contextmanager
def _maybe(timer: Optional[SectionTimer], name: str) -> Iterator[None]:
    if timer is None:
        yield
    else:
        with timer.section(name):
            yield


class KDStep:
    """One student training step of a method (callable), with its own student copy.

    Every method starts from the same student weights (``student_state``) and
    the same batch; each has its own optimizer, so they do not interact.
    """

    def __init__(
        self,
        method: str,
        teacher: torch.nn.Module,
        student_state: Dict[str, torch.Tensor],
        student_preset: str,
        batch: Dict[str, Any],
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        self.method = method
        self.teacher = teacher
        self.batch = batch
        self.args = args
        self.device = device
        self.student = build_model({"model_preset": student_preset, "vocab_size": args.vocab_size})
        self.student.load_state_dict(student_state)
        self.student.to(device).train()
        # train.py's optimizer for the student's encoder (ScaledAdam for a Zipformer)
        zipformer = student_preset.startswith("zipformer")
        self.optimizer = build_optimizer(
            self.student, lr=1e-4, optimizer="scaled_adam" if zipformer else "adamw"
        )
        self.generator = torch.Generator(device=device).manual_seed(args.seed + 1)
        self.kd_params: Dict[str, Any] = dict(
            kd_loss="none",
            kd_sampler="none",
            kd_num_samples=1,
            kd_sample_temperature=1.0,
            kd_temperature=1.0,
            kd_prune_range=args.kd_prune_range,
            kd_ranges="teacher",
            kd_node_weights=args.kd_node_weights,
            am_scale=0.0,
            lm_scale=0.25,
        )
        if method == "pkd":
            self.kd_params["kd_loss"] = "pkd"
        elif method.startswith("spkd-N"):
            n, _, variant = method[len("spkd-N") :].partition("-")
            if variant not in ("", "unshared"):
                raise ValueError(f"unknown method {method!r}")
            self.kd_params.update(
                kd_loss="pkd",
                kd_sampler="teacher",
                kd_num_samples=int(n),
                kd_share_nodes=variant != "unshared",
            )
        elif method not in ("none", "floor"):
            raise ValueError(f"unknown method {method!r}")
        self.timer: Optional[SectionTimer] = None
        self.profiles: List[Dict[str, float]] = []
        self.samp_tokens: List[float] = []
        self.node_share: List[float] = []
        self.last_loss = float("nan")

    def __call__(self) -> None:
        timer = self.timer
        if timer is None:
            self._step()
            return
        synchronize(self.device)
        t_start = time.perf_counter()
        with kd_module.profiling(timer):
            self._step()
        synchronize(self.device)
        prof = timer.take()
        prof["total"] = time.perf_counter() - t_start
        self.profiles.append(prof)

    def _step(self) -> None:
        b, args, timer = self.batch, self.args, self.timer
        need_teacher = self.method != "none"
        t_out = None
        if need_teacher:
            with torch.no_grad(), _maybe(timer, "teacher_ref"):
                t_enc, t_lens = self.teacher.forward_encoder(b["x"], b["x_lens"])
                t_out = self.teacher.transducer_outputs(
                    t_enc,
                    t_lens,
                    b["y_padded"],
                    b["y_lens"],
                    prune_range=args.prune_range,
                    am_scale=0.0,
                    lm_scale=0.25,
                )
        with _maybe(timer, "student_ref"):
            s_enc, s_lens = self.student.forward_encoder(b["x"], b["x_lens"])
            s_out = self.student.transducer_outputs(
                s_enc,
                s_lens,
                b["y_padded"],
                b["y_lens"],
                prune_range=args.prune_range,
                am_scale=0.0,
                lm_scale=0.25,
            )
        loss = args.simple_loss_scale * s_out.simple_loss + s_out.pruned_loss
        if self.kd_params["kd_loss"] != "none":
            kd = compute_kd_losses(
                self.teacher,
                self.student,
                t_out,
                s_out,
                b["y_padded"],
                b["y_lens"],
                self.kd_params,
                generator=self.generator,
            )
            loss = loss + args.kd_scale * kd["kd"]
            loss = loss + args.kd_scale * args.kd_sampling_scale * kd["kd_samp"]
            if "kd_samp_tokens" in kd:
                self.samp_tokens.append(float(kd["kd_samp_tokens"]))
            if "kd_samp_node_share" in kd:
                self.node_share.append(float(kd["kd_samp_node_share"]))
        with _maybe(timer, "backward"):
            loss.backward()
        with _maybe(timer, "optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())


def batch_from_cuts(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """The first ``--batch-size`` utterances of ``--cuts``: fbank features and BPE tokens."""
    import sentencepiece as spm
    from lhotse import CutSet, load_manifest_lazy
    from lhotse.dataset.collation import collate_features

    if not args.bpe_model:
        raise SystemExit("--cuts needs --bpe-model (the teacher's BPE model)")
    cuts = []
    for cut in load_manifest_lazy(args.cuts):
        cuts.append(cut)
        if len(cuts) == args.batch_size:
            break
    if len(cuts) < args.batch_size:
        raise SystemExit(f"{args.cuts} has only {len(cuts)} cuts; lower --batch-size")
    x, x_lens = collate_features(CutSet.from_cuts(cuts))
    sp = spm.SentencePieceProcessor(model_file=str(args.bpe_model))
    ys = [sp.encode(" ".join(s.text for s in c.supervisions)) for c in cuts]
    y = torch.zeros(len(ys), max(map(len, ys)), dtype=torch.int64)
    for i, t in enumerate(ys):
        y[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    return dict(
        x=x.to(device),
        x_lens=x_lens.to(device),
        y_padded=y.to(device),
        y_lens=torch.tensor([len(t) for t in ys], device=device),
    )


def load_trained_teacher(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """``--teacher-checkpoint`` as training loads it; sets ``args.vocab_size`` from the file."""
    from icefall_spkd.teacher import load_teacher
    from icefall_spkd.utils import AttributeDict

    ckpt = torch.load(args.teacher_checkpoint, map_location="cpu", weights_only=False)
    args.vocab_size = int(ckpt["model"]["joiner.output_linear.weight"].shape[0])
    params = AttributeDict(
        kd_loss="pkd",
        teacher_checkpoint=args.teacher_checkpoint,
        vocab_size=args.vocab_size,
        blank_id=0,
        bpe_model=args.bpe_model,
        feature_dim=FEATURE_DIM,
    )
    teacher = load_teacher(params, device)
    assert teacher is not None
    return teacher


def make_batch(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    if args.cuts:
        return batch_from_cuts(args, device)
    g = torch.Generator().manual_seed(args.seed)
    B, T, U, V = args.batch_size, args.num_frames, args.num_symbols, args.vocab_size
    n_in = 4 * T + 3  # conformer subsampling: T' = (n_in - 3) // 4
    x = torch.randn(B, n_in, FEATURE_DIM, generator=g)
    return dict(
        x=x.to(device),
        x_lens=torch.full((B,), n_in, dtype=torch.int64, device=device),
        y_padded=torch.randint(1, V, (B, U), generator=g).to(device),
        y_lens=torch.full((B,), U, dtype=torch.int64, device=device),
    )


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    presets = sorted(PRESETS) + sorted(ZIPFORMER_PRESETS)  # Conformer or Zipformer
    parser.add_argument("--teacher-preset", default="small", choices=presets)
    parser.add_argument("--student-preset", default="tiny", choices=presets)
    parser.add_argument("--batch-size", "-B", type=int, default=8, help="Utterances B.")
    parser.add_argument(
        "--num-frames",
        "-T",
        type=int,
        default=200,
        help="Encoder frames T after 4x subsampling (200 ~ 8 s of audio).",
    )
    parser.add_argument("--num-symbols", "-U", type=int, default=40, help="Reference tokens U.")
    parser.add_argument("--vocab-size", "-V", type=int, default=500, help="Vocabulary V.")
    parser.add_argument("--prune-range", type=int, default=5, help="Prune range of the RNN-T loss.")
    parser.add_argument("--kd-prune-range", type=int, default=5, help="KD window R_kd.")
    parser.add_argument("--kd-node-weights", default="uniform", choices=kd_module.NODE_WEIGHT_KINDS)
    parser.add_argument("--kd-scale", type=float, default=KD_DEFAULTS.kd_scale, help="lambda.")
    parser.add_argument(
        "--kd-sampling-scale", type=float, default=KD_DEFAULTS.kd_sampling_scale, help="rho."
    )
    parser.add_argument("--simple-loss-scale", type=float, default=0.5)
    parser.add_argument(
        "--num-samples", type=int, nargs="+", default=[1, 2, 4], help="N values of SP-KD."
    )
    parser.add_argument(
        "--teacher-blank-bias",
        type=float,
        default=None,
        help="Added to the teacher joiner's blank logit bias (default: ~U tokens per sample).",
    )
    parser.add_argument(
        "--no-unshared",
        action="store_true",
        help="Skip the spkd-N<max>-unshared method (--kd-share-nodes false).",
    )
    parser.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="A trained teacher (pretrained.pt or epoch-N.pt); default: a random one.",
    )
    parser.add_argument(
        "--cuts", default=None, help="Cut manifest to take the batch from (needs --bpe-model)."
    )
    parser.add_argument("--bpe-model", default=None, help="BPE model of --cuts' transcripts.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first.")
    parser.add_argument("--steps", type=int, default=10, help="Timed rounds (one step per method).")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=3,
        help="Extra steps per SP-KD method with section timers (0: no breakdown).",
    )
    add_common_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    threads = setup_torch(args.num_threads, args.seed)
    info = machine_info(device)
    print(format_machine_info(info))
    print(f"# torch {torch.__version__}, threads {threads}, backend {pruned_rnnt.BACKEND_NAME}")

    torch.manual_seed(args.seed)
    if args.teacher_checkpoint:
        teacher = load_trained_teacher(args, device)
        bias = 0.0
    else:
        teacher = build_model({"model_preset": args.teacher_preset, "vocab_size": args.vocab_size})
        bias = args.teacher_blank_bias
        if bias is None:
            p = min(max(args.num_symbols / max(args.num_frames, 1), 1e-3), 1 - 1e-3)
            bias = math.log((1 - p) / p * (args.vocab_size - 1))
        with torch.no_grad():
            teacher.joiner.output_linear.bias[teacher.blank_id] += bias
    teacher.to(device).eval().requires_grad_(False)
    torch.manual_seed(args.seed + 100)
    proto = build_model({"model_preset": args.student_preset, "vocab_size": args.vocab_size})
    student_state = {k: v.clone() for k, v in proto.state_dict().items()}
    batch = make_batch(args, device)
    if args.cuts:  # T and U of the data, for the printout
        args.num_frames = int((batch["x_lens"].max().item() - 3) // 4)
        args.num_symbols = int(batch["y_lens"].max().item())
    print(
        f"# KD step benchmark: teacher={args.teacher_preset}"
        f"{' from ' + args.teacher_checkpoint if args.teacher_checkpoint else ''} "
        f"({num_parameters(teacher) / 1e6:.2f} M) student={args.student_preset} "
        f"({num_parameters(proto) / 1e6:.2f} M) B={args.batch_size} T={args.num_frames} "
        f"U={args.num_symbols} V={args.vocab_size} R_kd={args.kd_prune_range} "
        f"node_weights={args.kd_node_weights} teacher_blank_bias={bias:.2f} warmup={args.warmup} steps={args.steps}"
    )
    del proto

    methods = ["none", "floor", "pkd"] + [f"spkd-N{n}" for n in args.num_samples]
    if not args.no_unshared and args.num_samples:
        methods.append(f"spkd-N{max(args.num_samples)}-unshared")
    steps = {
        m: KDStep(m, teacher, student_state, args.student_preset, batch, args, device)
        for m in methods
    }
    times = run_interleaved(steps, repeats=args.steps, warmup=args.warmup, device=device)

    floor = summarize(times["floor"]).median
    header = (
        f"{'method':<19} {'ms/step median':>14} {'IQR (q1-q3)':>19} {'x floor':>8} "
        f"{'samp tokens/seq':>15} {'node share':>10} {'loss':>10}"
    )
    print()
    print(header)
    print("-" * len(header))
    for m in methods:
        s = summarize(times[m])
        toks = steps[m].samp_tokens
        tok_s = f"{sum(toks) / len(toks):.1f}" if toks else "-"
        share = steps[m].node_share
        share_s = f"{sum(share) / len(share):.3f}" if share else "-"
        print(
            f"{m:<19} {s.median * 1e3:14.1f} {f'{s.q1 * 1e3:.1f}-{s.q3 * 1e3:.1f}':>19} "
            f"{s.median / floor:8.2f} {tok_s:>15} {share_s:>10} {steps[m].last_loss:10.1f}"
        )

    sp_methods = [m for m in methods if m.startswith("spkd-")]
    if args.profile_steps > 0 and sp_methods:
        for m in sp_methods:
            steps[m].timer = SectionTimer(device)
        for _ in range(args.profile_steps):
            for m in sp_methods:
                steps[m]()
        print()
        print(f"# Breakdown (median ms over {args.profile_steps} profiled steps; % of step)")
        head = f"{'section':<62}" + "".join(f"{m:>18}" for m in sp_methods)
        print(head)
        print("-" * len(head))
        med: Dict[str, Dict[str, float]] = {}
        for m in sp_methods:
            profs = steps[m].profiles
            keys = {k for p in profs for k in p}
            med[m] = {k: summarize([p.get(k, 0.0) for p in profs]).median for k in keys}
            med[m]["other"] = max(
                0.0, med[m]["total"] - sum(v for k, v in med[m].items() if k != "total")
            )
        rows = list(SECTIONS) + [("other", "other (Python glue, loss sums)"), ("total", "total")]
        for key, label in rows:
            cells = ""
            for m in sp_methods:
                v, tot = med[m].get(key, 0.0), med[m]["total"]
                cells += f"{v * 1e3:10.1f} ({100 * v / tot:4.1f}%)"
            print(f"{label:<62}{cells}")

    n_max = f"spkd-N{max(args.num_samples)}"
    parts = [f"floor {floor * 1e3:.0f} ms"]
    for m in methods:
        if m != "floor":
            parts.append(f"{m} {summarize(times[m]).median / floor:.2f}x")
    sampler_share = ""
    if args.profile_steps > 0 and n_max in steps and steps[n_max].profiles:
        sh = summarize([p.get("sampler", 0.0) / p["total"] for p in steps[n_max].profiles]).median
        sampler_share = f"; sampler {100 * sh:.1f}% of the {n_max} step"
    print()
    print(
        f"SUMMARY kd-step teacher={args.teacher_preset} student={args.student_preset} "
        f"B={args.batch_size} T={args.num_frames} U={args.num_symbols} V={args.vocab_size} "
        f"device={device} threads={threads} load1m={info.get('load_avg_1m', 'n/a')}: "
        + ", ".join(parts)
        + sampler_share
        + " (targets: spkd N=4 <= 1.3x floor, sampler < 10%)"
    )


if __name__ == "__main__":
    main()
