"""The training entry point behind ``egs/librispeech/ASR/spkd_transducer/train.py``.

Kept here (not in the script) so the script stays thin and tests can import it.
The structure follows icefall's ``pruned_transducer_stateless*`` recipes:
``compute_loss`` (:mod:`icefall_spkd.train_loss`) -> ``train_one_epoch`` and
``compute_validation_loss`` (:mod:`icefall_spkd.train_loop`) ->
``run(rank, world_size, args)`` (here). Process groups (``--world-size`` with
``mp.spawn``, or ``torchrun``) are set up by :mod:`icefall_spkd.distributed`;
gradient clipping, ``--inf-check`` and bad-batch dumps are in
:mod:`icefall_spkd.train_safety`.

Experiment directory (icefall's layout): ``epoch-N.pt``,
``checkpoint-<batch>.pt``, ``best-train-loss.pt`` / ``best-valid-loss.pt``
(copies of the epoch file with the best loss so far), ``log/log-train-<date>``
(``-<rank>`` appended under DDP), ``tensorboard/`` (rank 0) and
``batch-<epoch>-<batch>.pt`` for skipped batches.

Exact resume: a ``checkpoint-<b>.pt`` file holds model, averaged model,
optimizer, Eden state, grad scaler, the lhotse sampler's state (how many batches
of the epoch were consumed) and the RNG states taken right after batch ``b``.
On resume the sampler fast-forwards to batch ``b + 1`` and the RNG states are
restored after the epoch's DataLoader iterator is created (which draws a seed)
and before the first batch is read, so batch ``b + 1`` sees exactly the random
numbers it would have seen in the uninterrupted run. Validation and saving run
inside :func:`~icefall_spkd.checkpoint.preserve_rng_state` so they do not shift
the training random stream. This is bit-exact with ``--num-workers 0``; with
worker processes the sampler runs ahead by the prefetched batches and workers
are seeded from the iterator's seed, so a resume is close but not bit-exact.

Knowledge distillation (``--kd-loss``, ``--teacher-checkpoint``, ``--kd-*``; see
:mod:`icefall_spkd.teacher` and ``docs/SPKD.md``): ``run`` loads a frozen teacher
(never in the optimizer, never wrapped in DDP) and a KD generator. The KD
generator is re-seeded at every epoch start (from ``--seed``, the epoch and the
rank) and its state is saved in every checkpoint, so resume stays exact with KD
too.
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from icefall_spkd.checkpoint import load_checkpoint, save_checkpoint
from icefall_spkd.distributed import DistEnv, cleanup_dist, setup_dist, spawn_env
from icefall_spkd.optim import Eden, build_optimizer
from icefall_spkd.teacher import (
    generator_state_from_str,
    kd_seed,
    make_kd_generator,
    validate_kd_params,
)
from icefall_spkd.teacher import load_teacher as _load_teacher
from icefall_spkd.train_loop import (  # noqa: F401  (re-exported names)
    _record_kd_generator,
    adjusted_batch_count,
    compute_validation_loss,
    train_one_epoch,
    validate,
)
from icefall_spkd.train_loss import (  # noqa: F401  (re-exported names)
    _cut_ids,
    _feature_lens,
    _texts_in_input_order,
    autocast_context,
    compute_loss,
    loss_scales,
)
from icefall_spkd.train_safety import TooManyBadBatches  # noqa: F401  (re-exported)
from icefall_spkd.utils import AttributeDict, cpu_threads, num_parameters, setup_logger

LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# Params
# --------------------------------------------------------------------------- #
def get_params() -> AttributeDict:
    """Fixed values that are not command-line options, plus the run's bookkeeping.

    ``batch_idx_train`` counts optimizer steps over the whole run (checkpoint
    names use it); the ``best_*`` entries are updated as training goes.
    """
    return AttributeDict(
        {
            "best_train_loss": float("inf"),
            "best_valid_loss": float("inf"),
            "best_train_epoch": -1,
            "best_valid_epoch": -1,
            "batch_idx_train": 0,
            "cur_epoch": 1,
            "reset_interval": 200,
            "feature_dim": 80,
            "subsampling_factor": 4,
            "env_info": _env_info(),
        }
    )


def _env_info() -> str:
    from icefall_spkd import pruned_rnnt

    return f"torch {torch.__version__}, rnnt backend {pruned_rnnt.BACKEND_NAME}"


def fix_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


#: ``--optimizer`` -> defaults of ``(--base-lr, --lr-batches, --lr-epochs)``:
#: icefall's Zipformer recipe for ScaledAdam, this recipe's tuned values for AdamW.
OPTIMIZER_DEFAULTS = {"scaled_adam": (0.045, 7500.0, 3.5), "adamw": (3e-3, 5000.0, 6.0)}


def resolve_optimizer_params(params: AttributeDict, encoder_type: str) -> None:
    """Fill ``optimizer``, ``base_lr``, ``lr_batches``, ``lr_epochs`` left at None.

    ``--optimizer`` defaults to ScaledAdam for the Zipformer and AdamW for the
    Conformer; the lr defaults follow the optimizer (:data:`OPTIMIZER_DEFAULTS`).
    ScaledAdam clips by itself (``--clipping-scale``), so ``--max-grad-norm``
    is refused with it.
    """
    if params.get("optimizer") is None:
        params.optimizer = "scaled_adam" if encoder_type == "zipformer" else "adamw"
    if params.optimizer not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"--optimizer {params.optimizer!r}: choose one of {sorted(OPTIMIZER_DEFAULTS)}")
    for key, default in zip(("base_lr", "lr_batches", "lr_epochs"), OPTIMIZER_DEFAULTS[params.optimizer]):
        if params.get(key) is None:
            params[key] = default
    params.setdefault("clipping_scale", 2.0)
    params.setdefault("lr_warmup_start", 0.5)
    if params.optimizer == "scaled_adam" and float(params.get("max_grad_norm") or 0) > 0:
        raise ValueError(
            "--max-grad-norm applies to AdamW only; ScaledAdam clips the gradient by itself "
            "(--clipping-scale, default 2.0): drop --max-grad-norm"
        )


def load_teacher(params: AttributeDict, device: torch.device) -> Optional[nn.Module]:
    """The frozen teacher of ``--teacher-checkpoint`` on ``device``; None without KD.

    See :func:`icefall_spkd.teacher.load_teacher` (strict load, BPE check, frozen,
    eval mode; not wrapped in DDP).
    """
    return _load_teacher(params, device)


def _kd_state_for_rank(ckpt: Dict[str, Any], rank: int, world_size: int) -> Optional[str]:
    """This rank's saved KD generator state, checking the checkpoint's world size."""
    states = ckpt.get("kd_generator_state")
    if states is None:
        return None
    if isinstance(states, str):  # a single-process checkpoint of an older layout
        states = [states]
    if len(states) != world_size:
        raise ValueError(
            f"{ckpt['_filename']} holds KD generator states of {len(states)} process(es) but "
            f"--world-size is {world_size}; resume a KD run mid-epoch with the same world size "
            "(or from an epoch-N.pt with --start-epoch)"
        )
    return states[rank]


def load_bpe(params: AttributeDict) -> Any:
    """Load ``--bpe-model`` and set ``params.vocab_size`` / ``blank_id``."""
    import sentencepiece as spm

    path = Path(params.bpe_model)
    if not path.is_file():
        raise FileNotFoundError(
            f"BPE model not found: {path} (prepare it with prepare.sh, or pass --bpe-model)"
        )
    sp = spm.SentencePieceProcessor()
    sp.load(str(path))
    params.vocab_size = sp.get_piece_size()
    blank = sp.piece_to_id("<blk>")
    if sp.id_to_piece(blank) != "<blk>":
        raise ValueError(f"{path} has no '<blk>' piece; blank must be id 0")
    params.blank_id = blank
    return sp


def _resolve_precision(params: AttributeDict, device: torch.device) -> None:
    if params.use_fp16 and params.use_bf16:
        raise ValueError("--use-fp16 and --use-bf16 are mutually exclusive")
    if device.type != "cuda" and (params.use_fp16 or params.use_bf16):
        which = "--use-fp16" if params.use_fp16 else "--use-bf16"
        msg = f"{which} needs a CUDA device; training on CPU in float32 instead."
        warnings.warn(msg, stacklevel=2)
        logging.warning(msg)
        params.use_fp16 = False
        params.use_bf16 = False


def _resume(
    params: AttributeDict,
    model: nn.Module,
    model_avg: Optional[nn.Module],
) -> Optional[Dict[str, Any]]:
    """Load model weights for ``--start-batch``/``--start-epoch``; returns the checkpoint rest."""
    if params.start_batch > 0:
        filename = Path(params.exp_dir) / f"checkpoint-{params.start_batch}.pt"
    elif params.start_epoch > 1:
        filename = Path(params.exp_dir) / f"epoch-{params.start_epoch - 1}.pt"
    else:
        return None
    rest = load_checkpoint(filename, model=model, model_avg=model_avg)
    for key in (
        "batch_idx_train",
        "best_train_loss",
        "best_valid_loss",
        "best_train_epoch",
        "best_valid_epoch",
    ):
        if key in rest:
            params[key] = rest[key]
    if params.start_batch > 0:
        if "cur_epoch" not in rest:
            raise ValueError(f"{filename} has no 'cur_epoch'; cannot resume mid-epoch")
        params.start_epoch = int(rest["cur_epoch"])
    rest["_filename"] = str(filename)
    return rest


def run(rank: int, world_size: int, args: Any, dist_env: Optional[DistEnv] = None) -> None:
    """Train on one process (``rank`` of ``world_size``); ``args`` from the recipe's parser.

    ``dist_env``: how the process was started (see :mod:`icefall_spkd.distributed`);
    None means ``mp.spawn`` process ``rank`` (or the only process), which is
    what ``torch.multiprocessing.spawn(run, args=(world_size, args))`` gives.
    """
    from icefall_spkd.data import AsrDataModule
    from icefall_spkd.features import global_feature_stats
    from icefall_spkd.models.presets import build_model, encoder_type_of

    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)

    env = dist_env if dist_env is not None else spawn_env(rank, world_size)
    if (env.rank, env.world_size) != (rank, world_size):
        raise ValueError(f"run(rank={rank}, world_size={world_size}) does not match {env}")

    fix_random_seed(params.seed)
    if env.is_distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        setup_dist(env, backend, params.master_port)

    setup_logger(params.exp_dir / "log" / "log-train", rank=rank, world_size=world_size)
    logging.info(f"Training started: {env}")
    tb_writer = None
    if params.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=str(params.exp_dir / "tensorboard"))

    device = torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_num_threads(1)
    else:
        # CPU: share the cores among this machine's DDP processes (all of them
        # for one process), unless OMP_NUM_THREADS says how many threads to use.
        torch.set_num_threads(cpu_threads(env.local_world_size))
    _resolve_precision(params, device)
    logging.info(f"Device: {device}")

    validate_kd_params(params)
    if params.get("bpe_model") or not params.get("tokens"):
        sp = load_bpe(params)
    else:  # a character vocabulary (egs/aishell): --tokens data/lang_char/tokens.txt
        from icefall_spkd.text_zh import load_char_tokenizer

        sp = load_char_tokenizer(params)
    logging.info({k: v for k, v in params.items() if k != "sp"})

    resolve_optimizer_params(params, encoder_type_of(params))
    model = build_model(params)
    logging.info(
        f"Number of model parameters: {num_parameters(model)}; optimizer {params.optimizer}, "
        f"base lr {params.base_lr}, Eden lr_batches {params.lr_batches}, lr_epochs {params.lr_epochs}"
        + (f", CTC loss scale {params.ctc_loss_scale}" if params.get("use_ctc") else "")
    )

    datamodule = AsrDataModule(args)
    train_cuts = datamodule.train_cuts()
    # Global CMVN from the training features (a resumed run overwrites these
    # with the checkpoint's own statistics below).
    set_feature_stats = getattr(model.encoder, "set_feature_stats", None)
    if set_feature_stats is not None:
        mean, std = global_feature_stats(train_cuts)
        set_feature_stats(mean, std)
        logging.info(
            f"Feature statistics from the training cuts: mean {mean.mean():.3f}, "
            f"std {std.mean():.3f} (averaged over bins)"
        )

    model_avg: Optional[nn.Module] = None
    if rank == 0:
        # float64 so that many small running-mean updates do not lose precision.
        model_avg = copy.deepcopy(model).to(torch.float64)

    ckpt_rest = _resume(params, model, model_avg)
    params.sp = sp
    # The ScheduledFloat batch count (Zipformer) follows batch_idx_train, which a
    # resume restored; train_one_epoch sets it again before every step.
    model.set_batch_count(adjusted_batch_count(params, world_size))

    model.to(device)
    if world_size > 1:
        logging.info("Using DDP")
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if device.type == "cuda" else None
        )

    optimizer = build_optimizer(
        model,
        lr=params.base_lr,
        weight_decay=params.weight_decay,
        optimizer=params.optimizer,
        clipping_scale=params.clipping_scale,
    )
    scheduler = Eden(
        optimizer,
        lr_batches=params.lr_batches,
        lr_epochs=params.lr_epochs,
        warmup_batches=params.lr_warmup_batches,
        warmup_start=params.lr_warmup_start,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=bool(params.use_fp16 and device.type == "cuda"))

    rng_state = None
    sampler_state = None
    if ckpt_rest is not None:
        fname = ckpt_rest["_filename"]
        for name, obj, key in (
            ("optimizer", optimizer, "optimizer"),
            ("scheduler", scheduler, "scheduler"),
            ("grad scaler", scaler, "grad_scaler"),
        ):
            if ckpt_rest.get(key) is not None:
                logging.info(f"Loading {name} state from {fname}")
                obj.load_state_dict(ckpt_rest[key])
        if params.start_batch > 0:
            sampler_state = ckpt_rest.get("sampler")
            rng_state = ckpt_rest.get("rng")
            if sampler_state is None:
                raise ValueError(f"{fname} has no sampler state; cannot resume mid-epoch")

    teacher = load_teacher(params, device)  # frozen; not in the optimizer, not in DDP
    kd_generator = make_kd_generator(params.seed, rank) if teacher is not None else None
    kd_state = (
        _kd_state_for_rank(ckpt_rest, rank, world_size)
        if (ckpt_rest and params.start_batch > 0 and teacher is not None)
        else None
    )
    if teacher is not None and params.start_batch > 0 and kd_state is None:
        raise ValueError(
            f"{ckpt_rest['_filename']} has no KD generator state (written without KD?); "
            "cannot resume a KD run exactly from it"
        )

    valid_cuts = datamodule.dev_cuts()
    clean_teacher = teacher is not None and params.get("kd_teacher_input", "augmented") == "clean"
    late_augment = int(params.get("spec_aug_start_batch", 0)) > 0
    augment_in_step = clean_teacher or late_augment
    if augment_in_step:
        params.student_spec_augment = datamodule.spec_augment()  # None without --enable-spec-aug
        if clean_teacher:
            logging.info(
                "KD teacher input: clean features; SpecAugment "
                + ("applied to the student's copy in the training step" if params.student_spec_augment else "off")
            )
        if late_augment and params.student_spec_augment is not None:
            logging.info(f"SpecAugment in the training step from update {params.spec_aug_start_batch} on")
    train_dl = datamodule.train_dataloaders(
        train_cuts, sampler_state_dict=sampler_state, spec_augment_in_loader=not augment_in_step
    )
    valid_dl = datamodule.valid_dataloaders(valid_cuts)
    shard = getattr(train_dl, "sampler", None)
    logging.info(
        f"Training sampler shard: rank {getattr(shard, 'rank', 0)} of "
        f"{getattr(shard, 'world_size', 1)}"
    )

    for epoch in range(params.start_epoch, params.num_epochs + 1):
        scheduler.step_epoch(epoch - 1)
        fix_random_seed(params.seed + epoch - 1)
        if kd_generator is not None:
            if kd_state is not None:  # mid-epoch resume: the state after the saved batch
                generator_state_from_str(kd_generator, kd_state)
                kd_state = None
            else:
                kd_generator.manual_seed(kd_seed(params.seed + epoch - 1, rank))
        sampler = getattr(train_dl, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)
        params.cur_epoch = epoch
        if tb_writer is not None:
            tb_writer.add_scalar("train/epoch", epoch, params.batch_idx_train)

        train_one_epoch(
            params=params,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            train_dl=train_dl,
            valid_dl=valid_dl,
            scaler=scaler,
            model_avg=model_avg,
            tb_writer=tb_writer,
            world_size=world_size,
            rank=rank,
            teacher=teacher,
            rng_state_to_restore=rng_state,
            kd_generator=kd_generator,
        )
        rng_state = None

        if params.get("last_valid_batch") != params.batch_idx_train:
            validate(params, model, valid_dl, world_size, teacher, tb_writer)

        # The next epoch starts at batch 0 of a new sampler pass: store cur_epoch
        # so that an epoch file records the epoch it closes.
        _record_kd_generator(params, kd_generator)
        epoch_file = params.exp_dir / f"epoch-{epoch}.pt"
        save_checkpoint(
            epoch_file,
            model=model,
            model_avg=model_avg,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler=sampler,
            scaler=scaler,
            params=params,
            rank=rank,
        )
        if rank == 0:
            _copy_best(params, epoch_file, epoch)

    logging.info("Done!")
    if tb_writer is not None:
        tb_writer.close()
    cleanup_dist()


def _copy_best(params: AttributeDict, epoch_file: Path, epoch: int) -> None:
    """icefall's ``best-train-loss.pt`` / ``best-valid-loss.pt``: the epoch file with the best loss."""
    for which in ("train", "valid"):
        if params[f"best_{which}_epoch"] == epoch:
            dst = params.exp_dir / f"best-{which}-loss.pt"
            shutil.copyfile(epoch_file, dst)
            logging.info(f"Copied {epoch_file.name} to {dst.name} (best {which} loss so far)")
