"""Training safety: gradient clipping, icefall's ``--inf-check`` and bad-batch dumps.

* :func:`clip_gradients` (``--max-grad-norm``): the total 2-norm of all
  gradients (after un-scaling fp16 gradients) is measured every step and
  logged; when ``max_norm > 0`` and it is larger, every gradient is scaled by
  ``max_norm / norm`` so the update AdamW sees has norm ``max_norm``.
* :class:`InfCheck` (``--inf-check true``): forward hooks on every module; in
  each forward pass the first module (in execution order, so the innermost
  one) whose output holds a non-finite value is logged by its qualified name,
  e.g. ``encoder.layers.0.feed_forward.0 (Linear)``, and kept in
  ``InfCheck.first``. Parameters whose gradient is non-finite after backward
  are named by :meth:`InfCheck.check_grads`. icefall's recipes have the same
  flag (it logs every such module); naming the first one is what points at
  the cause, since every module after it inherits the non-finite values.
* :func:`dump_bad_batch`: a batch whose loss is not finite is skipped and
  saved to ``<exp-dir>/batch-<epoch>-<global batch>[-rank-<r>].pt`` with its
  cut ids, features, feature lengths and texts, so it can be inspected or
  replayed (icefall saves such batches to the experiment directory too).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn as nn


class TooManyBadBatches(RuntimeError):
    """Raised after ``--max-bad-batches`` consecutive non-finite losses."""


def grad_norm(parameters: Iterable[torch.Tensor]) -> float:
    """Total 2-norm of the gradients of ``parameters`` (those without one are skipped)."""
    norms = [p.grad.detach().float().norm(2) for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.stack(norms).norm(2).item())


def clip_gradients(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    max_norm: float,
) -> float:
    """Un-scale the gradients, clip their total norm to ``max_norm`` (> 0), return the norm before.

    With ``max_norm <= 0`` nothing is clipped and the norm is only measured.
    Must be called between ``backward()`` and ``scaler.step(optimizer)``; it
    un-scales through the scaler (once per step), as torch's AMP recipe says.
    """
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0)
        return float(total.item())
    return grad_norm(params)


def _first_non_finite(output: Any) -> Optional[torch.Tensor]:
    """The first floating tensor in ``output`` (tensor, tuple, list, dict, dataclass) that is not finite."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() and not bool(torch.isfinite(output).all()):
            return output
        return None
    if isinstance(output, dict):
        items: Iterable[Any] = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    elif hasattr(output, "__dataclass_fields__"):
        items = (getattr(output, f) for f in output.__dataclass_fields__)
    else:
        return None
    for item in items:
        bad = _first_non_finite(item)
        if bad is not None:
            return bad
    return None


class InfCheck:
    """Forward hooks that name the first module with a non-finite output.

    Usage::

        check = InfCheck(model)      # registers the hooks
        check.reset()                # before each forward pass
        loss = ...; loss.backward()
        check.first                  # "encoder.layers.0.norm (LayerNorm)" or None
        check.check_grads()          # names of parameters with non-finite gradients
        check.remove()
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.first: Optional[str] = None
        self._handles = []
        for name, module in model.named_modules():
            label = f"{name or '<model>'} ({type(module).__name__})"
            self._handles.append(module.register_forward_hook(self._hook(label)))

    def _hook(self, label: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.first is not None:
                return
            bad = _first_non_finite(output)
            if bad is not None:
                self.first = label
                kinds = []
                if bool(torch.isnan(bad).any()):
                    kinds.append("nan")
                if bool(torch.isinf(bad).any()):
                    kinds.append("inf")
                logging.warning(
                    f"inf-check: first module with a non-finite output: {label}, "
                    f"output shape {tuple(bad.shape)} holds {'/'.join(kinds)}"
                )

        return hook

    def reset(self) -> None:
        """Forget the module found in the previous forward pass."""
        self.first = None

    def check_grads(self) -> List[str]:
        """Names of parameters whose gradient holds a non-finite value (logged)."""
        bad = [
            n
            for n, p in self.model.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        if bad:
            logging.warning(f"inf-check: non-finite gradients in {len(bad)} parameter(s): {bad[:10]}")
        return bad

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []


def dump_bad_batch(
    batch: Dict[str, Any],
    exp_dir: Path,
    epoch: int,
    batch_idx_train: int,
    rank: int = 0,
    info: Optional[Dict[str, float]] = None,
) -> Path:
    """Save a skipped batch (cut ids, features, lengths, texts, losses) to ``exp_dir``; returns the path.

    The file holds ``cut_ids`` (list[str], in supervision order), ``inputs``
    (the ``(N, T, F)`` features as the model saw them), ``supervisions``
    (``text``, ``sequence_idx``, ``start_frame``, ``num_frames``, without the
    cut objects), ``losses`` (the batch's logged values), ``epoch`` and
    ``batch_idx_train``.
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    name = f"batch-{epoch}-{batch_idx_train}" + (f"-rank-{rank}" if rank > 0 else "") + ".pt"
    sup = batch.get("supervisions", {})
    cuts = sup.get("cut") or []
    record = {
        "cut_ids": [getattr(c, "id", str(c)) for c in cuts],
        "inputs": batch["inputs"].detach().cpu(),
        "supervisions": {k: v for k, v in sup.items() if k != "cut"},
        "losses": {k: float(v) for k, v in (info or {}).items()},
        "epoch": epoch,
        "batch_idx_train": batch_idx_train,
        "rank": rank,
    }
    path = exp_dir / name
    torch.save(record, path)
    return path
