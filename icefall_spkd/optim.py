"""Optimizers (ScaledAdam or AdamW) and icefall's Eden learning-rate schedule.

icefall trains Zipformer with its own ``ScaledAdam`` (:mod:`icefall_spkd.scaled_adam`,
re-exported here), which scales each update by the parameter's RMS, learns
each tensor's overall scale and clips gradients against the median recent
norm; it goes with ``Eden`` at a base lr of 0.045. The project's Conformer
recipes use ``torch.optim.AdamW``, for which peak lrs of 1e-3 to 4e-3 are
typical (plain Adam steps are not relative to the parameter size).
:func:`build_optimizer` makes either.

Eden (icefall's arguments and defaults; the optimizer's initial ``lr`` of each
group is its ``base_lr``):

.. math::

   lr = base\\_lr \\cdot \\left(\\frac{b^2 + B^2}{B^2}\\right)^{-1/4}
        \\cdot \\left(\\frac{e^2 + E^2}{E^2}\\right)^{-1/4} \\cdot w(b)

with ``b`` the number of batches so far (``step_batch``), ``e`` the number of
finished epochs (``step_epoch``), ``B = lr_batches``, ``E = lr_epochs`` and
``w(b)`` the linear warm-up: ``w = start + (1 - start) * b / warmup_batches``
for ``b < warmup_batches`` and 1 afterwards (icefall's defaults: 500 batches
from 0.5; ``warmup_batches = 0`` disables it).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Union

import torch

from icefall_spkd.scaled_adam import ScaledAdam

__all__ = [
    "Eden",
    "LRScheduler",
    "OPTIMIZERS",
    "ScaledAdam",
    "build_optimizer",
    "eden_lr",
    "get_parameter_groups",
    "get_parameter_groups_with_lrs",
]

#: Values of ``build_optimizer(optimizer=...)`` / ``--optimizer``.
OPTIMIZERS = ("scaled_adam", "adamw")


def eden_lr(
    base_lr: float,
    batch: float,
    epoch: float,
    lr_batches: float,
    lr_epochs: float,
    warmup_batches: float = 0.0,
    warmup_start: float = 0.5,
) -> float:
    """icefall's Eden learning rate at (``batch``, ``epoch``); see the module docstring.

    The one definition of the formula in this project; :class:`Eden` uses it.
    Without ``warmup_batches`` there is no warm-up (as before); :class:`Eden`
    passes icefall's default of 500.
    """
    factor = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25 * (
        (epoch**2 + lr_epochs**2) / lr_epochs**2
    ) ** -0.25
    if batch < warmup_batches:
        factor *= warmup_start + (1.0 - warmup_start) * batch / warmup_batches
    return base_lr * factor


class LRScheduler:
    """Scheduler base, as icefall's: sets each param group's ``lr`` from ``get_lr()``.

    Unlike ``torch.optim.lr_scheduler`` the schedule is driven by two counters,
    ``batch`` and ``epoch``, advanced with :meth:`step_batch` / :meth:`step_epoch`.
    One difference from icefall: the learning rates are set already at
    construction (icefall sets them at the first ``step_epoch``/``step_batch``
    call, which its recipes make before the first optimizer step, so updates
    are the same).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs: List[float] = [g["base_lr"] for g in optimizer.param_groups]
        self.batch: Union[int, float] = 0
        self.epoch: Union[int, float] = 0
        self._set_lrs()

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def get_last_lr(self) -> List[float]:
        """The learning rates now set on the optimizer's param groups."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def _set_lrs(self) -> None:
        lrs = self.get_lr()
        assert len(lrs) == len(self.optimizer.param_groups)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Advance (or set) the batch counter and update the learning rates.

        icefall calls this every batch, before the optimizer step, with
        ``params.batch_idx_train`` (batches so far over all epochs).
        """
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: Optional[Union[int, float]] = None) -> None:
        """Advance (or set) the epoch counter; icefall calls it at the start of each
        epoch with the number of finished epochs (``epoch - 1`` for 1-based epochs)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def state_dict(self) -> Dict[str, Any]:
        """The counters only, as icefall's (``base_lrs`` come from the optimizer, so a
        resumed run may change ``--base-lr``)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the counters; accepts icefall's scheduler state and this
        project's older ones (which also held the settings; those are ignored)."""
        missing = {"epoch", "batch"} - set(state_dict)
        if missing:
            raise KeyError(f"scheduler state has no {sorted(missing)}: not an Eden/LRScheduler state")
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self._set_lrs()


class Eden(LRScheduler):
    """icefall's Eden schedule (see the module docstring for the formula).

    Args:
      optimizer: any torch optimizer; each group's initial ``lr`` is its ``base_lr``.
      lr_batches: ``B``; the lr has dropped by ``2**-0.25`` when ``batch == B``
        (icefall's Zipformer recipe: 7500).
      lr_epochs: ``E``; same, for the epoch factor (icefall: 3.5; 6 for older recipes).
      warmup_batches: length of the linear warm-up (icefall's default 500; 0: none).
      warmup_start: warm-up factor at batch 0 (icefall's default 0.5).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: Union[int, float],
        lr_epochs: Union[int, float],
        warmup_batches: Union[int, float] = 500.0,
        warmup_start: float = 0.5,
    ) -> None:
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"lr_batches and lr_epochs must be > 0, got {lr_batches}, {lr_epochs}")
        if warmup_batches < 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start}")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start
        super().__init__(optimizer)

    def factor(self) -> float:
        """The multiplier applied to every ``base_lr`` at the current (batch, epoch)."""
        return eden_lr(
            1.0,
            self.batch,
            self.epoch,
            self.lr_batches,
            self.lr_epochs,
            self.warmup_batches,
            self.warmup_start,
        )

    def get_lr(self) -> List[float]:
        f = self.factor()
        return [base * f for base in self.base_lrs]


def get_parameter_groups(
    model: torch.nn.Module, weight_decay: float
) -> List[Dict[str, Any]]:
    """Two AdamW groups: weight decay on matrices, none on biases/norm scales (dim < 2)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def get_parameter_groups_with_lrs(model: torch.nn.Module, lr: float) -> List[Dict[str, Any]]:
    """ScaledAdam groups as icefall's recipes build them: named parameters grouped
    by learning rate, where a parameter's lr is ``lr`` times the ``lr_scale``
    attribute of every module on its path that has one (the model itself
    included). Frozen parameters (``requires_grad=False``) are left out."""
    scales = {name: float(m.lr_scale) for name, m in model.named_modules() if hasattr(m, "lr_scale")}
    by_lr: Dict[float, List[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")[:-1]
        path_lr = lr * scales.get("", 1.0)
        for k in range(1, len(parts) + 1):
            path_lr *= scales.get(".".join(parts[:k]), 1.0)
        by_lr.setdefault(path_lr, []).append((name, p))
    return [{"named_params": named, "lr": group_lr} for group_lr, named in by_lr.items()]


def build_optimizer(
    params_or_model: Union[torch.nn.Module, Iterable[Any]],
    lr: float,
    weight_decay: float = 1e-6,
    betas: tuple = (0.9, 0.98),
    optimizer: str = "adamw",
    clipping_scale: Optional[float] = 2.0,
) -> torch.optim.Optimizer:
    """The recipe's optimizer: ``"adamw"`` (default) or ``"scaled_adam"``.

    - ``"scaled_adam"``: icefall's :class:`ScaledAdam` as its Zipformer recipe
      makes it: ``ScaledAdam(groups, lr=lr, clipping_scale=2.0)`` with the
      groups of :func:`get_parameter_groups_with_lrs` (a model) or the given
      (named) parameters, and icefall's defaults otherwise (betas (0.9, 0.98),
      ``scalar_lr_scale`` 0.1, ``param_min_rms`` 1e-5, ``param_max_rms`` 3,
      ``scalar_max`` 10, ``size_update_period`` 4, ``clipping_update_period``
      100). icefall's schedule: base lr 0.045 with ``Eden(lr_batches=7500,
      lr_epochs=3.5)`` and Eden's default 500-batch warm-up from 0.5.
      ``weight_decay`` does not apply (ScaledAdam has none; the scale learning
      and ``param_max_rms`` bound the parameter sizes).
    - ``"adamw"``: ``torch.optim.AdamW`` with weight decay on matrices only
      (:func:`get_parameter_groups`); ``clipping_scale`` does not apply. Peak lrs
      of 1e-3 to 4e-3 suit it (the Conformer recipes here use 3e-3).
    """
    if optimizer == "scaled_adam":
        if isinstance(params_or_model, torch.nn.Module):
            groups: Any = get_parameter_groups_with_lrs(params_or_model, lr)
        else:
            groups = list(params_or_model)
        return ScaledAdam(groups, lr=lr, clipping_scale=clipping_scale, betas=betas)
    if optimizer != "adamw":
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if isinstance(params_or_model, torch.nn.Module):
        groups = get_parameter_groups(params_or_model, weight_decay)
    else:
        groups = list(params_or_model)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
