"""Checkpoints: atomic save/load, keep-last-k, and the two kinds of weight averaging.

Files written by the recipe (``exp_dir`` is ``--exp-dir``):

- ``epoch-N.pt``: state at the end of epoch ``N``.
- ``checkpoint-<batch>.pt``: state after global batch ``<batch>`` (``--save-every-n``).

Each file is a dict with the keys ``model`` (state_dict), ``model_avg`` (the
running-average weights, rank 0 only, may be ``None``), ``optimizer``,
``scheduler``, ``sampler``, ``grad_scaler``, ``rng`` (see :func:`get_rng_state`)
and every entry of ``params`` that is a plain value (``batch_idx_train``,
``best_train_loss``, ``best_valid_loss``, ...), so a run can be resumed exactly.

Averaging:

- :func:`average_checkpoints` takes the plain mean of the ``model`` entries of a
  list of files (icefall's ``--avg`` without ``--use-averaged-model``).
- The *running-average model* ``model_avg`` is updated every ``--average-period``
  batches so that it always equals the mean of the model weights taken every
  ``average_period`` batches since batch 0 (see :func:`update_averaged_model`).
  :func:`average_checkpoints_with_averaged_model` then recovers the mean over an
  interval ``(start, end]`` from two such running means:
  ``avg_(start,end] = (avg_end * n_end - avg_start * n_start) / (n_end - n_start)``,
  where ``n`` is the number of batches behind each running mean.

All saves are atomic: the data goes to a temporary file in the same directory,
which is flushed, fsync'ed and then renamed over the destination with
:func:`os.replace`, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn

PathLike = Union[str, Path]

_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """Raised when a checkpoint file cannot be read or does not match the model."""


# --------------------------------------------------------------------------- #
# Atomic I/O
# --------------------------------------------------------------------------- #
def atomic_torch_save(obj: Any, filename: PathLike) -> None:
    """``torch.save(obj, filename)`` that never leaves a partial ``filename``.

    The object is written to a temporary file next to ``filename`` (same
    filesystem, so the final rename is atomic), flushed and fsync'ed, then moved
    into place with :func:`os.replace`. The directory is fsync'ed too where the
    platform allows it. On any error the temporary file is removed and the
    previous ``filename`` (if any) is untouched.
    """
    filename = Path(filename)
    filename.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{filename.name}.", suffix=".tmp", dir=filename.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not supported on every OS / filesystem
        dir_fd = os.open(filename.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _torch_load(filename: PathLike) -> Dict[str, Any]:
    """Load a checkpoint dict on CPU with a clear error naming the file."""
    filename = Path(filename)
    if not filename.is_file():
        raise CheckpointError(f"Checkpoint file not found: {filename}")
    try:
        # weights_only=False: the file also holds params (plain Python values),
        # RNG states and the sampler state; only load checkpoints you trust.
        obj = torch.load(filename, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt or truncated file
        raise CheckpointError(f"Could not read checkpoint {filename}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{filename} does not hold a checkpoint dict (got {type(obj)})")
    return obj


# --------------------------------------------------------------------------- #
# RNG state
# --------------------------------------------------------------------------- #
def get_rng_state() -> Dict[str, Any]:
    """States of Python's, NumPy's and torch's (CPU and CUDA) random generators."""
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logging.warning(
                "Not restoring CUDA RNG state: saved for %d devices, %d visible",
                len(cuda_states),
                torch.cuda.device_count(),
            )


@contextlib.contextmanager
def preserve_rng_state() -> Iterator[None]:
    """Run a block (validation, checkpointing) without disturbing the random generators.

    Validation creates a DataLoader iterator (which draws a seed) and may use
    random augmentation; wrapping it keeps the training run's random stream
    independent of when validation happens, which exact resume relies on.
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# --------------------------------------------------------------------------- #
# Save / load
# --------------------------------------------------------------------------- #
def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def _plain_params(params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Entries of params that can be pickled safely and reloaded as values."""
    out: Dict[str, Any] = {}
    if params is None:
        return out
    for k, v in params.items():
        if isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, Path):
            out[k] = str(v)
        elif isinstance(v, (list, tuple)) and all(
            isinstance(x, (int, float, str, bool)) for x in v
        ):
            out[k] = list(v)
    return out


def save_checkpoint(
    filename: PathLike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    params: Optional[Dict[str, Any]] = None,
    rank: int = 0,
) -> None:
    """Save the full training state to ``filename`` atomically (rank 0 only).

    Args:
      filename: destination, e.g. ``exp_dir/epoch-3.pt``.
      model: the model (DDP-wrapped or not); its unwrapped state_dict is saved.
      model_avg: the running-average model, or None.
      optimizer, scheduler, sampler, scaler: anything with ``state_dict()``, or None.
      params: the run's params; plain values (ints, floats, strings, ...) are
        stored at the top level of the checkpoint.
      rank: the DDP rank; every rank other than 0 returns without writing.
    """
    if rank != 0:
        return
    logging.info(f"Saving checkpoint to {filename}")
    checkpoint: Dict[str, Any] = {
        "model": _unwrap(model).state_dict(),
        "model_avg": _unwrap(model_avg).state_dict() if model_avg is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
        # Everything build_model needs (encoder type and every model flag), so
        # decode/export/pretrained and teacher loading need no model flags.
        "model_params": dict(getattr(_unwrap(model), "model_config", None) or {}) or None,
    }
    for k, v in _plain_params(params).items():
        if k not in checkpoint:
            checkpoint[k] = v
    atomic_torch_save(checkpoint, filename)


def save_checkpoint_with_global_batch_idx(
    out_dir: PathLike, global_batch_idx: int, model: nn.Module, **state: Any
) -> Path:
    """Save to ``out_dir/checkpoint-<global_batch_idx>.pt``; returns that path.

    ``state``: the keyword arguments of :func:`save_checkpoint` (``model_avg``,
    ``optimizer``, ``scheduler``, ``sampler``, ``scaler``, ``params``, ``rank``).
    """
    filename = Path(out_dir) / f"checkpoint-{global_batch_idx}.pt"
    save_checkpoint(filename, model, **state)
    return filename


def load_state_dict_strict(
    module: nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool, what: str
) -> None:
    """``module.load_state_dict`` with an error that names the file/what and the keys.

    Tolerates a ``module.`` prefix left by DDP.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    own = set(module.state_dict().keys())
    given = set(state_dict.keys())
    missing = sorted(own - given)
    unexpected = sorted(given - own)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"State dict in {what} does not match the model.\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            "Check that the model options (e.g. --model-preset) match the ones used for training."
        )
    try:
        module.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:  # e.g. shape mismatch
        raise CheckpointError(f"Could not load {what} into the model: {e}") from e
    if missing or unexpected:
        logging.warning(f"Non-strict load of {what}: missing={missing}, unexpected={unexpected}")


def load_checkpoint(
    filename: PathLike,
    model: Optional[nn.Module] = None,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    strict: bool = True,
) -> Dict[str, Any]:
    """Load ``filename`` into whichever of the objects are given.

    Args:
      filename: a file written by :func:`save_checkpoint`, or any dict with a
        ``model`` entry (e.g. ``pretrained.pt``).
      model, model_avg, optimizer, scheduler, scaler: targets, each optional.
      strict: require the model's keys to match exactly; the error names the
        missing and unexpected keys and the file.
    Returns:
      The checkpoint dict with the loaded entries removed (what is left holds
      ``sampler``, ``rng`` and the saved params such as ``batch_idx_train``).
    """
    logging.info(f"Loading checkpoint from {filename}")
    checkpoint = _torch_load(filename)
    if model is not None:
        if "model" not in checkpoint:
            raise CheckpointError(f"{filename} has no 'model' entry (keys: {sorted(checkpoint)})")
        load_state_dict_strict(_unwrap(model), checkpoint.pop("model"), strict, f"{filename}['model']")
    if model_avg is not None:
        sd = checkpoint.pop("model_avg", None)
        if sd is None:
            raise CheckpointError(f"{filename} has no 'model_avg' entry")
        load_state_dict_strict(_unwrap(model_avg), sd, strict, f"{filename}['model_avg']")
    for name, obj, key in (
        ("optimizer", optimizer, "optimizer"),
        ("scheduler", scheduler, "scheduler"),
        ("grad scaler", scaler, "grad_scaler"),
    ):
        if obj is None:
            continue
        sd = checkpoint.pop(key, None)
        if sd is None:
            raise CheckpointError(f"{filename} has no '{key}' entry for the {name}")
        try:
            obj.load_state_dict(sd)
        except Exception as e:
            raise CheckpointError(f"Could not load the {name} state from {filename}: {e}") from e
    return checkpoint


# --------------------------------------------------------------------------- #
# Finding / removing checkpoint-<batch>.pt
# --------------------------------------------------------------------------- #
def find_checkpoints(out_dir: PathLike, iteration: int = 0) -> List[str]:
    """``checkpoint-<batch>.pt`` files in ``out_dir``, newest (largest batch) first.

    Args:
      iteration: 0 returns them all; ``> 0`` only those with batch ``>= iteration``;
        ``< 0`` only those with batch ``<= -iteration`` (used by ``--iter``).
    """
    found = []
    out = Path(out_dir)
    if not out.is_dir():
        return []
    for p in out.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), str(p)))
    found.sort(reverse=True)
    if iteration > 0:
        found = [x for x in found if x[0] >= iteration]
    elif iteration < 0:
        found = [x for x in found if x[0] <= -iteration]
    return [f for _, f in found]


def remove_checkpoints(out_dir: PathLike, topk: int, rank: int = 0) -> List[str]:
    """Keep the ``topk`` newest ``checkpoint-<batch>.pt`` files, delete the rest.

    ``epoch-N.pt`` files are never touched. ``topk <= 0`` keeps everything.
    Returns the removed paths.
    """
    if rank != 0 or topk <= 0:
        return []
    removed = find_checkpoints(out_dir)[topk:]
    for f in removed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)
    return removed


# --------------------------------------------------------------------------- #
# Averaging
# --------------------------------------------------------------------------- #
def _is_averageable(v: torch.Tensor) -> bool:
    return torch.is_floating_point(v)


def average_state_dicts(state_dicts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of floating-point entries (accumulated in float64).

    Integer entries (e.g. BatchNorm's ``num_batches_tracked``) are taken from the
    first state dict. Output dtypes match the first state dict.
    """
    if not state_dicts:
        raise ValueError("average_state_dicts: nothing to average")
    first = state_dicts[0]
    keys = list(first.keys())
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd.keys()) != set(keys):
            diff = sorted(set(sd.keys()) ^ set(keys))
            raise CheckpointError(f"State dict #{i} has different keys from #0: {diff[:10]}")
    n = len(state_dicts)
    out: Dict[str, torch.Tensor] = {}
    for k in keys:
        v0 = first[k]
        if not _is_averageable(v0):
            out[k] = v0.clone()
            continue
        acc = v0.to(torch.float64).clone()
        for sd in state_dicts[1:]:
            acc += sd[k].to(torch.float64)
        out[k] = (acc / n).to(v0.dtype)
    return out


def average_checkpoints(
    filenames: List[PathLike], device: Union[str, torch.device] = "cpu", key: str = "model"
) -> Dict[str, torch.Tensor]:
    """Plain mean of the ``key`` state dicts of ``filenames``.

    Loads one file at a time, so memory stays at two state dicts.
    """
    if not filenames:
        raise ValueError("average_checkpoints: no files given")
    acc: Optional[Dict[str, torch.Tensor]] = None
    dtypes: Dict[str, torch.dtype] = {}
    for f in filenames:
        ckpt = _torch_load(f)
        if key not in ckpt or ckpt[key] is None:
            raise CheckpointError(f"{f} has no '{key}' entry")
        sd = ckpt[key]
        if acc is None:
            acc = {}
            for k, v in sd.items():
                dtypes[k] = v.dtype
                acc[k] = v.to(torch.float64).clone() if _is_averageable(v) else v.clone()
            continue
        if set(sd.keys()) != set(acc.keys()):
            diff = sorted(set(sd.keys()) ^ set(acc.keys()))
            raise CheckpointError(f"{f}['{key}'] has different keys from {filenames[0]}: {diff[:10]}")
        for k, v in sd.items():
            if _is_averageable(acc[k]) and dtypes[k].is_floating_point:
                acc[k] += v.to(torch.float64)
    assert acc is not None
    n = len(filenames)
    return {
        k: ((v / n).to(dtypes[k]) if dtypes[k].is_floating_point else v).to(device)
        for k, v in acc.items()
    }


@torch.no_grad()
def update_averaged_model(
    model_cur: nn.Module, model_avg: nn.Module, batch_idx_train: int, average_period: int
) -> None:
    """Fold the current weights into the running mean ``model_avg``.

    Called when ``batch_idx_train`` is a positive multiple of ``average_period``.
    With ``model_avg`` initialised to the weights at batch 0, after the update
    at batch ``n = k * average_period`` it holds the mean of the weights sampled
    at batches ``average_period, 2*average_period, ..., n`` (one weight per
    ``average_period`` batches, so it is the mean of the weights over batches
    ``(0, n]`` in steps of the period): the update is
    ``avg <- avg * (1 - p/n) + cur * (p/n)`` with ``p = average_period``.
    Floating-point buffers are averaged too; integer buffers are copied.
    """
    if batch_idx_train <= 0 or batch_idx_train % average_period != 0:
        raise ValueError(
            f"update_averaged_model: batch_idx_train={batch_idx_train} is not a positive "
            f"multiple of average_period={average_period}"
        )
    weight_cur = average_period / batch_idx_train
    weight_avg = 1.0 - weight_cur
    cur = _unwrap(model_cur).state_dict()
    avg = _unwrap(model_avg).state_dict()
    for k, v_avg in avg.items():
        v_cur = cur[k].to(device=v_avg.device)
        if torch.is_floating_point(v_avg):
            v_avg.mul_(weight_avg).add_(v_cur.to(v_avg.dtype), alpha=weight_cur)
        else:
            v_avg.copy_(v_cur)


def average_checkpoints_with_averaged_model(
    filename_start: PathLike,
    filename_end: PathLike,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, torch.Tensor]:
    """Mean of the model weights over batches ``(n_start, n_end]`` from two running means.

    Each file holds ``model_avg``, the running mean of the weights since batch 0
    over its ``batch_idx_train`` batches (rounded down to a multiple of the
    ``average_period`` stored in the file, since the mean is only updated then).
    Then ``sum_(0,n] = avg_n * n``, so
    ``avg_(start,end] = (avg_end * n_end - avg_start * n_start) / (n_end - n_start)``.
    The returned dict has the dtypes of the end file's ``model`` entry.
    """
    ck_start = _torch_load(filename_start)
    ck_end = _torch_load(filename_end)
    for f, ck in ((filename_start, ck_start), (filename_end, ck_end)):
        if ck.get("model_avg") is None:
            raise CheckpointError(
                f"{f} has no 'model_avg' entry; it was not written by a run that keeps the "
                "running-average model. Use --use-averaged-model false."
            )
        if "batch_idx_train" not in ck:
            raise CheckpointError(f"{f} has no 'batch_idx_train' entry")
    period = int(ck_end.get("average_period", 1) or 1)
    n_start = (int(ck_start["batch_idx_train"]) // period) * period
    n_end = (int(ck_end["batch_idx_train"]) // period) * period
    if n_end <= n_start:
        raise CheckpointError(
            f"Cannot average over batches ({n_start}, {n_end}]: {filename_end} must be later "
            f"than {filename_start}"
        )
    w_end = n_end / (n_end - n_start)
    w_start = -n_start / (n_end - n_start)
    avg_start, avg_end = ck_start["model_avg"], ck_end["model_avg"]
    ref = ck_end.get("model") or avg_end
    out: Dict[str, torch.Tensor] = {}
    for k, v_end in avg_end.items():
        if k not in avg_start:
            raise CheckpointError(f"Key {k!r} of {filename_end} is missing from {filename_start}")
        dtype = ref[k].dtype if k in ref else v_end.dtype
        if torch.is_floating_point(v_end):
            v = v_end.to(torch.float64) * w_end + avg_start[k].to(torch.float64) * w_start
            out[k] = v.to(dtype).to(device)
        else:
            out[k] = v_end.clone().to(device)
    return out
