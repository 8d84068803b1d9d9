"""Sub-modules of a Zipformer2 layer, batch-first: every sequence tensor is (N, T, C).

* :class:`CompactRelPositionalEncoding` -- relative-position vectors for offsets
  ``-(T-1) .. T-1``: a log-compressed, atan-squashed offset fed to cosines and
  sines (the last dimension is a constant 1).
* :class:`RelPositionMultiheadAttentionWeights` -- attention weights
  ``softmax(q.k + p.pos(j - i))`` computed once per layer and shared by the
  :class:`SelfAttention` modules and the :class:`NonlinAttention` (head 0).
* :class:`FeedforwardModule`, :class:`ConvolutionModule`, :class:`BypassModule`,
  :class:`SimpleDownsample` / :class:`SimpleUpsample`.

Attention weights here are (N, heads, T_query, T_key). Parameter names are icefall's.
"""

from __future__ import annotations

import math
import random
from typing import Optional

import torch
from torch import Tensor, nn

from .scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    ChunkCausalDepthwiseConv1d,
    FloatLike,
    ScheduledFloat,
    Whiten,
    limit_param_value,
    penalize_abs_values_gt,
    scaled_linear,
    swoosh_l_then_linear,
)

MASK_SCORE = -1000.0  # masked attention score; exp() of it is exactly 0 in float32


def whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    """Whitening limit ``x`` at batch 0 rising to ``ratio * x`` at batch 20000."""
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


def _whiten(limit: FloatLike, num_groups: int = 1, grad_scale: float = 0.01) -> Whiten:
    return Whiten(num_groups=num_groups, whitening_limit=limit, prob=(0.025, 0.25), grad_scale=grad_scale)


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encoding; ``forward(T)`` -> (1, 2T - 1, embed_dim), row ``r`` for offset ``r - (T - 1)``.

    For offset ``x``: ``c = sqrt(D) * sign(x) * log(1 + |x| / sqrt(D))`` (slope 1
    at 0, logarithmic far away), ``a = atan(c / (length_factor * D / 2pi))``,
    then ``[cos(k a), sin(k a)]`` for ``k = 1 .. D/2`` interleaved, last dim 1.
    In training the result goes through dropout at ``dropout_rate``.
    """

    def __init__(self, embed_dim: int, dropout_rate: float, length_factor: float = 1.0) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"pos_dim must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = nn.Dropout(dropout_rate)
        self._table: Optional[Tensor] = None  # rows for offsets -(L-1) .. L-1

    def _build(self, length: int, device: torch.device) -> Tensor:
        x = torch.arange(-(length - 1), length, device=device, dtype=torch.float32).unsqueeze(1)
        freqs = torch.arange(1, self.embed_dim // 2 + 1, device=device, dtype=torch.float32)
        comp = self.embed_dim**0.5
        xc = comp * x.sign() * ((x.abs() + comp).log() - math.log(comp))
        angle = (xc / (self.length_factor * self.embed_dim / (2.0 * math.pi))).atan()
        pe = torch.stack(((angle * freqs).cos(), (angle * freqs).sin()), dim=-1)
        pe = pe.reshape(x.shape[0], self.embed_dim).clone()
        pe[:, -1] = 1.0
        return pe

    def forward(self, seq_len: int, like: Tensor) -> Tensor:
        t = self._table
        if t is None or t.shape[0] < 2 * seq_len - 1 or t.device != like.device:
            t = self._build(max(seq_len, 1000), like.device)
            self._table = t
        mid = t.shape[0] // 2
        pe = t[mid - seq_len + 1: mid + seq_len].to(like.dtype).unsqueeze(0)
        return self.dropout(pe)


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Multi-head attention weights with relative positions: x (N, T, C) -> (N, H, T, T).

    ``in_proj`` gives per head a query and key (``query_head_dim``) and a
    position query (``pos_head_dim``); ``linear_pos`` projects the positional
    encoding. Score(i, j) = q_i.k_j + p_i.pos(j - i). No 1/sqrt(d) factor: the
    initial weight scale takes its place. In training the position term is
    dropped with probability ``pos_emb_skip_rate`` and, on 10% of calls, scores
    beyond +-25 are penalised through the gradient.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int,
                 pos_emb_skip_rate: FloatLike = ScheduledFloat((0.0, 0.5), (4000.0, 0.0))) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.pos_emb_skip_rate = pos_emb_skip_rate
        self.name: Optional[str] = None
        in_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = scaled_linear(embed_dim, in_dim, initial_scale=query_head_dim**-0.25)
        self.whiten_keys = _whiten(whitening_schedule(3.0), num_groups=num_heads, grad_scale=0.025)
        self.balance_keys = Balancer(
            query_head_dim * num_heads, channel_dim=-1, min_positive=0.4, max_positive=0.6,
            min_abs=0.0, max_abs=100.0, prob=0.025,
        )
        self.linear_pos = scaled_linear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """x (N, T, C); pos_emb (1, 2T-1, pos_dim); key_padding_mask (N, T) True = padding;
        attn_mask (T, T) True = not allowed. Returns weights (N, H, T, T)."""
        n, t, _ = x.shape
        h, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        x = self.in_proj(x)
        q = x[..., : h * dq].reshape(n, t, h, dq).transpose(1, 2)  # (N, H, T, dq)
        k = x[..., h * dq: 2 * h * dq]
        if self.training:
            k = self.whiten_keys(self.balance_keys(k))
        k = k.reshape(n, t, h, dq).permute(0, 2, 3, 1)  # (N, H, dq, T)
        scores = torch.matmul(q, k)

        if not self.training or random.random() >= float(self.pos_emb_skip_rate):
            p = x[..., 2 * h * dq:].reshape(n, t, h, dp).transpose(1, 2)  # (N, H, T, dp)
            pos = self.linear_pos(pos_emb)  # (1, 2T-1, H*dp)
            pos = pos.reshape(-1, 2 * t - 1, h, dp).permute(0, 2, 3, 1)  # (1, H, dp, 2T-1)
            rel = torch.matmul(p, pos)  # (N, H, T, 2T-1); column r is offset r - (T-1)
            # abs[i, j] = rel[i, (T-1) - i + j], i.e. offset j - i.
            if torch.onnx.is_in_onnx_export():
                # as_strided with a computed offset does not export; gather does (same values)
                i = torch.arange(t, device=rel.device)
                idx = (t - 1) - i[:, None] + i[None, :]
                rel = torch.gather(rel, 3, idx.expand(n, h, t, t))
            else:
                s = rel.stride()
                rel = rel.as_strided(
                    (n, h, t, t), (s[0], s[1], s[2] - s[3], s[3]), storage_offset=s[3] * (t - 1)
                )
            scores = scores + rel if self.training else scores.add_(rel)

        if self.training:
            if random.random() < 0.1:
                scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-4)
            if attn_mask is not None:
                scores = scores.masked_fill(attn_mask, MASK_SCORE)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], MASK_SCORE)
            return scores.softmax(dim=-1)
        # eval: the same steps in place on the fresh score tensor
        if attn_mask is not None:
            scores.masked_fill_(attn_mask, MASK_SCORE)
        if key_padding_mask is not None:
            scores.masked_fill_(key_padding_mask[:, None, None, :], MASK_SCORE)
        return torch.softmax(scores, dim=-1)


class SelfAttention(nn.Module):
    """Values weighted by given attention weights: x (N, T, C), w (N, H, T, T) -> (N, T, C)."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim)
        self.out_proj = scaled_linear(num_heads * value_head_dim, embed_dim, initial_scale=0.05)
        self.whiten = _whiten(whitening_schedule(7.5, ratio=3.0))

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        n, t, _ = x.shape
        h = attn_weights.shape[1]
        v = self.in_proj(x).reshape(n, t, h, -1).transpose(1, 2)  # (N, H, T, dv)
        out = torch.matmul(attn_weights, v).transpose(1, 2).reshape(n, t, -1)
        return self.whiten(self.out_proj(out))


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (mask shared over time) -> linear."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(
            feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim, embed_dim, activation="SwooshL", dropout_p=dropout,
            dropout_shared_dim=1, initial_scale=0.1,
        )
        self.out_whiten = _whiten(whitening_schedule(7.5))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:  # balancer, dropout and whitening are identities
            o = self.out_proj
            return swoosh_l_then_linear(x, self.in_proj.weight, self.in_proj.bias, o.weight, o.bias)
        return self.out_whiten(self.out_proj(self.hidden_balancer(self.in_proj(x))))


class NonlinAttention(nn.Module):
    """``out_proj(y * (A @ (x * tanh(s))))`` with (s, x, y) = in_proj(input) and A one head's weights.

    Like a convolution module whose convolution is replaced by attention.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, 3 * hidden_channels)
        self.balancer = Balancer(
            hidden_channels, channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5, max_abs=5.0,
        )
        self.out_proj = scaled_linear(hidden_channels, channels, initial_scale=0.05)
        self.whiten1 = _whiten(whitening_schedule(5.0))
        self.whiten2 = _whiten(whitening_schedule(5.0, ratio=3.0))

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """x (N, T, C); attn_weights (N, T, T) (one head)."""
        s, v, y = self.in_proj(x).chunk(3, dim=-1)
        v = self.whiten1(v) * torch.tanh(self.balancer(s))
        v = torch.bmm(attn_weights, v) * y
        return self.whiten2(self.out_proj(v))


class ConvolutionModule(nn.Module):
    """GLU -> depthwise conv over time (padding frames zeroed first) -> SwooshR -> linear."""

    def __init__(self, channels: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(
            channels, channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)), max_positive=1.0,
            min_abs=1.5, max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        if causal:
            self.depthwise_conv: nn.Module = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(
                channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
            )
        self.balancer2 = Balancer(
            channels, channel_dim=1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)), max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)), max_abs=10.0,
        )
        self.whiten = _whiten(whitening_schedule(7.5))
        self.out_proj = ActivationDropoutAndLinear(
            channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05
        )

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None,
                chunk_size: int = -1) -> Tensor:
        """x (N, T, C); src_key_padding_mask (N, T) True = padding."""
        x, s = self.in_proj(x).chunk(2, dim=-1)
        x = x * torch.sigmoid(self.balancer1(s))
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(-1), 0.0)
        x = x.transpose(1, 2)  # (N, C, T)
        if self.causal and chunk_size >= 0:
            x = self.depthwise_conv(x, chunk_size=chunk_size)
        else:
            x = self.depthwise_conv(x)
        x = self.balancer2(x).transpose(1, 2)
        return self.out_proj(self.whiten(x))


class BypassModule(nn.Module):
    """``orig + (new - orig) * bypass_scale`` with a learned per-channel scale.

    In training the scale is kept in ``[scale_min, scale_max]`` (scale_min
    falls from 0.9 to 0.2 over 20000 batches), and per utterance set to 0
    (the whole module skipped) with probability ``skip_rate``.
    """

    def __init__(self, embed_dim: int, skip_rate: FloatLike = 0.0,
                 straight_through_rate: FloatLike = 0.0,
                 scale_min: Optional[FloatLike] = None, scale_max: FloatLike = 1.0) -> None:
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = skip_rate
        self.straight_through_rate = straight_through_rate
        self.scale_min = scale_min if scale_min is not None else ScheduledFloat(
            (0.0, 0.9), (20000.0, 0.2), default=0.0
        )
        self.scale_max = scale_max

    def _scale(self, n: int) -> Tensor:
        if not self.training:
            return self.bypass_scale
        scale = limit_param_value(
            self.bypass_scale, min=float(self.scale_min), max=float(self.scale_max)
        )
        skip = float(self.skip_rate)
        if skip != 0.0:
            keep = torch.rand(n, 1, 1, device=scale.device) > skip
            scale = scale * keep
        st = float(self.straight_through_rate)
        if st != 0.0:
            through = torch.rand(n, 1, 1, device=scale.device) < st
            scale = torch.maximum(scale, through.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        return src_orig + (src - src_orig) * self._scale(src.shape[0])


class SimpleDownsample(nn.Module):
    """(N, T, C) -> (N, ceil(T / ds), C): softmax(bias)-weighted sum of each group of
    ``ds`` frames; the last group is completed by repeating the last frame."""

    def __init__(self, downsample: int) -> None:
        super().__init__()
        self.downsample = downsample
        self.bias = nn.Parameter(torch.zeros(downsample))

    def forward(self, x: Tensor) -> Tensor:
        n, t, c = x.shape
        ds = self.downsample
        t2 = (t + ds - 1) // ds
        pad = t2 * ds - t
        if pad or torch.onnx.is_in_onnx_export():  # exported graphs take any T: always pad
            x = torch.cat((x, x[:, -1:].expand(n, pad, c)), dim=1)
        w = self.bias.softmax(dim=0)
        return torch.matmul(w, x.reshape(n, t2, ds, c))  # (N, t2, C)


class SimpleUpsample(nn.Module):
    """(N, T, C) -> (N, T * up, C) by repeating each frame."""

    def __init__(self, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        return torch.repeat_interleave(x, self.upsample, dim=1)
