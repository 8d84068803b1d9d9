"""Building blocks of the Zipformer2 encoder (Yao et al., ICLR 2024), written for this package.

Forward values (what an icefall checkpoint computes in eval mode):

* ``swoosh_l(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035`` and
  ``swoosh_r(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687``;
* :class:`BiasNorm`: ``x * exp(log_scale) / sqrt(mean_c((x - bias)^2))``;
* :class:`Balancer`, :class:`Whiten`, :func:`limit_param_value`,
  :func:`penalize_abs_values_gt`, :class:`ScaleGrad`: the identity in the forward pass.

Training-time behaviour (same rules as icefall's ``scaling.py``; the
random draws differ, so runs agree in distribution, not bit for bit):

* :class:`ScheduledFloat` is a piecewise-linear function of the training
  batch count, set on every module by :func:`set_batch_count`; in eval mode,
  or before the batch count is first set, it is its ``default``.
* :class:`Balancer` (with probability ``prob``) adds to the gradient a term
  that pushes each channel's mean/stddev ratio and RMS into a range;
  :class:`Whiten` (probability ``prob``, switching between two values) adds a
  term that lowers the "whitening metric" of the channel covariance when it
  exceeds ``whitening_limit``; both terms are scaled relative to the incoming
  gradient.
* :func:`limit_param_value` flips gradient signs of a parameter outside
  ``[min, max]`` so that the optimiser moves it back inside.
"""

from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ActivationDropoutAndLinear",
    "Balancer",
    "BiasNorm",
    "ChunkCausalDepthwiseConv1d",
    "FloatLike",
    "ScaleGrad",
    "ScheduledFloat",
    "SharedDropout",
    "SwooshL",
    "SwooshR",
    "Whiten",
    "convert_num_channels",
    "limit_param_value",
    "penalize_abs_values_gt",
    "scaled_linear",
    "set_batch_count",
    "swoosh_l",
    "swoosh_l_then_linear",
    "swoosh_r",
]


# --------------------------------------------------------------------------- #
# Scheduled values
# --------------------------------------------------------------------------- #
class ScheduledFloat(nn.Module):
    """A float that follows a piecewise-linear schedule over the batch count.

    ``ScheduledFloat((0.0, 0.3), (20000.0, 0.1), default=0.0)`` is 0.3 at batch
    0, falls linearly to 0.1 at batch 20000 and stays there. ``float(s)`` gives
    the current value: ``default`` in eval mode or while ``batch_count`` is None.
    It is an ``nn.Module`` (without parameters) only so that ``.train()`` /
    ``.eval()`` and :func:`set_batch_count` reach it through ``named_modules()``.
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0) -> None:
        super().__init__()
        if not points:
            raise ValueError("ScheduledFloat needs at least one (batch_count, value) point")
        self.points = [(float(x), float(y)) for x, y in points]
        if any(b[0] <= a[0] for a, b in zip(self.points, self.points[1:])):
            raise ValueError(f"ScheduledFloat points must have increasing x: {self.points}")
        self.default = float(default)
        self.batch_count: Optional[float] = None
        self.name: Optional[str] = None

    def value_at(self, batch_count: float) -> float:
        """The schedule's value at ``batch_count`` (constant outside the points)."""
        pts = self.points
        if batch_count <= pts[0][0]:
            return pts[0][1]
        if batch_count >= pts[-1][0]:
            return pts[-1][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= batch_count <= x1:
                return y0 + (y1 - y0) * (batch_count - x0) / (x1 - x0)
        raise AssertionError("unreachable")

    def __float__(self) -> float:
        if self.batch_count is None or not self.training:
            return self.default
        return self.value_at(self.batch_count)

    def extra_repr(self) -> str:
        return f"points={self.points}, default={self.default}, batch_count={self.batch_count}"


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Set ``batch_count`` on every module that has one (ScheduledFloat and friends).

    icefall calls this every training step with the batch index scaled to its
    reference duration (``batch_idx * max_duration * world_size / 600``). Also
    sets ``name`` (used only for diagnostics) where a module has that attribute.
    """
    model = getattr(model, "module", model)  # DDP
    for name, m in model.named_modules():
        if hasattr(m, "batch_count"):
            m.batch_count = batch_count
        if hasattr(m, "name"):
            m.name = name


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #
def _swoosh_value(x: Tensor, offset: float, const: float) -> Tensor:
    # softplus(x - offset) - 0.08 x - const, in three passes over memory.
    return F.softplus(x - offset).add_(x, alpha=-0.08).sub_(const)


class _SwooshFn(torch.autograd.Function):
    """Swoosh with a hand-written backward, ``dy/dx = sigmoid(x - offset) - 0.08``:
    about half the memory passes of autograd through softplus/mul/sub (CPU speed)."""

    @staticmethod
    def forward(ctx, x: Tensor, offset: float, const: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.offset = offset
        return _swoosh_value(x, offset, const)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x - ctx.offset).sub_(0.08).mul_(g), None, None


def _swoosh(x: Tensor, offset: float, const: float) -> Tensor:
    if x.requires_grad and torch.is_grad_enabled():
        return _SwooshFn.apply(x, offset, const)
    return _swoosh_value(x, offset, const)


def swoosh_l_then_linear(h: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor,
                         b_out: Optional[Tensor]) -> Tensor:
    """``linear(swoosh_l(linear(h, w_in, b_in)), w_out, b_out)`` in fewer passes (inference).

    The -4 shift goes into the first bias, leaving ``softplus(t) - 0.08 t -
    0.355`` (``-0.08 x - 0.035`` rewritten as ``-0.08 (x - 4) - 0.355``) on the
    hidden tensor, computed in place. Same function up to float rounding (the
    constant is not folded into the second bias: that doubled the float32
    error); for eval mode, where nothing sits between the three steps.
    """
    t = F.linear(h, w_in, b_in - 4.0)
    a = F.softplus(t).add_(t, alpha=-0.08).sub_(0.355)
    return F.linear(a, w_out, b_out)


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL: ``log(1 + e^(x-4)) - 0.08 x - 0.035``."""
    return _swoosh(x, 4.0, 0.035)


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR: ``log(1 + e^(x-1)) - 0.08 x - 0.313261687`` (zero at x = 0)."""
    return _swoosh(x, 1.0, 0.313261687)


class SwooshL(nn.Module):
    """Module form of :func:`swoosh_l`."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    """Module form of :func:`swoosh_r`."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_r(x)


_ACTIVATIONS = {"SwooshL": swoosh_l, "SwooshR": swoosh_r}


# --------------------------------------------------------------------------- #
# Gradient-only helpers (identity in the forward pass)
# --------------------------------------------------------------------------- #
class _LimitParam(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        # Below lo a positive gradient (which would lower x) is negated; above hi
        # a negative one is. Either way the optimiser moves x back into range.
        flip = ((g > 0) & (x < ctx.lo)) | ((g < 0) & (x > ctx.hi))
        return torch.where(flip, -g, g), None, None


def limit_param_value(
    x: Tensor, min: float, max: float, prob: float = 0.6, training: bool = True
) -> Tensor:
    """Identity; in training (with probability ``prob``) keeps ``x`` in ``[min, max]`` via its gradient."""
    if training and random.random() < prob:
        return _LimitParam.apply(x, min, max)
    return x


class _AbsPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, limit: float, penalty: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.limit, ctx.penalty = limit, penalty
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        extra = (x.abs() > ctx.limit).to(g.dtype) * x.sign().to(g.dtype) * ctx.penalty
        return g + extra, None, None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    """Identity whose backward adds ``penalty * sign(x)`` where ``|x| > limit``.

    That is the gradient of the auxiliary loss ``penalty * sum(relu(|x| - limit))``.
    """
    return _AbsPenalty.apply(x, limit, penalty)


class _ScaleGradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity that multiplies the gradient by ``alpha`` in training."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return _ScaleGradFn.apply(x, self.alpha)


# --------------------------------------------------------------------------- #
# Balancer
# --------------------------------------------------------------------------- #
def _abs_to_rms(a: float) -> float:
    """RMS of a Gaussian whose mean absolute value is ``a`` (``sqrt(pi/2) a``)."""
    return 1.25331413732 * a


def _positive_fraction_to_mean(p: float) -> float:
    """Approximate mean/stddev at which a Gaussian is positive a fraction ``p`` of the time.

    Uses ``erfinv(z) ~= atanh(z) / (sqrt(pi) ln 2)`` with ``z = 2p - 1``; crude
    near 0 and 1, as in icefall (which defines the constraint this way).
    """
    z = 2.0 * p - 1.0
    eps = 1.0e-10
    atanh = 0.5 * (math.log(1.0 + z + eps) - math.log(1.0 - z + eps))
    return 0.8139535143 * atanh


class _BalancerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, limits: Tuple[float, float, float, float], grad_scale: float,
                channel_dim: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.limits, ctx.grad_scale, ctx.channel_dim = limits, grad_scale, channel_dim
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms = ctx.limits
        dims = [d for d in range(x.ndim) if d != ctx.channel_dim]
        with torch.enable_grad():
            xd = x.detach().float().requires_grad_(True)
            sq = (xd**2).mean(dim=dims, keepdim=True)
            mean = xd.mean(dim=dims, keepdim=True)
            std = (sq - mean * mean).clamp(min=1.0e-20).sqrt()
            rms = sq.clamp(min=1.0e-20).sqrt()
            ratio = mean / std
            loss = (ratio - ratio.clamp(min=min_mean, max=max_mean)).abs() + (
                rms.clamp(min=min_rms, max=max_rms) / rms
            ).log().abs()
            (lg,) = torch.autograd.grad(loss.sum(), xd)
        lg_rms = (lg**2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
        gf = g.float()
        return (gf + gf.abs() * lg * (ctx.grad_scale / lg_rms)).to(g.dtype), None, None, None


class Balancer(nn.Module):
    """Identity forward; in training nudges each channel's statistics through the gradient.

    Constraints per channel (statistics over every other axis): the fraction of
    positive values in ``[min_positive, max_positive]`` (as a mean/stddev range)
    and the mean absolute value in ``[min_abs, max_abs]`` (as an RMS range).
    Applied on a random ``prob`` fraction of calls. Each argument may be a
    :class:`ScheduledFloat`.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: Optional[FloatLike] = None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale
        self.prob = prob if prob is not None else ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad) or random.random() >= float(self.prob):
            return x
        limits = (
            _positive_fraction_to_mean(float(self.min_positive)),
            _positive_fraction_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
        )
        dim = self.channel_dim % x.ndim
        return _BalancerFn.apply(x, limits, float(self.grad_scale), dim)


# --------------------------------------------------------------------------- #
# Whiten
# --------------------------------------------------------------------------- #
def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """``mean_g tr(C_g^2) / d  /  (mean_g tr(C_g) / d)^2`` of the centred per-group covariances.

    Equals 1 when every group's covariance is the same multiple of the identity
    and grows as the eigenvalues spread. ``x``: (..., channels).
    """
    x = x.reshape(-1, x.shape[-1])
    frames, channels = x.shape
    d = channels // num_groups
    x = x.reshape(frames, num_groups, d).transpose(0, 1)  # (G, frames, d)
    x = x - x.mean(dim=1, keepdim=True)
    cov = torch.matmul(x.transpose(1, 2), x)  # (G, d, d)
    mean_diag = torch.diagonal(cov, dim1=1, dim2=2).mean()
    mean_sq_diag = (cov**2).sum() / (num_groups * d)
    return mean_sq_diag / (mean_diag**2 + 1.0e-20)


class _WhitenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: Whiten) -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        w: Whiten = ctx.module
        with torch.enable_grad():
            xd = x.detach().float().requires_grad_(True)
            metric = whitening_metric(xd, w.num_groups)
            if metric < float(w.whitening_limit):
                w.prob = w.min_prob
                return g, None
            w.prob = w.max_prob
            (pg,) = torch.autograd.grad(metric, xd)
        scale = float(w.grad_scale) * g.float().norm() / (pg.norm() + 1.0e-20)
        return g + (pg * scale).to(g.dtype), None


class Whiten(nn.Module):
    """Identity forward; in training pushes the channel covariance towards white.

    Active on a random ``prob`` fraction of calls; ``prob`` becomes
    ``max_prob`` after a call whose metric exceeded ``whitening_limit`` and
    ``min_prob`` after one that did not.
    """

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: Union[float, Tuple[float, float]],
        grad_scale: FloatLike,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        self.min_prob, self.max_prob = (prob, prob) if isinstance(prob, float) else prob
        self.prob = self.max_prob
        self.name: Optional[str] = None

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad) or float(self.grad_scale) == 0:
            return x
        if random.random() > self.prob:
            return x
        return _WhitenFn.apply(x, self)


# --------------------------------------------------------------------------- #
# Layers with icefall's parameter names
# --------------------------------------------------------------------------- #
def scaled_linear(
    in_features: int, out_features: int, bias: bool = True, initial_scale: float = 1.0
) -> nn.Linear:
    """``nn.Linear`` with its default weights multiplied by ``initial_scale`` and bias
    uniform in ``+-0.1 * initial_scale`` (icefall's ``ScaledLinear`` initialisation)."""
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(initial_scale)
        if lin.bias is not None:
            nn.init.uniform_(lin.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return lin


class BiasNorm(nn.Module):
    """``x * exp(log_scale) / sqrt(mean((x - bias)^2))`` over the last axis.

    A cheaper LayerNorm replacement whose learned ``bias`` only enters the scale.
    In training ``log_scale`` is kept in ``[-1.5, 1.5]`` by :func:`limit_param_value`.
    """

    def __init__(self, num_channels: int, log_scale: float = 1.0) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0.0, std=1.0e-4))
        self.log_scale_min, self.log_scale_max = -1.5, 1.5

    def forward(self, x: Tensor) -> Tensor:
        log_scale = limit_param_value(
            self.log_scale, self.log_scale_min, self.log_scale_max, training=self.training
        )
        inv_rms = (x - self.bias).pow(2).mean(dim=-1, keepdim=True).rsqrt()
        return x * (inv_rms * log_scale.exp())


class SharedDropout(nn.Module):
    """Dropout whose mask is shared along axis ``shared_dim`` (e.g. time); ``p`` may be scheduled."""

    def __init__(self, p: FloatLike, shared_dim: int) -> None:
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = (torch.rand(shape, device=x.device) > p).to(x.dtype) * (1.0 / (1.0 - p))
        return x * mask


class ActivationDropoutAndLinear(nn.Module):
    """``linear(dropout(activation(x)))`` with parameters named ``weight`` / ``bias``.

    ``activation`` is ``"SwooshL"`` or ``"SwooshR"``; the dropout mask (rate
    ``dropout_p``, may be scheduled) is shared along ``dropout_shared_dim``
    (None: an independent mask per element).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str = "SwooshL",
        dropout_p: FloatLike = 0.0,
        dropout_shared_dim: Optional[int] = -1,
        initial_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        lin = scaled_linear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self._act(x)
        if self.training:
            p = float(self.dropout_p)
            if p != 0.0:
                shape = list(x.shape)
                if self.dropout_shared_dim is not None:
                    shape[self.dropout_shared_dim] = 1
                mask = (torch.rand(shape, device=x.device) > p).to(x.dtype) * (1.0 / (1.0 - p))
                x = x * mask
        return F.linear(x, self.weight, self.bias)


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise conv that never looks past the end of the current chunk.

    Output = a causal depthwise conv of width ``(kernel_size + 1) // 2`` over the
    past (``causal_conv``) + a centred depthwise conv of width ``kernel_size``
    run inside each chunk only (``chunkwise_conv``), scaled per channel and
    position by ``1 + chunkwise_conv_scale`` near the chunk edges.
    Input/output (N, C, T).
    """

    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0,
                 bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2, groups=channels)
        self.chunkwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias
        )
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def _chunk_scale(self, chunk_size: int) -> Tensor:
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        k = self.kernel_size
        if chunk_size < k:
            left, right = left[:, :chunk_size], right[:, k - chunk_size:]
        else:
            pad = chunk_size - k
            left, right = F.pad(left, (0, pad)), F.pad(right, (pad, 0))
        return 1.0 + left + right  # (C, chunk_size)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        n, c, t = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > t:
            chunk_size = t
        right_pad = -t % chunk_size
        xp = F.pad(x, (left_pad, right_pad))
        causal = self.causal_conv(xp[..., : left_pad + t])
        chunks = xp[..., left_pad:]
        nc = chunks.shape[-1] // chunk_size
        chunks = chunks.reshape(n, c, nc, chunk_size).transpose(1, 2).reshape(n * nc, c, chunk_size)
        chunks = self.chunkwise_conv(chunks) * self._chunk_scale(chunk_size)
        chunks = chunks.reshape(n, nc, c, chunk_size).transpose(1, 2).reshape(n, c, nc * chunk_size)
        return chunks[..., :t] + causal


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Keep the first ``num_channels`` channels of ``x`` (..., C), or zero-pad up to them."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    return F.pad(x, (0, num_channels - x.shape[-1]))


def to_int_tuple(value: Union[str, int, Sequence[int]], n: Optional[int] = None) -> Tuple[int, ...]:
    """``"2,2,3"`` / ``3`` / ``[2, 2, 3]`` -> a tuple of ints; one value is repeated to length ``n``."""
    if isinstance(value, str):
        out = tuple(int(v) for v in value.split(",") if v.strip())
    elif isinstance(value, int):
        out = (value,)
    else:
        out = tuple(int(v) for v in value)
    if n is not None and len(out) == 1:
        out = out * n
    if n is not None and len(out) != n:
        raise ValueError(f"expected 1 or {n} comma-separated values, got {value!r}")
    return out
