"""The Zipformer's convolutional front end (icefall's ``encoder_embed``).

(N, T, F) fbank at 100 Hz -> (N, (T - 7) // 2, C) at 50 Hz:

1. three 3x3 convolutions over (time, frequency), each followed by SwooshR:
   the first keeps the frequency size (padding 1 on frequency, none on time),
   the second has stride 2 on both axes, the third stride 2 on frequency;
   time: T -> T - 2 -> (T - 3) // 2 -> (T - 7) // 2;
2. a ConvNeXt block (7x7 depthwise conv, 1x1 expansion x3, SwooshL, 1x1
   projection, residual);
3. flatten (channels x frequency), a linear map to C, BiasNorm, and dropout
   shared over time.

Module names follow icefall (``conv.0``, ``conv.4``, ``conv.7``, ``convnext.*``,
``out``, ``out_norm``) so that its checkpoints load.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scaling import (
    Balancer,
    BiasNorm,
    FloatLike,
    ScaleGrad,
    ScheduledFloat,
    SharedDropout,
    SwooshL,
    SwooshR,
    Whiten,
    swoosh_l_then_linear,
    swoosh_r,
)


class ConvNeXt(nn.Module):
    """Residual ConvNeXt block on (N, C, T, F); in training skipped per utterance at ``layerdrop_rate``."""

    def __init__(self, channels: int, hidden_ratio: int = 3, kernel_size: Tuple[int, int] = (7, 7),
                 layerdrop_rate: Optional[FloatLike] = None) -> None:
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.layerdrop_rate = (
            layerdrop_rate if layerdrop_rate is not None
            else ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
        )
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size, padding=self.padding, groups=channels
        )
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, 1)
        self.hidden_balancer = Balancer(
            hidden, channel_dim=1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.activation = SwooshL()
        self.pointwise_conv2 = nn.Conv2d(hidden, channels, 1)
        with torch.no_grad():  # icefall's ScaledConv2d(initial_scale=0.01)
            self.pointwise_conv2.weight.mul_(0.01)
            nn.init.uniform_(self.pointwise_conv2.bias, -0.001, 0.001)
        self.out_balancer = Balancer(
            channels, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=1.0, max_abs=6.0
        )
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T, F) -> same shape.

        Computed channels-last: the depthwise conv on a channels_last tensor and
        the two 1x1 convolutions as matrix products over the channel axis (the
        same function; several times faster on CPU than NCHW 1x1 convolutions).
        """
        y = self.depthwise_conv(x.contiguous(memory_format=torch.channels_last))
        y = y.permute(0, 2, 3, 1)  # (N, T, F, C), contiguous
        p1, p2 = self.pointwise_conv1, self.pointwise_conv2
        if not self.training:
            return self.forward_eval_channels_last(x).permute(0, 3, 1, 2)
        y = F.linear(y, p1.weight.flatten(1), p1.bias)
        y = self.hidden_balancer(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = F.linear(self.activation(y), p2.weight.flatten(1), p2.bias)
        y = y.permute(0, 3, 1, 2)  # (N, C, T, F) view
        if self.training:
            rate = float(self.layerdrop_rate)
            if rate != 0.0:
                keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) > rate
                y = y * keep.to(y.dtype)
        x = self.out_balancer(x + y)
        if self.training and x.requires_grad:
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)
        return x


    def forward_eval_channels_last(self, x: Tensor) -> Tensor:
        """Eval-mode output as an (N, T, F, C) contiguous tensor (x: (N, C, T, F), any layout)."""
        xc = x.contiguous(memory_format=torch.channels_last)
        y = self.depthwise_conv(xc).permute(0, 2, 3, 1)
        p1, p2 = self.pointwise_conv1, self.pointwise_conv2
        y = swoosh_l_then_linear(y, p1.weight.flatten(1), p1.bias, p2.weight.flatten(1), p2.bias)
        return y.add_(xc.permute(0, 2, 3, 1))



class Conv2dSubsampling(nn.Module):
    """icefall's ``encoder_embed``: (N, T, F) -> (N, (T - 7) // 2, out_channels).

    Args:
      in_channels: feature dimension F (>= 7).
      out_channels: C, the first encoder stack's dimension.
      layer1_channels, layer2_channels, layer3_channels: conv widths (icefall: 8, 32, 128).
      dropout: output dropout rate (shared over time); may be scheduled.
    """

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8,
                 layer2_channels: int = 32, layer3_channels: int = 128,
                 dropout: FloatLike = 0.1) -> None:
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling needs at least 7 feature bins, got {in_channels}")
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, 3, padding=(0, 1)),
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, 3, stride=2),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, 3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels)
        self.out_width = ((in_channels - 1) // 2 - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(
            num_groups=1,
            whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25),
            grad_scale=0.02,
        )
        self.out_norm = BiasNorm(out_channels)
        self.dropout = SharedDropout(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """x (N, T, F), x_lens (N,) -> (N, (T - 7) // 2, C), (x_lens - 7) // 2."""
        if x.shape[1] < 7:
            raise ValueError(f"input has {x.shape[1]} frames; the Zipformer front end needs >= 7 (about 9 for one output frame)")
        if not self.training:
            return self._forward_eval(x), torch.div(x_lens - 7, 2, rounding_mode="floor")
        x = self.convnext(self.conv(x.unsqueeze(1)))  # (N, C3, T', F')
        n, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(n, t, c * f))
        x = self.dropout(self.out_norm(self.out_whiten(x)))
        return x, torch.div(x_lens - 7, 2, rounding_mode="floor")

    def _forward_eval(self, x: Tensor) -> Tensor:
        """The eval-mode function of :meth:`forward` in fewer passes over memory (CPU speed).

        The activations are computed without autograd bookkeeping, the
        ConvNeXt block runs channels-last and the output projection reads
        (T, F, C)-ordered features through a column-permuted weight. Same
        function up to float rounding. (Moving SwooshR's -1 shift into the conv
        biases was tried: it made the float32 error about twice the reference's.)
        """
        c0, c1, c2 = self.conv[0], self.conv[4], self.conv[7]
        a = swoosh_r(F.conv2d(x.unsqueeze(1), c0.weight, c0.bias, padding=(0, 1)))
        a = swoosh_r(F.conv2d(a, c1.weight, c1.bias, stride=2))
        a = swoosh_r(F.conv2d(a, c2.weight, c2.bias, stride=(1, 2)))  # (N, C3, T', F')
        y = self.convnext.forward_eval_channels_last(a)  # (N, T', F', C3)
        n, t2, f, c = y.shape
        w = self.out.weight.view(-1, c, f).transpose(1, 2).reshape(-1, f * c)
        return self.out_norm(F.linear(y.reshape(n, t2, f * c), w, self.out.bias))
