#!/usr/bin/env python3
"""Train a pruned stateless transducer (icefall-style recipe script).

Usage (from egs/librispeech/ASR)::

    # one process (CPU or one GPU)
    ./spkd_transducer/train.py --world-size 1 --num-epochs 30 --start-epoch 1 \\
        --exp-dir spkd_transducer/exp --model-preset small --max-duration 300

    # 4 GPUs with DDP (nccl); on CPU, several processes use gloo
    ./spkd_transducer/train.py --world-size 4 --num-epochs 30 --exp-dir spkd_transducer/exp

    # the same under torchrun: one process per GPU, here 2 machines x 8 GPUs
    # (run on each machine, --node-rank 0 and 1; RANK, LOCAL_RANK and
    # WORLD_SIZE come from torchrun, so --world-size is left out)
    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 \
        --master-addr node0.example.com --master-port 29500 \
        ./spkd_transducer/train.py --num-epochs 30 --exp-dir spkd_transducer/exp

    # resume: from the end of epoch 3 ...
    ./spkd_transducer/train.py --start-epoch 4 ...
    # ... or exactly from checkpoint-12000.pt (same epoch, next batch)
    ./spkd_transducer/train.py --start-batch 12000 ...

Knowledge distillation (SP-KD, docs/SPKD.md) from a trained teacher of the
same BPE model (its architecture is read from the file; for an icefall
Zipformer ``pretrained.pt``, which does not record it, give it with the
``--teacher-*`` flags in icefall's names, e.g. ``--teacher-num-encoder-layers
2,2,3,4,3,2 --teacher-encoder-dim 192,256,384,512,384,256 ...``, and check its
vocabulary with ``--teacher-tokens``)::

    # PKD (pruned KD on the reference only)
    ./spkd_transducer/train.py --exp-dir spkd_transducer/exp_pkd --model-preset small \
        --teacher-checkpoint spkd_transducer/exp_teacher/epoch-30.pt \
        --kd-loss pkd --kd-sampler none --kd-scale 0.5
    # SP-KD (PKD + teacher-sampled sequences, N = 2)
    ./spkd_transducer/train.py --exp-dir spkd_transducer/exp_spkd --model-preset small \
        --teacher-checkpoint spkd_transducer/exp_teacher/epoch-30.pt \
        --kd-loss pkd --kd-sampler teacher --kd-num-samples 2 --kd-scale 0.5 --kd-sampling-scale 1.0

Outputs in ``--exp-dir`` (icefall's layout): ``epoch-N.pt``,
``checkpoint-<batch>.pt`` (the last ``--keep-last-k``), ``best-train-loss.pt``,
``best-valid-loss.pt``, ``log/log-train-<date>[-<rank>]``, ``tensorboard/`` and,
for a batch skipped because of a non-finite loss, ``batch-<epoch>-<batch>.pt``
(its cut ids and features).

Optimiser: ``--optimizer scaled_adam`` (default for ``--encoder-type
zipformer`` / ``zipformer-*`` presets; icefall's ScaledAdam + Eden, base lr
0.045, ``--lr-batches 7500 --lr-epochs 3.5``) or ``adamw`` (default for the
Conformer; base lr 3e-3). ``--use-ctc true --ctc-loss-scale 0.2`` adds
icefall's CTC head and loss.

Training safety: ``--max-grad-norm`` clips the gradient norm before each
AdamW step (the norm is logged either way); ``--inf-check true`` names the
first module whose output is not finite.

``--use-fp16``/``--use-bf16`` only apply on CUDA; on CPU they are ignored with
a warning and training runs in float32.

The training loop lives in :mod:`icefall_spkd.training`; see its docstring for
the loss-scale warm-up and the exact-resume rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from icefall_spkd.data import AsrDataModule
from icefall_spkd.distributed import launch_from_environ
from icefall_spkd.models.presets import add_model_arguments, encoder_type_of
from icefall_spkd.teacher import add_kd_arguments as _add_kd_arguments
from icefall_spkd.teacher_arch import add_teacher_model_arguments
from icefall_spkd.training import resolve_optimizer_params, run
from icefall_spkd.utils import AttributeDict, str2bool


def add_kd_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-checkpoint``, ``--teacher-*`` and the ``--kd-*`` options.

    Defined in :func:`icefall_spkd.teacher.add_kd_arguments`; they become
    ``params.teacher_*`` / ``params.kd_*`` and are used by
    ``icefall_spkd.training.load_teacher`` and ``compute_loss``.
    """
    _add_kd_arguments(parser)
    add_teacher_model_arguments(parser)  # --teacher-<model flag>, --teacher-tokens/--teacher-bpe-model


def get_parser() -> argparse.ArgumentParser:
    """All training options (model and data options are added by their modules)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = parser.add_argument_group("Training")
    g.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="Number of DDP processes spawned on this machine (default 1). Under torchrun "
        "leave it out: the processes and WORLD_SIZE come from torchrun.",
    )
    g.add_argument(
        "--master-port", type=int, default=12354, help="DDP master port (--world-size > 1)."
    )
    g.add_argument("--tensorboard", type=str2bool, default=True, help="Write tensorboard logs.")
    g.add_argument("--num-epochs", type=int, default=30, help="Train up to this epoch (1-based).")
    g.add_argument(
        "--start-epoch",
        type=int,
        default=1,
        help="Resume from exp-dir/epoch-(N-1).pt when > 1.",
    )
    g.add_argument(
        "--start-batch",
        type=int,
        default=0,
        help="Resume exactly from exp-dir/checkpoint-N.pt when > 0 (overrides --start-epoch).",
    )
    g.add_argument("--exp-dir", type=Path, default=Path("spkd_transducer/exp"))
    g.add_argument("--bpe-model", type=str, default="data/lang_bpe_500/bpe.model")
    g.add_argument(
        "--tokens",
        type=str,
        default=None,
        help="A character tokens.txt (<blk> = 0, <unk>), used when --bpe-model is empty; "
        "egs/aishell/ASR sets it to data/lang_char/tokens.txt.",
    )
    g.add_argument(
        "--optimizer",
        type=str,
        default=None,
        choices=["scaled_adam", "adamw"],
        help="scaled_adam (icefall's ScaledAdam, gradient clipping by --clipping-scale) or "
        "adamw; default: scaled_adam for the Zipformer, adamw for the Conformer.",
    )
    g.add_argument(
        "--base-lr",
        type=float,
        default=None,
        help="Peak learning rate; default 0.045 with ScaledAdam (icefall), 3e-3 with AdamW.",
    )
    g.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay.")
    g.add_argument(
        "--clipping-scale",
        type=float,
        default=2.0,
        help="ScaledAdam: clip the gradient norm to this times the median recent norm (icefall's 2.0).",
    )
    g.add_argument(
        "--lr-batches",
        type=float,
        default=None,
        help="Eden: batches after which the lr has decayed noticeably "
        "(default 7500 with ScaledAdam as icefall, 5000 with AdamW).",
    )
    g.add_argument(
        "--lr-epochs",
        type=float,
        default=None,
        help="Eden: epochs after which the lr has decayed noticeably "
        "(default 3.5 with ScaledAdam as icefall, 6 with AdamW).",
    )
    g.add_argument(
        "--lr-warmup-batches",
        type=float,
        default=500,
        help="Eden: linear lr warm-up from --lr-warmup-start over this many batches (0: none).",
    )
    g.add_argument(
        "--lr-warmup-start", type=float, default=0.5, help="Eden: lr factor at batch 0 of the warm-up."
    )
    g.add_argument(
        "--ref-duration",
        type=float,
        default=600,
        help="Zipformer: seconds of audio per 'batch' of the ScheduledFloat schedules (icefall's "
        "--ref-duration): batch count = global batch * --max-duration * world size / this.",
    )
    g.add_argument(
        "--use-ctc", type=str2bool, default=False, help="Add a CTC head and its loss (icefall's flag)."
    )
    g.add_argument(
        "--ctc-loss-scale", type=float, default=0.2, help="Scale of the CTC loss (icefall's 0.2)."
    )
    g.add_argument("--prune-range", type=int, default=5, help="Pruned RNN-T range per frame.")
    g.add_argument("--lm-scale", type=float, default=0.25, help="Smoothing: LM part of the simple loss.")
    g.add_argument("--am-scale", type=float, default=0.0, help="Smoothing: AM part of the simple loss.")
    g.add_argument(
        "--simple-loss-scale",
        type=float,
        default=0.5,
        help="Final scale of the simple loss (after --warm-step).",
    )
    g.add_argument(
        "--warm-step",
        type=int,
        default=2000,
        help="Batches over which the loss scales move to their final values.",
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--use-fp16", type=str2bool, default=False, help="fp16 autocast (CUDA only).")
    g.add_argument("--use-bf16", type=str2bool, default=False, help="bf16 autocast (CUDA only).")
    g.add_argument(
        "--save-every-n",
        type=int,
        default=4000,
        help="Write checkpoint-<batch>.pt every N batches.",
    )
    g.add_argument("--keep-last-k", type=int, default=30, help="Keep the newest K checkpoint-*.pt.")
    g.add_argument(
        "--average-period",
        type=int,
        default=200,
        help="Update the running-average model every N batches.",
    )
    g.add_argument(
        "--valid-interval",
        type=int,
        default=3000,
        help="Validation every N batches (plus once per epoch); 0: per epoch only.",
    )
    g.add_argument("--log-interval", type=int, default=50, help="Log every N batches.")
    g.add_argument(
        "--max-bad-batches",
        type=int,
        default=20,
        help="Abort after this many consecutive batches with a non-finite loss.",
    )
    g.add_argument(
        "--max-grad-norm",
        type=float,
        default=0.0,
        help="AdamW: clip the total gradient 2-norm to this value before each step "
        "(0: no clipping; the norm is logged either way). ScaledAdam clips by itself "
        "(--clipping-scale).",
    )
    g.add_argument(
        "--kd-teacher-input",
        type=str,
        default="augmented",
        choices=["augmented", "clean"],
        help="What the KD teacher sees: the SpecAugment-ed batch, as the student (augmented), "
        "or the clean features, the student an augmented copy made in the training step (clean).",
    )
    g.add_argument(
        "--inf-check",
        type=str2bool,
        default=False,
        help="Forward hooks that name the first module with a non-finite output (slower).",
    )
    add_kd_arguments(parser)
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> None:
    """Parse ``argv`` with ``parser`` (default :func:`get_parser`; recipes such as
    egs/aishell pass this parser with their own defaults) and train."""
    args = (parser or get_parser()).parse_args(argv)
    args.exp_dir = Path(args.exp_dir)
    # --optimizer and its lr defaults (ScaledAdam for the Zipformer), checked before any process starts
    resolved = AttributeDict(vars(args))
    try:
        resolve_optimizer_params(resolved, encoder_type_of(resolved))
    except ValueError as e:
        sys.exit(f"train.py: error: {e}")
    for key in ("optimizer", "base_lr", "lr_batches", "lr_epochs"):
        setattr(args, key, resolved[key])
    try:
        env = launch_from_environ()
    except ValueError as e:
        sys.exit(f"train.py: {e}")
    if env is not None:  # torchrun started this process: train as its rank, spawn nothing
        if args.world_size not in (None, env.world_size):
            sys.exit(
                f"--world-size {args.world_size} but torchrun's WORLD_SIZE is {env.world_size}; "
                "leave --world-size out under torchrun"
            )
        args.world_size = env.world_size
        run(rank=env.rank, world_size=env.world_size, args=args, dist_env=env)
        return
    if args.world_size is None:
        args.world_size = 1
    if args.world_size < 1:
        sys.exit(f"--world-size must be >= 1, got {args.world_size}")
    if args.world_size > 1:
        if torch.cuda.is_available() and torch.cuda.device_count() < args.world_size:
            sys.exit(
                f"--world-size {args.world_size} but only {torch.cuda.device_count()} GPUs"
            )
        torch.multiprocessing.spawn(run, args=(args.world_size, args), nprocs=args.world_size, join=True)
    else:
        run(rank=0, world_size=1, args=args)


if __name__ == "__main__":
    # Threads: one per process on GPU, the cores shared out on CPU (see training.run).
    torch.set_num_interop_threads(1)
    main()
