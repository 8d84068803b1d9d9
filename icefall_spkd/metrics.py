"""Accumulate summed losses and frame counts; report them per frame.

Usage in the training loop (icefall's ``MetricsTracker`` idea)::

    info = MetricsTracker()
    info["frames"] = num_frames
    info["simple_loss"] = simple_loss.item()     # summed over the batch
    tot = tot * (1 - 1 / reset_interval) + info  # decaying running total
    logging.info(f"batch {i}: {info}, tot_loss: {tot}")

Keys named in :data:`COUNT_KEYS` are counts (not normalised); every other key
is divided by ``frames`` when printed or written to tensorboard.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

#: Keys that are counts, reported as they are.
COUNT_KEYS = ("frames", "utterances", "num_skipped")


class MetricsTracker(defaultdict):
    """A ``defaultdict(float)`` of summed quantities with per-frame reporting."""

    def __init__(self, initial: Optional[Dict[str, float]] = None) -> None:
        super().__init__(float)
        if initial:
            for k, v in initial.items():
                self[k] = float(v)

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().sum().item()
        super().__setitem__(key, float(value))

    def __add__(self, other: MetricsTracker) -> MetricsTracker:
        out = MetricsTracker(self)
        for k, v in other.items():
            out[k] = out[k] + v
        return out

    def __mul__(self, alpha: float) -> MetricsTracker:
        return MetricsTracker({k: v * alpha for k, v in self.items()})

    __rmul__ = __mul__

    def norm_items(self) -> List[Tuple[str, float]]:
        """``(name, value)`` pairs: counts as they are, everything else per frame."""
        frames = self["frames"] if "frames" in self else 0.0
        out = []
        for k, v in self.items():
            if k in COUNT_KEYS:
                out.append((k, v))
            else:
                out.append((k, v / frames if frames > 0 else float("nan")))
        return out

    def __str__(self) -> str:
        parts = []
        for k, v in self.norm_items():
            parts.append(f"{k}={v:.0f}" if k in COUNT_KEYS else f"{k}={v:.4g}")
        return "[" + ", ".join(parts) + "]"

    __repr__ = __str__

    def get_normalized(self, key: str) -> float:
        """``self[key] / self['frames']`` (nan when there are no frames)."""
        frames = self.get("frames", 0.0)
        return self.get(key, 0.0) / frames if frames > 0 else float("nan")

    def reduce(self, device: Union[str, torch.device]) -> None:
        """Sum every entry over the DDP ranks (in place); no-op without a process group.

        All ranks must hold the same keys in the same order: call only on
        trackers filled by the same code path.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        keys = sorted(self.keys())
        t = torch.tensor([self[k] for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        for k, v in zip(keys, t.tolist()):
            self[k] = v

    def write_summary(self, tb_writer: Any, prefix: str, batch_idx: int) -> None:
        """Add each normalised value as a tensorboard scalar ``<prefix><name>``."""
        for k, v in self.norm_items():
            tb_writer.add_scalar(prefix + k, v, batch_idx)
