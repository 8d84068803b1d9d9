"""Small helpers shared by the library and the recipe scripts."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch


class AttributeDict(dict):
    """A dict whose keys can also be read and written as attributes (icefall's ``params``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(f"No such attribute: {key!r}") from e

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as e:
            raise AttributeError(f"No such attribute: {key!r}") from e


def str2bool(v: Union[str, bool]) -> bool:
    """argparse type for ``--flag true|false`` (icefall's convention)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Boolean value expected, got {v!r}")


def pad_token_ids(
    token_ids: Sequence[Sequence[int]], pad_id: int = 0, device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of token-id lists into a rectangle.

    Args:
      token_ids: one list of ints per utterance (may be empty).
      pad_id: value written after each sequence's end.
      device: where the tensors are created.
    Returns:
      ``(y_padded, y_lens)``: int64 tensors of shape ``(B, U_max)`` and ``(B,)``.
      ``U_max`` is 0 when every sequence is empty.
    """
    lens = [len(s) for s in token_ids]
    u_max = max(lens, default=0)
    y = torch.full((len(token_ids), u_max), pad_id, dtype=torch.int64)
    for i, s in enumerate(token_ids):
        if s:
            y[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    y_lens = torch.tensor(lens, dtype=torch.int64)
    if device is not None:
        y, y_lens = y.to(device), y_lens.to(device)
    return y, y_lens


def setup_logger(
    log_filename: Union[str, Path], log_level: str = "info", rank: int = 0, world_size: int = 1
) -> None:
    """Log to ``<log_filename>-<date>`` (``-<date>-<rank>`` under DDP) and to stderr.

    Mirrors icefall's ``setup_logger``: one file per run in the experiment
    directory, so a resumed run keeps the earlier logs; with several
    processes every rank writes its own file and tags its lines ``(rank/world)``.
    """
    import datetime

    now = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    distributed = world_size > 1 or rank > 0
    log_filename = Path(f"{log_filename}-{now}" + (f"-{rank}" if distributed else ""))
    log_filename.parent.mkdir(parents=True, exist_ok=True)
    fmt = (
        f"%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] ({rank}/{world_size}) %(message)s"
        if distributed
        else "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    )
    level = getattr(logging, log_level.upper())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level)
    fh = logging.FileHandler(log_filename, mode="w")
    fh.setFormatter(logging.Formatter(fmt))
    root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter(fmt))
    root.addHandler(sh)


def num_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def cpu_threads(processes: int = 1) -> int:
    """Torch threads for one of ``processes`` CPU processes on this machine.

    ``OMP_NUM_THREADS`` (a positive integer) wins, so that a driver running
    several jobs side by side can give each its share; otherwise the cores
    are split evenly among the processes (at least one thread each).
    """
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def param_value(params: Any, key: str) -> Any:
    """``params[key]`` for a mapping, ``params.key`` for a namespace; None when absent.

    Model and training options arrive as dicts (icefall's ``params``, stored
    checkpoint configs) or as argparse namespaces; this reads either.
    """
    if isinstance(params, Mapping):
        return params.get(key)
    return getattr(params, key, None)
