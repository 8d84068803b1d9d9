"""Optimizer construction and icefall's Eden learning-rate schedule.

Choice of optimizer: icefall trains with its own ``ScaledAdam``, which scales
each update by the parameter's RMS and goes with ``Eden``. This project uses
``torch.optim.AdamW`` instead (standard, well understood, and good enough for
the tiny/small models trained here); Eden is implemented as a schedule that
works with any ``torch.optim.Optimizer``. Because plain Adam updates are not
scaled by the parameter size, the recipe's ``--base-lr`` default is smaller
than icefall's (ScaledAdam uses 0.045-0.05; for AdamW 1e-3 to 4e-3 is typical).

Eden:

.. math::

   lr = base\\_lr \\cdot \\left(\\frac{b^2 + B^2}{B^2}\\right)^{-1/4}
        \\cdot \\left(\\frac{e^2 + E^2}{E^2}\\right)^{-1/4} \\cdot w(b)

with ``b`` the number of batches so far (``step_batch``), ``e`` the number of
finished epochs (``step_epoch``), ``B = lr_batches``, ``E = lr_epochs`` and
``w(b)`` an optional linear warm-up: ``w = start + (1 - start) * b / warmup_batches``
for ``b < warmup_batches`` and 1 afterwards (``warmup_batches = 0`` disables it).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Union

import torch


class LRScheduler:
    """Minimal scheduler base: sets each param group's ``lr`` from ``get_lr()``.

    Unlike ``torch.optim.lr_scheduler`` the schedule is driven by two counters,
    ``batch`` and ``epoch``, advanced with :meth:`step_batch` / :meth:`step_epoch`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs: List[float] = [g["base_lr"] for g in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0
        self._set_lrs()

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def get_last_lr(self) -> List[float]:
        """The learning rates now set on the optimizer's param groups."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def _set_lrs(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Advance (or set) the batch counter and update the learning rates.

        icefall calls this after every optimizer step, usually with
        ``params.batch_idx_train``.
        """
        self.batch = self.batch + 1 if batch is None else int(batch)
        self._set_lrs()

    def step_epoch(self, epoch: Optional[Union[int, float]] = None) -> None:
        """Advance (or set) the epoch counter; call at the start of each epoch with
        the number of finished epochs (``epoch - 1`` for 1-based epochs)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def state_dict(self) -> Dict[str, Any]:
        """Everything except the optimizer."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_lrs()


class Eden(LRScheduler):
    """icefall's Eden schedule (see the module docstring for the formula).

    Args:
      optimizer: any torch optimizer; each group's initial ``lr`` is its ``base_lr``.
      lr_batches: ``B``; the lr has dropped by ``2**-0.25`` when ``batch == B``.
      lr_epochs: ``E``; same, for the epoch factor.
      warmup_batches: length of the optional linear warm-up (0: none).
      warmup_start: warm-up factor at batch 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: Union[int, float],
        lr_epochs: Union[int, float],
        warmup_batches: Union[int, float] = 0,
        warmup_start: float = 0.5,
    ) -> None:
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"lr_batches and lr_epochs must be > 0, got {lr_batches}, {lr_epochs}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start}")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start
        super().__init__(optimizer)

    def factor(self) -> float:
        """The multiplier applied to every ``base_lr`` at the current (batch, epoch)."""
        b, e = float(self.batch), float(self.epoch)
        B, E = float(self.lr_batches), float(self.lr_epochs)
        f = ((b * b + B * B) / (B * B)) ** -0.25 * ((e * e + E * E) / (E * E)) ** -0.25
        if self.warmup_batches and b < self.warmup_batches:
            f *= self.warmup_start + (1.0 - self.warmup_start) * b / self.warmup_batches
        return f

    def get_lr(self) -> List[float]:
        f = self.factor()
        return [base * f for base in self.base_lrs]


def eden_lr(
    base_lr: float,
    batch: float,
    epoch: float,
    lr_batches: float,
    lr_epochs: float,
) -> float:
    """The Eden formula without warm-up, as a plain function (used by tests and docs)."""
    return (
        base_lr
        * ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
        * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    )


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


def build_optimizer(
    params_or_model: Union[torch.nn.Module, Iterable[torch.nn.Parameter]],
    lr: float,
    weight_decay: float = 1e-6,
    betas: tuple = (0.9, 0.98),
) -> torch.optim.AdamW:
    """AdamW with the recipe's defaults (see the module docstring for why not ScaledAdam)."""
    if isinstance(params_or_model, torch.nn.Module):
        groups: Any = get_parameter_groups(params_or_model, weight_decay)
    else:
        groups = list(params_or_model)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
