"""The transducer training loop behind ``egs/librispeech/ASR/spkd_transducer/train.py``.

Kept here (not in the script) so the script stays thin and tests can import it.
The structure follows icefall's ``pruned_transducer_stateless*`` recipes:
``compute_loss`` -> ``compute_validation_loss`` -> ``train_one_epoch`` ->
``run(rank, world_size, args)``.

Loss-scale warm-up (icefall's rule, restated): the total loss is
``simple_scale * simple_loss + pruned_scale * pruned_loss``. During the first
``--warm-step`` batches both scales move linearly with the global batch index
``b``: the simple-loss scale starts at 1.0 and falls to ``--simple-loss-scale``,
and the pruned-loss scale starts at 0.1 and rises to 1.0; from batch
``warm_step`` on they stay at ``--simple-loss-scale`` and 1.0. The simple
(trivial-joiner) loss thus dominates early, while its occupancies, which pick
the pruning ranges, are still poor; the pruned loss takes over once they are
meaningful. Validation always uses the final scales.

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
(never in the optimizer, never wrapped in DDP) and a KD generator; the
student's forward then returns its ``TransducerOutputs`` (through the DDP
wrapper, which keeps gradient synchronisation intact), and ``compute_loss``
adds ``kd_scale * (L_PKD + kd_sampling_scale * L_samp)`` and logs each term.
The KD generator is re-seeded at every epoch start (from ``--seed``, the epoch
and the rank) and its state is saved in every checkpoint, so resume stays exact
with KD too.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from icefall_spkd.checkpoint import (
    load_checkpoint,
    preserve_rng_state,
    remove_checkpoints,
    save_checkpoint,
    save_checkpoint_with_global_batch_idx,
    set_rng_state,
    update_averaged_model,
)
from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.optim import Eden, build_optimizer
from icefall_spkd.teacher import (
    compute_kd_terms,
    generator_state_from_str,
    generator_state_to_str,
    kd_loss_and_metrics,
    kd_seed,
    make_kd_generator,
    validate_kd_params,
)
from icefall_spkd.teacher import load_teacher as _load_teacher
from icefall_spkd.utils import (
    AttributeDict,
    cpu_threads,
    num_parameters,
    pad_token_ids,
    setup_logger,
)

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


def loss_scales(params: AttributeDict, batch_idx_train: int, is_training: bool) -> Tuple[float, float]:
    """``(simple_loss_scale, pruned_loss_scale)`` at a global batch index (see module doc)."""
    s = float(params.simple_loss_scale)
    warm = float(params.warm_step)
    if not is_training or warm <= 0 or batch_idx_train >= warm:
        return s, 1.0
    frac = batch_idx_train / warm
    return 1.0 - frac * (1.0 - s), 0.1 + 0.9 * frac


def _cut_ids(batch: Dict[str, Any]) -> List[str]:
    cuts = batch.get("supervisions", {}).get("cut")
    if cuts is None:
        return []
    return [getattr(c, "id", str(c)) for c in cuts]


def _feature_lens(batch: Dict[str, Any], device: torch.device) -> torch.Tensor:
    """Per-utterance feature lengths of a K2SpeechRecognitionDataset batch.

    Assumes one supervision per cut covering the whole cut (as in LibriSpeech).
    """
    sup = batch["supervisions"]
    x = batch["inputs"]
    lens = sup.get("num_frames")
    if lens is None:
        return torch.full((x.size(0),), x.size(1), dtype=torch.int64, device=device)
    lens = torch.as_tensor(lens, dtype=torch.int64)
    idx = torch.as_tensor(sup.get("sequence_idx", torch.arange(x.size(0))), dtype=torch.int64)
    out = torch.zeros(x.size(0), dtype=torch.int64)
    out[idx] = lens
    return out.to(device)


def _texts_in_input_order(batch: Dict[str, Any]) -> List[str]:
    """Supervision texts in the order of ``batch['inputs']`` rows."""
    sup = batch["supervisions"]
    texts = list(sup["text"])
    idx = sup.get("sequence_idx")
    if idx is None:
        return texts
    out = [""] * batch["inputs"].size(0)
    for i, t in zip(torch.as_tensor(idx).tolist(), texts):
        out[i] = t
    return out


def autocast_context(params: AttributeDict, device: torch.device):
    """The autocast context for the forward pass (fp16/bf16 on GPU only)."""
    if device.type != "cuda" or not (params.use_fp16 or params.use_bf16):
        return nullcontext()
    dtype = torch.bfloat16 if params.use_bf16 else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# --------------------------------------------------------------------------- #
# Loss
# --------------------------------------------------------------------------- #
def compute_loss(
    params: AttributeDict,
    model: nn.Module,
    batch: Dict[str, Any],
    is_training: bool,
    teacher: Optional[nn.Module] = None,
    kd_generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, MetricsTracker]:
    """Transducer loss of one batch, plus the KD terms when a teacher is given.

    Args:
      params: needs ``sp`` (a SentencePieceProcessor), ``prune_range``,
        ``am_scale``, ``lm_scale``, ``simple_loss_scale``, ``warm_step``,
        ``batch_idx_train``, ``use_fp16``/``use_bf16``.
      model: the Transducer, possibly wrapped in DDP.
      batch: a K2SpeechRecognitionDataset batch.
      is_training: enables gradients and the loss-scale warm-up.
      teacher: the frozen KD teacher (None: plain training); needs the
        ``kd_*`` params (see :mod:`icefall_spkd.teacher`).
      kd_generator: random generator of the KD samplers / sampled node weights.
    Returns:
      ``(loss, info)``: ``loss`` is summed over the utterances; ``info`` holds
      summed ``loss``, ``simple_loss``, ``pruned_loss`` and the count ``frames``
      (encoder frames), plus ``utterances``; with a teacher also ``kd_loss``
      and, with a sampler, ``kd_samp_loss``, ``kd_samp_tokens``,
      ``kd_samp_empty``, ``kd_ref_tokens`` (see :func:`kd_loss_and_metrics`).
    """
    device = next(model.parameters()).device
    x = batch["inputs"].to(device)
    if x.ndim != 3:
        raise ValueError(f"batch['inputs'] must be (N, T, F), got shape {tuple(x.shape)}")
    x_lens = _feature_lens(batch, device)
    texts = _texts_in_input_order(batch)
    y = params.sp.encode(texts, out_type=int)

    sf = int(params.get("subsampling_factor", 4))
    frames = float((x_lens // sf).sum().item())
    kd_metrics: Dict[str, float] = {}
    with torch.set_grad_enabled(is_training):
        fwd_kwargs = dict(prune_range=params.prune_range, am_scale=params.am_scale, lm_scale=params.lm_scale)
        if teacher is None:
            with autocast_context(params, device):
                simple_loss, pruned_loss = model(x, x_lens, y, **fwd_kwargs)
        else:
            # Through model(...) so that a DDP wrapper sees the forward.
            with autocast_context(params, device):
                student_out = model(x, x_lens, y, return_outputs=True, **fwd_kwargs)
            simple_loss, pruned_loss = student_out.simple_loss, student_out.pruned_loss
        s_scale, p_scale = loss_scales(params, params.batch_idx_train, is_training)
        loss = s_scale * simple_loss + p_scale * pruned_loss

        if teacher is not None:
            student = model.module if hasattr(model, "module") else model
            y_padded, y_lens = pad_token_ids(y, pad_id=int(params.blank_id), device=device)
            terms = compute_kd_terms(
                params, teacher, student, student_out, x, x_lens, y_padded, y_lens, kd_generator
            )
            kd_loss, kd_metrics = kd_loss_and_metrics(params, terms, y_lens, frames)
            loss = loss + kd_loss

    info = MetricsTracker()
    info["frames"] = frames
    info["utterances"] = float(x.size(0))
    info["loss"] = loss.detach().float().item()
    info["simple_loss"] = simple_loss.detach().float().item()
    info["pruned_loss"] = pruned_loss.detach().float().item()
    for k, v in kd_metrics.items():
        info[k] = v
    return loss, info


def load_teacher(params: AttributeDict, device: torch.device) -> Optional[nn.Module]:
    """The frozen teacher of ``--teacher-checkpoint`` on ``device``; None without KD.

    See :func:`icefall_spkd.teacher.load_teacher` (strict load, BPE check, frozen,
    eval mode; not wrapped in DDP).
    """
    return _load_teacher(params, device)


def compute_validation_loss(
    params: AttributeDict,
    model: nn.Module,
    valid_dl: Any,
    world_size: int = 1,
    teacher: Optional[nn.Module] = None,
) -> MetricsTracker:
    """Summed validation metrics over ``valid_dl`` (reduced over DDP ranks).

    Updates ``params.best_valid_loss``/``best_valid_epoch``. Random generators
    are left as they were (see module docstring); KD sampling uses a fresh
    generator with a fixed seed, so validations are comparable.
    """
    was_training = model.training
    model.eval()
    # The DDP wrapper is bypassed: no gradients, so no collective is needed per batch.
    inner = model.module if hasattr(model, "module") else model
    tot = MetricsTracker()
    device = next(model.parameters()).device
    kd_generator = make_kd_generator(int(params.get("seed", 0)), -1) if teacher is not None else None
    with preserve_rng_state(), torch.no_grad():
        for batch in valid_dl:
            _, info = compute_loss(
                params, inner, batch, is_training=False, teacher=teacher, kd_generator=kd_generator
            )
            tot = tot + info
    if world_size > 1:
        tot.reduce(device)
    loss_value = tot.get_normalized("loss")
    if loss_value < params.best_valid_loss:
        params.best_valid_epoch = params.cur_epoch
        params.best_valid_loss = loss_value
    model.train(was_training)
    return tot


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
class TooManyBadBatches(RuntimeError):
    """Raised after ``--max-bad-batches`` consecutive non-finite losses."""


def _all_ranks_finite(loss: torch.Tensor, world_size: int) -> bool:
    finite = bool(torch.isfinite(loss.detach()).all())
    if world_size > 1:
        flag = torch.tensor([1.0 if finite else 0.0], device=loss.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = bool(flag.item() > 0.5)
    return finite


def train_one_epoch(
    params: AttributeDict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Eden,
    train_dl: Any,
    valid_dl: Any,
    scaler: torch.amp.GradScaler,
    model_avg: Optional[nn.Module] = None,
    tb_writer: Optional[Any] = None,
    world_size: int = 1,
    rank: int = 0,
    teacher: Optional[nn.Module] = None,
    rng_state_to_restore: Optional[Dict[str, Any]] = None,
    kd_generator: Optional[torch.Generator] = None,
) -> None:
    """One pass over ``train_dl`` (or its remainder when resuming mid-epoch).

    Per batch: loss -> non-finite check -> backward -> Eden step -> optimizer
    step -> averaged-model update -> periodic checkpoint / log / validation.
    Updates ``params.best_train_loss`` at the end. ``teacher``/``kd_generator``:
    KD (see :func:`compute_loss`); the generator's state goes into every checkpoint.
    """
    model.train()
    tot_loss = MetricsTracker()
    bad_in_a_row = 0
    device = next(model.parameters()).device

    data_iter = iter(train_dl)
    if rng_state_to_restore is not None:
        set_rng_state(rng_state_to_restore)

    for batch_idx, batch in enumerate(data_iter):
        params.batch_idx_train += 1
        batch_size = batch["inputs"].size(0)

        loss, info = compute_loss(
            params, model, batch, is_training=True, teacher=teacher, kd_generator=kd_generator
        )

        if _all_ranks_finite(loss, world_size):
            bad_in_a_row = 0
            scaler.scale(loss).backward()
            scheduler.step_batch(params.batch_idx_train)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            tot_loss = tot_loss * (1 - 1 / params.reset_interval) + info
        else:
            bad_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            logging.warning(
                f"Skipping batch {batch_idx} (global {params.batch_idx_train}) of epoch "
                f"{params.cur_epoch}: non-finite loss on this or another rank "
                f"(loss={info['loss']}, simple_loss={info['simple_loss']}, "
                f"pruned_loss={info['pruned_loss']}); {bad_in_a_row} in a row; "
                f"cut ids: {_cut_ids(batch)}"
            )
            if bad_in_a_row >= params.max_bad_batches:
                raise TooManyBadBatches(
                    f"Aborting: {bad_in_a_row} consecutive batches had a non-finite loss "
                    f"(--max-bad-batches {params.max_bad_batches}). Last cut ids: "
                    f"{_cut_ids(batch)}. Check the data and lower --base-lr, or disable "
                    "--use-fp16."
                )

        if (
            rank == 0
            and model_avg is not None
            and params.batch_idx_train > 0
            and params.batch_idx_train % params.average_period == 0
        ):
            update_averaged_model(model, model_avg, params.batch_idx_train, params.average_period)

        if params.batch_idx_train > 0 and params.batch_idx_train % params.save_every_n == 0:
            _record_kd_generator(params, kd_generator)
            save_checkpoint_with_global_batch_idx(
                out_dir=params.exp_dir,
                global_batch_idx=params.batch_idx_train,
                model=model,
                model_avg=model_avg,
                optimizer=optimizer,
                scheduler=scheduler,
                sampler=getattr(train_dl, "sampler", None),
                scaler=scaler,
                params=params,
                rank=rank,
            )
            removed = remove_checkpoints(params.exp_dir, topk=params.keep_last_k, rank=rank)
            for f in removed:
                logging.info(f"Removed old checkpoint {f} (--keep-last-k {params.keep_last_k})")

        if batch_idx % params.log_interval == 0:
            cur_lr = scheduler.get_last_lr()[0]
            logging.info(
                f"Epoch {params.cur_epoch}, batch {batch_idx}, "
                f"global_batch {params.batch_idx_train}, "
                f"batch_loss {info['loss']:.10e}, loss[{info}], tot_loss[{tot_loss}], "
                f"batch size: {batch_size}, lr: {cur_lr:.3e}"
                + (f", grad_scale: {scaler.get_scale():.1f}" if scaler.is_enabled() else "")
            )
            if tb_writer is not None:
                tb_writer.add_scalar("train/learning_rate", cur_lr, params.batch_idx_train)
                info.write_summary(tb_writer, "train/current_", params.batch_idx_train)
                tot_loss.write_summary(tb_writer, "train/tot_", params.batch_idx_train)

        if params.valid_interval > 0 and params.batch_idx_train % params.valid_interval == 0:
            _validate(params, model, valid_dl, world_size, teacher, tb_writer)
            model.train()

    if world_size > 1:
        tot_loss.reduce(device)
    loss_value = tot_loss.get_normalized("loss")
    params.train_loss = loss_value
    if math.isfinite(loss_value) and loss_value < params.best_train_loss:
        params.best_train_epoch = params.cur_epoch
        params.best_train_loss = loss_value


def _record_kd_generator(params: AttributeDict, kd_generator: Optional[torch.Generator]) -> None:
    """Put every rank's KD generator state into ``params`` (saved with the checkpoint).

    Only rank 0 writes checkpoints, so under DDP the states of all ranks are
    gathered (a collective: every rank calls this at the same save point) and
    stored as a list indexed by rank; each rank restores its own on resume.
    """
    if kd_generator is None:
        return
    state = generator_state_to_str(kd_generator)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
    else:
        states = [state]
    params.kd_generator_state = states


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


def _validate(
    params: AttributeDict,
    model: nn.Module,
    valid_dl: Any,
    world_size: int,
    teacher: Optional[nn.Module],
    tb_writer: Optional[Any],
) -> MetricsTracker:
    logging.info("Computing validation loss")
    valid_info = compute_validation_loss(params, model, valid_dl, world_size, teacher)
    params.last_valid_batch = params.batch_idx_train
    logging.info(
        f"Epoch {params.cur_epoch}, global_batch {params.batch_idx_train}, "
        f"validation: {valid_info}, best valid loss {params.best_valid_loss:.4g} "
        f"(epoch {params.best_valid_epoch})"
    )
    if tb_writer is not None:
        valid_info.write_summary(tb_writer, "train/valid_", params.batch_idx_train)
    return valid_info


# --------------------------------------------------------------------------- #
# Setup and the per-process entry point
# --------------------------------------------------------------------------- #
def setup_dist(rank: int, world_size: int, master_port: int, backend: str) -> None:
    """Initialise the default process group on localhost."""
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ["MASTER_PORT"] = str(master_port)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["RANK"] = str(rank)
    torch.distributed.init_process_group(backend, rank=rank, world_size=world_size)


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


def run(rank: int, world_size: int, args: Any) -> None:
    """Train on one process (``rank`` of ``world_size``); ``args`` from the recipe's parser."""
    from icefall_spkd.data import AsrDataModule
    from icefall_spkd.features import global_feature_stats
    from icefall_spkd.models.presets import build_model

    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)

    fix_random_seed(params.seed)
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        setup_dist(rank, world_size, params.master_port, backend)

    setup_logger(params.exp_dir / "log" / "log-train", rank=rank)
    logging.info("Training started")
    tb_writer = None
    if params.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=str(params.exp_dir / "tensorboard"))

    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_num_threads(1)
    else:
        # CPU: share the cores among the DDP processes (all of them for one
        # process), unless OMP_NUM_THREADS says how many threads to use.
        torch.set_num_threads(cpu_threads(world_size))
    _resolve_precision(params, device)
    logging.info(f"Device: {device}")

    validate_kd_params(params)
    sp = load_bpe(params)
    logging.info({k: v for k, v in params.items() if k != "sp"})

    model = build_model(params)
    logging.info(f"Number of model parameters: {num_parameters(model)}")

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

    model.to(device)
    if world_size > 1:
        logging.info("Using DDP")
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if device.type == "cuda" else None
        )

    optimizer = build_optimizer(model, lr=params.base_lr, weight_decay=params.weight_decay)
    scheduler = Eden(
        optimizer,
        lr_batches=params.lr_batches,
        lr_epochs=params.lr_epochs,
        warmup_batches=params.lr_warmup_batches,
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
    train_dl = datamodule.train_dataloaders(train_cuts, sampler_state_dict=sampler_state)
    valid_dl = datamodule.valid_dataloaders(valid_cuts)

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
            _validate(params, model, valid_dl, world_size, teacher, tb_writer)

        # The next epoch starts at batch 0 of a new sampler pass: store cur_epoch
        # so that an epoch file records the epoch it closes.
        _record_kd_generator(params, kd_generator)
        save_checkpoint(
            params.exp_dir / f"epoch-{epoch}.pt",
            model=model,
            model_avg=model_avg,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler=sampler,
            scaler=scaler,
            params=params,
            rank=rank,
        )

    logging.info("Done!")
    if tb_writer is not None:
        tb_writer.close()
    if world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
