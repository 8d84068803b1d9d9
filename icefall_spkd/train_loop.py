"""One training epoch and the validation pass (icefall's ``train_one_epoch``).

Per batch: loss -> non-finite check on every rank -> backward -> gradient
norm (clipped with ``--max-grad-norm``) -> Eden step -> optimizer step ->
averaged-model update -> periodic checkpoint / log / validation. A batch whose
loss is not finite on some rank is skipped by every rank (each rank that saw
the bad loss dumps its batch to the experiment directory, see
:mod:`icefall_spkd.train_safety`); ``--max-bad-batches`` in a row abort.

Validation and saving run inside
:func:`~icefall_spkd.checkpoint.preserve_rng_state` so that they do not shift
the training random stream (exact resume, see :mod:`icefall_spkd.training`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from icefall_spkd.checkpoint import (
    preserve_rng_state,
    remove_checkpoints,
    save_checkpoint_with_global_batch_idx,
    set_rng_state,
    update_averaged_model,
)
from icefall_spkd.distributed import all_ranks_true, gather_objects
from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.optim import Eden
from icefall_spkd.teacher import generator_state_to_str, make_kd_generator
from icefall_spkd.train_loss import _cut_ids, compute_loss
from icefall_spkd.train_safety import InfCheck, TooManyBadBatches, clip_gradients, dump_bad_batch
from icefall_spkd.utils import AttributeDict


def adjusted_batch_count(params: AttributeDict, world_size: int = 1) -> float:
    """icefall's ``get_adjusted_batch_count``: the ScheduledFloat clock of the Zipformer.

    ``batch_idx_train * max_duration * world_size / ref_duration`` -- batches of
    ``--ref-duration`` (600) seconds of audio, so the schedules (dropout, skip
    rates, balancer limits) advance with the audio seen, whatever the batch size.
    """
    ref = float(params.get("ref_duration", 600) or 600)
    return params.batch_idx_train * float(params.get("max_duration", ref) or ref) * world_size / ref


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

    See the module docstring for the steps. ``params`` needs, besides what
    :func:`compute_loss` reads, ``max_bad_batches``, ``average_period``,
    ``save_every_n``, ``keep_last_k``, ``log_interval``, ``valid_interval``,
    ``exp_dir``; optional ``max_grad_norm`` (0: measure only) and
    ``inf_check``. Updates ``params.best_train_loss`` at the end.
    ``teacher``/``kd_generator``: KD (see :func:`compute_loss`); the
    generator's state goes into every checkpoint.
    """
    model.train()
    tot_loss = MetricsTracker()
    bad_in_a_row = 0
    device = next(model.parameters()).device
    max_grad_norm = float(params.get("max_grad_norm", 0.0) or 0.0)
    inner = model.module if hasattr(model, "module") else model
    inf_check = InfCheck(inner) if params.get("inf_check", False) else None
    set_batch_count = getattr(inner, "set_batch_count", None)  # the Transducer's (a no-op for the Conformer)
    num_clipped = 0

    data_iter = iter(train_dl)
    if rng_state_to_restore is not None:
        set_rng_state(rng_state_to_restore)

    for batch_idx, batch in enumerate(data_iter):
        params.batch_idx_train += 1
        # The Zipformer's ScheduledFloat clock (icefall's get_adjusted_batch_count);
        # derived from batch_idx_train, so a resumed run gets the same values.
        if set_batch_count is not None:
            set_batch_count(adjusted_batch_count(params, world_size))
        batch_size = batch["inputs"].size(0)
        if inf_check is not None:
            inf_check.reset()

        loss, info = compute_loss(
            params, model, batch, is_training=True, teacher=teacher, kd_generator=kd_generator
        )
        locally_finite = math.isfinite(info["loss"])
        norm = float("nan")
        problem = None
        if all_ranks_true(locally_finite, device):
            scaler.scale(loss).backward()
            if inf_check is not None:
                inf_check.check_grads()
            scheduler.step_batch(params.batch_idx_train)
            norm = clip_gradients(inner, optimizer, scaler, max_grad_norm)
            if math.isfinite(norm) or scaler.is_enabled():
                # With fp16 a non-finite norm is an overflow: the scaler skips the step.
                num_clipped += int(max_grad_norm > 0 and norm > max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                tot_loss = tot_loss * (1 - 1 / params.reset_interval) + info
                bad_in_a_row = 0
            else:
                problem = f"non-finite gradient norm ({norm})"
        else:
            problem = "non-finite loss on this or another rank"
        optimizer.zero_grad(set_to_none=True)

        if problem is not None:
            bad_in_a_row += 1
            dumped = ""
            if not locally_finite or problem.startswith("non-finite gradient"):
                path = dump_bad_batch(
                    batch, params.exp_dir, params.cur_epoch, params.batch_idx_train, rank, info
                )
                dumped = f"; batch saved to {path}"
            logging.warning(
                f"Skipping batch {batch_idx} (global {params.batch_idx_train}) of epoch "
                f"{params.cur_epoch}: {problem} "
                f"(loss={info['loss']}, simple_loss={info['simple_loss']}, "
                f"pruned_loss={info['pruned_loss']}); {bad_in_a_row} in a row; "
                f"cut ids: {_cut_ids(batch)}{dumped}"
                + ("" if inf_check is not None else "; rerun with --inf-check true to find the module")
            )
            if bad_in_a_row >= params.max_bad_batches:
                raise TooManyBadBatches(
                    f"Aborting: {bad_in_a_row} consecutive batches were skipped "
                    f"(--max-bad-batches {params.max_bad_batches}), last: {problem}. Last cut ids: "
                    f"{_cut_ids(batch)}. Check the data and lower --base-lr, set --max-grad-norm, "
                    "or disable --use-fp16."
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
            clip_note = f" (clipped in {num_clipped} steps so far)" if max_grad_norm > 0 else ""
            logging.info(
                f"Epoch {params.cur_epoch}, batch {batch_idx}, "
                f"global_batch {params.batch_idx_train}, "
                f"batch_loss {info['loss']:.10e}, loss[{info}], tot_loss[{tot_loss}], "
                f"batch size: {batch_size}, lr: {cur_lr:.3e}, grad_norm: {norm:.4g}{clip_note}, "
                f"batch_count: {adjusted_batch_count(params, world_size):.6g}"
                + (f", grad_scale: {scaler.get_scale():.1f}" if scaler.is_enabled() else "")
            )
            if tb_writer is not None:
                tb_writer.add_scalar("train/learning_rate", cur_lr, params.batch_idx_train)
                if math.isfinite(norm):
                    tb_writer.add_scalar("train/grad_norm", norm, params.batch_idx_train)
                info.write_summary(tb_writer, "train/current_", params.batch_idx_train)
                tot_loss.write_summary(tb_writer, "train/tot_", params.batch_idx_train)

        if params.valid_interval > 0 and params.batch_idx_train % params.valid_interval == 0:
            validate(params, model, valid_dl, world_size, teacher, tb_writer)
            model.train()

    if inf_check is not None:
        inf_check.remove()
    if world_size > 1:
        tot_loss.reduce(device)
    loss_value = tot_loss.get_normalized("loss")
    params.train_loss = loss_value
    if math.isfinite(loss_value) and loss_value < params.best_train_loss:
        params.best_train_epoch = params.cur_epoch
        params.best_train_loss = loss_value


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



def _record_kd_generator(params: AttributeDict, kd_generator: Optional[torch.Generator]) -> None:
    """Put every rank's KD generator state into ``params`` (saved with the checkpoint).

    Only rank 0 writes checkpoints, so under DDP the states of all ranks are
    gathered (a collective: every rank calls this at the same save point) and
    stored as a list indexed by rank; each rank restores its own on resume.
    """
    if kd_generator is None:
        return
    params.kd_generator_state = gather_objects(generator_state_to_str(kd_generator))



def validate(
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
