"""ScaledAdam: icefall's optimizer for Zipformer (Yao et al., ICLR 2024, section 4).

Same constructor arguments, same updates and same ``state_dict`` layout as
icefall's ``ScaledAdam`` (``egs/librispeech/ASR/zipformer/optim.py``), so an
icefall optimizer checkpoint resumes here. Written from the paper and icefall's
documentation; checked step by step against the ``zipformer==0.1.3`` package
in ``tests/test_scaled_adam.py``.

What it does, per parameter tensor ``p`` with gradient ``g``, at step ``t``
(counted from 0), learning rate ``lr`` (set by :class:`~icefall_spkd.optim.Eden`):

1. **Adam direction without momentum**: ``v = b2 v + (1 - b2) g^2``;
   ``d = g / (sqrt(v / c) + eps)`` with ``c = 1 - b2^(t+1)`` while ``c < 0.99``
   (bias correction of early steps only), ``c = 1`` afterwards.
2. **Parameter-scale learning (relative updates)**: for tensors of more than one
   element the step is ``-lr * r * d`` where ``r`` is the tensor's RMS
   (``sqrt(mean(p^2))``, at least ``param_min_rms``), refreshed every
   ``size_update_period`` steps. So every tensor changes by about ``lr`` of its
   own size, whatever that size is.
3. **Scale (size) update**: the tensor's overall scale is learned in log space as
   if ``p = p' exp(s)``: ``dL/ds = sum(p * g)`` is stored each step, and on the last
   step of each ``size_update_period`` block (not the first block) an
   RMS-normalised step ``-lr * scalar_lr_scale * sqrt(1 - b2'^n) * sum(dL/ds) /
   (sqrt(v_s) + eps)`` is taken (``b2' = b2^period``, ``n`` = blocks so far,
   ``v_s`` the running mean of ``(dL/ds)^2``), clamped to ``[-0.1, 0.1]``, set to 0
   when ``r < param_min_rms`` and capped so that ``r`` stays below
   ``param_max_rms``; it adds ``p * step`` to the update.
4. **Scalars** (tensors of one element) get plain Adam steps with
   ``lr * scalar_lr_scale`` and are clamped to ``[-scalar_max, scalar_max]``.
5. **Momentum**: ``m = b1 m + (1 - b1) update``; ``p += m`` (no bias correction,
   so early steps are smaller).
6. **Gradient clipping** (``clipping_scale`` not None), once per parameter group
   before the updates: the group's gradient norm is measured as the update
   sees it, ``sqrt(sum_p (r_p g_p)^2 + sum_scalars (scalar_lr_scale g)^2)``, and
   recorded for the last ``clipping_update_period`` steps. The threshold is
   ``clipping_scale`` times the median of the recorded norms, re-estimated every
   ``clipping_update_period`` steps, and also at steps 10, 20 and 40 (those that
   are below the period) from the norms recorded so far, doubled there because
   the norm still moves fast. "Median" is icefall's: element ``2 * (n // 4)`` of the
   ``n`` sorted norms. Gradients whose norm exceeds the threshold are scaled down
   to it; no clipping before the first threshold exists (step 10 with the
   default period). A non-finite norm zeroes the step's gradients.

Parameters of the same dtype and shape in a group are updated together as one
stacked tensor ("batched parameter groups"); their shared state lives under the
first of them in ``optimizer.state``, as in icefall, which is why the
``state_dict`` layouts agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

#: Early steps at which the clipping threshold is (re-)estimated before a full period.
EARLY_THRESHOLD_STEPS = (10, 20, 40)

NamedParams = Iterable[Tuple[str, torch.Tensor]]


@dataclass
class _Stack:
    """Same-shaped parameters of one group, stacked along a new leading dim."""

    members: List[torch.Tensor]
    names: List[str]
    value: torch.Tensor  # (len(members), *shape); a view of the parameter when alone
    grad: torch.Tensor  # same shape
    state: Dict[str, Any]  # optimizer.state of members[0]

    @property
    def is_scalar(self) -> bool:
        return self.value.numel() == self.value.shape[0]

    def write_back(self) -> None:
        if len(self.members) > 1:
            for i, p in enumerate(self.members):
                p.copy_(self.value[i])


def _split_names(
    params: Union[Iterable[Any], Sequence[Dict[str, Any]]],
) -> Tuple[List[Dict[str, Any]], List[List[str]]]:
    """Accept parameters, named parameters, or groups of either (``"params"`` or
    ``"named_params"``); return torch param groups and the names in each group."""
    items = list(params)
    if not items:
        raise ValueError("ScaledAdam got an empty parameter list")

    def names_and_params(seq: Iterable[Any]) -> Tuple[List[str], List[torch.Tensor]]:
        names, ps = [], []
        for x in seq:
            if isinstance(x, tuple):
                names.append(x[0])
                ps.append(x[1])
            elif isinstance(x, torch.Tensor):
                names.append("")
                ps.append(x)
            else:
                raise TypeError(f"ScaledAdam: expected a tensor or (name, tensor), got {type(x)}")
        return names, ps

    if not isinstance(items[0], dict):
        names, ps = names_and_params(items)
        return [{"params": ps}], [names]
    groups, group_names = [], []
    for g in items:
        g = dict(g)
        if "named_params" in g:
            names, ps = names_and_params(g.pop("named_params"))
        elif "params" in g:
            names, ps = names_and_params(
                [g["params"]] if isinstance(g["params"], torch.Tensor) else g["params"]
            )
        else:
            raise ValueError("ScaledAdam: a parameter group needs 'params' or 'named_params'")
        g["params"] = ps
        groups.append(g)
        group_names.append(names)
    return groups, group_names


def _rms(x: torch.Tensor) -> torch.Tensor:
    """RMS over all but the stacking dim, keeping dims: shape (B, 1, ..., 1)."""
    return x.pow(2).mean(dim=list(range(1, x.ndim)), keepdim=True).sqrt()


class ScaledAdam(torch.optim.Optimizer):
    """icefall's ScaledAdam (see the module docstring for the update).

    Args:
      params: parameters, ``model.named_parameters()`` (names are used to report
        which tensor dominates a clipped gradient), or groups of either
        (``{"params": ...}`` / ``{"named_params": ...}`` with their own ``lr``).
      lr: learning rate; icefall's Zipformer recipes use 0.045 with :class:`Eden`.
      clipping_scale: clip the group's gradient norm to this times the median
        recent norm (icefall's recipes: 2.0); None disables clipping.
      betas: momentum ``b1`` and second-moment ``b2`` constants.
      scalar_lr_scale: lr factor for scalar parameters and for the scale updates.
      eps: added to the RMS denominators.
      param_min_rms / param_max_rms: limits on a tensor's RMS for the scale
        learning (below the minimum it is not shrunk further; the relative step
        uses at least the minimum).
      scalar_max: scalar parameters are clamped to ``[-scalar_max, scalar_max]``.
      size_update_period: steps between RMS refreshes / scale updates.
      clipping_update_period: steps between clipping-threshold estimates.
    """

    def __init__(
        self,
        params: Union[Iterable[Any], Sequence[Dict[str, Any]]],
        lr: float = 3e-2,
        clipping_scale: Optional[float] = None,
        betas: Tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-8,
        param_min_rms: float = 1.0e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ) -> None:
        if lr < 0:
            raise ValueError(f"ScaledAdam: lr must be >= 0, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"ScaledAdam: betas must be in [0, 1), got {betas}")
        if clipping_scale is not None and clipping_scale <= 0:
            raise ValueError(f"ScaledAdam: clipping_scale must be > 0 or None, got {clipping_scale}")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError("ScaledAdam: size_update_period and clipping_update_period must be >= 1")
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=betas,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        groups, names = _split_names(params)
        super().__init__(groups, defaults)
        #: Parameter names of each group ("" where none were given).
        self.param_names: List[List[str]] = names
        #: The gradient scale applied by clipping in the last step, per group (1.0: none).
        self.last_clipping_factors: List[float] = [1.0] * len(self.param_groups)

    # ------------------------------------------------------------------ stacking
    def _stacks(self, group: Dict[str, Any], names: List[str]) -> List[_Stack]:
        by_key: Dict[tuple, List[int]] = {}
        for i, p in enumerate(group["params"]):
            by_key.setdefault((str(p.dtype), str(p.device), *p.shape), []).append(i)
        stacks = []
        for key in sorted(by_key):
            idx = by_key[key]
            members = [group["params"][i] for i in idx]
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in members]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("ScaledAdam does not support sparse gradients")
            if len(members) == 1:  # a view: updates land in the parameter directly
                value, grad = members[0].unsqueeze(0), grads[0].unsqueeze(0)
            else:
                value, grad = torch.stack(members), torch.stack(grads)
            stacks.append(
                _Stack(members, [names[i] for i in idx], value, grad, self.state[members[0]])
            )
        return stacks

    # ------------------------------------------------------------------ clipping
    def _clipping_factor(self, group: Dict[str, Any], stacks: List[_Stack]) -> float:
        """The factor (<= 1) the group's gradients are scaled by in this step."""
        clipping_scale = group["clipping_scale"]
        first = stacks[0].state
        step = first.get("step", 0)
        if clipping_scale is None or step == 0:
            return 1.0  # step 0: no parameter RMS known yet
        scalar_lr_scale = group["scalar_lr_scale"]
        sq_terms = [
            (s.grad**2).sum() * scalar_lr_scale**2
            if s.is_scalar
            else ((s.grad * s.state["param_rms"]) ** 2).sum()
            for s in stacks
        ]
        norm = torch.stack(sq_terms).sum().sqrt()

        period = group["clipping_update_period"]
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=norm.device)
        norms = first["model_norms"]
        norms[step % period] = norm

        early = step in EARLY_THRESHOLD_STEPS and step < period
        if early or step % period == 0:
            # steps 1..step were recorded so far (step 0 never is)
            recorded = norms[1 : step + 1] if step < period else norms
            ordered = recorded.sort().values.cpu()
            n = ordered.numel()
            median = ordered[min(n - 1, 2 * (n // 4))].item()
            if median != median or median in (float("inf"), float("-inf")):
                raise RuntimeError(
                    f"ScaledAdam: the median gradient norm of the last {n} steps is not finite "
                    "(too many non-finite gradients); lower the learning rate or check the data"
                )
            threshold = clipping_scale * median * (2.0 if early else 1.0)
            share = 100.0 * first.get("num_clipped", 0) / n
            first["model_norm_threshold"] = threshold
            first["num_clipped"] = 0
            quartiles = " ".join(
                f"{ordered[min(n - 1, (n // 4) * k)].item():.3e}" for k in range(5)
            )
            logging.info(
                f"ScaledAdam step {step}: clipping_scale={clipping_scale}, grad-norm quartiles "
                f"{quartiles}, threshold={threshold:.3e}, percent-clipped={share:.1f}"
            )

        threshold = first.get("model_norm_threshold")
        if threshold is None:
            return 1.0
        factor = (threshold / (norm + 1.0e-20)).clamp(max=1.0).item()
        if factor != factor:  # NaN norm
            factor = 0.0
        if factor < 1.0:
            first["num_clipped"] += 1
        if factor < 0.5:
            logging.warning(
                f"ScaledAdam: scaling gradients by {factor:.3g} (threshold {threshold:.3e}); "
                f"largest contributions: {self._dominant(stacks, scalar_lr_scale)}"
            )
        if factor == 0.0:
            for s in stacks:
                s.grad = torch.zeros_like(s.grad)  # drop inf/nan
        return factor

    @staticmethod
    def _dominant(stacks: List[_Stack], scalar_lr_scale: float, top: int = 3) -> str:
        contrib = []
        for s in stacks:
            g = s.grad * (scalar_lr_scale if s.is_scalar else s.state["param_rms"])
            sq = g.reshape(g.shape[0], -1).pow(2).sum(dim=1)
            contrib += [(v.item(), name or f"param{i}") for i, (v, name) in enumerate(zip(sq, s.names))]
        total = sum(v for v, _ in contrib) or 1.0
        contrib.sort(reverse=True)
        return ", ".join(f"{name} {100 * v / total:.1f}%" for v, name in contrib[:top])

    # ------------------------------------------------------------------ update
    def _scale_step(self, group: Dict[str, Any], state: Dict[str, Any], step: int) -> torch.Tensor:
        """Relative change of each stacked tensor's scale, shape (B, 1, ..., 1)."""
        beta2 = group["betas"][1] ** group["size_update_period"]  # per block of steps
        grads = state["scale_grads"]  # (period, B, 1, ...): dL/d(log scale) per step
        v = state["scale_exp_avg_sq"]
        v.mul_(beta2).add_((grads**2).mean(dim=0), alpha=1 - beta2)
        blocks = (step + 1) // group["size_update_period"]
        correction = (1 - beta2**blocks) ** 0.5
        lr = group["lr"] * group["scalar_lr_scale"]
        rel = grads.sum(dim=0) / (v.sqrt() + group["eps"]) * (-lr * correction)
        rms = state["param_rms"]
        rel = rel.masked_fill(rms < group["param_min_rms"], 0.0).clamp(-0.1, 0.1)
        return torch.minimum(rel, (group["param_max_rms"] - rms) / rms)

    def _update(self, group: Dict[str, Any], s: _Stack, factor: float) -> None:
        state, p = s.state, s.value
        grad = s.grad if factor == 1.0 else s.grad * factor
        step = state.setdefault("step", 0)
        beta1, beta2 = group["betas"]
        work_dtype = torch.promote_types(p.dtype, torch.float32)
        if "exp_avg_sq" not in state:
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=work_dtype, device=p.device)
            state["delta"] = torch.zeros(p.shape, dtype=work_dtype, device=p.device)
        v = state["exp_avg_sq"]
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction = 1 - beta2 ** (step + 1)
        if correction < 0.99:
            v = v / correction
        direction = grad / (v.sqrt() + group["eps"])

        if s.is_scalar:
            update = direction * (-group["lr"] * group["scalar_lr_scale"])
        else:
            period = group["size_update_period"]
            dims = list(range(1, p.ndim))
            if "param_rms" not in state:
                rms = _rms(p).to(work_dtype)
                state["param_rms"] = rms
                state["scale_grads"] = torch.zeros(
                    (period, *rms.shape), dtype=work_dtype, device=p.device
                )
                state["scale_exp_avg_sq"] = torch.zeros_like(rms)
            state["scale_grads"][step % period] = (p * grad).sum(dim=dims, keepdim=True)
            end_of_block = step % period == period - 1
            if end_of_block:
                state["param_rms"].copy_(_rms(p))
            update = direction * (-group["lr"]) * state["param_rms"].clamp(min=group["param_min_rms"])
            if end_of_block and step > 0:
                update += p * self._scale_step(group, state, step)

        momentum = state["delta"]
        momentum.mul_(beta1).add_(update, alpha=1 - beta1)
        p.add_(momentum)
        if s.is_scalar:
            p.clamp_(-group["scalar_max"], group["scalar_max"])
        state["step"] = step + 1

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's loader, then a check that the state is ScaledAdam's (ours or icefall's)."""
        for st in state_dict.get("state", {}).values():
            if st and not {"step", "exp_avg_sq", "delta"} <= set(st):
                raise ValueError(
                    f"optimizer state with keys {sorted(st)} is not ScaledAdam's (was the "
                    "checkpoint written with another optimizer, e.g. --optimizer adamw?)"
                )
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every group (see the module docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        while len(self.param_names) < len(self.param_groups):  # groups added later
            self.param_names.append([""] * len(self.param_groups[len(self.param_names)]["params"]))
            self.last_clipping_factors.append(1.0)
        for gi, (group, names) in enumerate(zip(self.param_groups, self.param_names)):
            if not group["params"]:
                continue
            stacks = self._stacks(group, names)
            factor = self._clipping_factor(group, stacks)
            self.last_clipping_factors[gi] = factor
            for s in stacks:
                self._update(group, s, factor)
                s.write_back()
        return loss
