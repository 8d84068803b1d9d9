"""A Conformer encoder (Gulati et al., 2020) for the stateless transducer.

Layout of one block (pre-LayerNorm residual branches, "macaron" feed-forward)::

    x = x + 1/2 * FF1(LN(x))
    x = x + MHSA(LN(x), key_padding_mask)          # rotary position embedding
    x = x + Conv(LN(x), padding_mask)
    x = x + 1/2 * FF2(LN(x))

The encoder output is the residual stream itself: by default there is no
LayerNorm at the end of each block (the original Conformer has one) and none
after the last block (``output_norm`` selects the other layouts). Measured
with ``egs/librispeech/ASR/local/ctc_probe.py`` (a 4-block, 96-dim encoder
with a CTC head over letters on the 3-hour synthetic corpus, Adam 1e-3,
40 s batches, same seed; greedy CER on 40 dev utterances): after 500 / 800
updates, no output norm 57.1 % / 48.4 %, per-block output norms (the
original layout) 76.3 % / 75.1 %; one norm after the last block 59.4 % after
500 (74.3 % after 400). A normalised output pins the scale of
what the output layers see, and with Adam's fixed-size steps their logits
take far longer to become confident; on this corpus that kept the
transducers on the "label prior only" plateau for thousands of updates.

Input normalisation: features are first mapped to ``(x - feature_mean) /
feature_std`` per bin (global CMVN). The two ``(F,)`` buffers are identity
until :meth:`Conformer.set_feature_stats` sets them (``train.py`` does, from
the training cuts, before the first update); they are saved in the state
dict, so checkpoints and exported models carry their statistics. Log-mel
fbank is around mean -6 / std 5 per bin; without CMVN the same probe was at
69.8 % CER after 500 updates (57.1 % with it).

Positions: multi-head self-attention uses rotary position embedding (RoPE,
Su et al. 2021) on queries and keys, so attention scores depend only on the
relative offset between two frames; there is no absolute position input.

Subsampling: two ``Conv2d(kernel=3, stride=2)`` layers without padding, over
both time and frequency, then a linear layer to ``encoder_dim``. Each conv maps
a length ``L`` to ``(L - 3) // 2 + 1 = (L - 1) // 2``, so::

    T' = ((T - 1) // 2 - 1) // 2  ==  (T - 3) // 4        (T' >= 1 needs T >= 7)

``encoder_out_lens`` is that formula applied to ``x_lens``. Output frame ``t'``
sees input frames ``4 t' .. 4 t' + 6``, so valid output frames only see valid
input frames.

Padding: attention masks padded keys, and the convolution module zeroes padded
frames before its depthwise convolution (and uses LayerNorm, not BatchNorm), so
an utterance's valid outputs do not depend on the padding or on the rest of the
batch. Padded output frames are set to zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder_interface import EncoderInterface


def subsampled_lengths(x_lens: Tensor) -> Tensor:
    """Number of output frames of :class:`Conv2dSubsampling` for ``x_lens`` input frames.

    Args:
      x_lens: ``(N,)`` int64 (or a plain int tensor).
    Returns:
      ``(N,)`` int64, ``((x_lens - 1) // 2 - 1) // 2``, clamped at 0.
    """
    return (((x_lens - 1) // 2 - 1) // 2).clamp(min=0)


class Conv2dSubsampling(nn.Module):
    """Subsample ``(N, T, F)`` features by 4 in time to ``(N, T', d_model)``.

    Args:
      in_features: ``F``.
      d_model: output dimension.
      channels: number of channels of the two conv layers.
    """

    def __init__(self, in_features: int, d_model: int, channels: int) -> None:
        super().__init__()
        if in_features < 7:
            raise ValueError(f"need at least 7 feature bins, got {in_features}")
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        f_out = ((in_features - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * f_out, d_model)
        # Log-mel features are far from zero mean / unit variance (about -5.6
        # and 4.1 on fbank); this norm makes the scale of the residual stream
        # that enters the first block independent of the feature scale.
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (N, T, F) -> (N, T', d_model) with ``T' = ((T - 1) // 2 - 1) // 2``."""
        x = self.conv(x.unsqueeze(1))  # (N, channels, T', F')
        n, c, t, f = x.shape
        return self.out_norm(self.out(x.permute(0, 2, 1, 3).reshape(n, t, c * f)))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for vectors of even size ``head_dim``.

    Channel ``i`` (``i < head_dim / 2``) is paired with channel ``i + head_dim / 2``
    and the pair is rotated by the angle ``t * base ** (-2 i / head_dim)`` at
    position ``t``. Rotating both queries and keys makes ``q_t . k_s`` a function
    of ``t - s`` only.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., T, head_dim) -> the same shape, rotated by position along ``T``."""
        t = x.shape[-2]
        pos = torch.arange(t, device=x.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)  # (T, head_dim / 2)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        rotated_half = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated_half * sin


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary position embedding.

    Args:
      d_model: model dimension, divisible by ``num_heads``; ``d_model / num_heads`` even.
      num_heads: number of heads.
      dropout: dropout on the attention weights.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.dropout = dropout

    def forward(self, x: Tensor, key_padding_mask: Tensor) -> Tensor:
        """Attend within each utterance.

        Args:
          x: ``(N, T, d_model)``.
          key_padding_mask: ``(N, T)`` bool, True at padded frames (never attended to).
        Returns:
          ``(N, T, d_model)``.
        """
        n, t, d = x.shape
        qkv = self.in_proj(x).reshape(n, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, head_dim)
        q, k = self.rotary(q), self.rotary(k)
        attn_mask = (~key_padding_mask).reshape(n, 1, 1, t)  # True = may attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (N, H, T, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    """``Linear(d, ff) -> SiLU -> Dropout -> Linear(ff, d)``; (N, T, d) -> (N, T, d)."""

    def __init__(self, d_model: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, feedforward_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward_dim, d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Conformer convolution module.

    pointwise conv (d -> 2d) -> GLU -> zero padded frames -> depthwise conv
    (kernel ``kernel_size``, "same" padding) -> LayerNorm -> SiLU -> pointwise
    conv (d -> d). The pointwise (kernel-1) convolutions are written as
    ``nn.Linear`` over the channel axis, which is the same operation.

    Args:
      d_model: channels.
      kernel_size: odd depthwise kernel size.
    """

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2, groups=d_model
        )
        self.norm = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """``x`` (N, T, d), ``padding_mask`` (N, T) bool (True = padded) -> (N, T, d)."""
        x = F.glu(self.pointwise1(x), dim=-1)
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        x = F.silu(self.norm(x))
        return self.pointwise2(x)


class ConformerLayer(nn.Module):
    """One Conformer block (see the module docstring); (N, T, d) -> (N, T, d)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        feedforward_dim: int,
        cnn_module_kernel: int,
        dropout: float,
        output_norm: bool = False,
    ) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, feedforward_dim, dropout)
        self.attn = RotarySelfAttention(d_model, num_heads, dropout)
        self.conv = ConvolutionModule(d_model, cnn_module_kernel)
        self.ff2 = FeedForward(d_model, feedforward_dim, dropout)
        self.norm_ff1 = nn.LayerNorm(d_model)
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_conv = nn.LayerNorm(d_model)
        self.norm_ff2 = nn.LayerNorm(d_model)
        # The original Conformer's LayerNorm at the end of the block (off by
        # default; see the module docstring).
        self.norm_out: nn.Module = nn.LayerNorm(d_model) if output_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """``x`` (N, T, d), ``padding_mask`` (N, T) bool (True = padded) -> (N, T, d)."""
        x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
        x = x + self.dropout(self.attn(self.norm_attn(x), padding_mask))
        x = x + self.dropout(self.conv(self.norm_conv(x), padding_mask))
        return self.norm_out(x + 0.5 * self.dropout(self.ff2(self.norm_ff2(x))))


class Conformer(EncoderInterface):
    """Conv2d subsampling (x4) followed by ``num_layers`` Conformer blocks.

    Args:
      num_features: input feature dimension ``F`` (80 for fbank).
      d_model: ``encoder_dim``, also ``output_dim``.
      num_heads: attention heads; ``d_model / num_heads`` must be even.
      feedforward_dim: hidden size of the two macaron feed-forward modules.
      num_layers: number of Conformer blocks.
      cnn_module_kernel: odd kernel size of the depthwise convolution.
      dropout: dropout rate (residual branches, feed-forward hidden, attention weights).
      subsampling_channels: channels of the subsampling convs (default
        ``max(8, d_model // 4)``).
      output_norm: where to put output LayerNorms: ``"none"`` (default, see
        the module docstring), ``"block"`` (end of every block, the original
        Conformer) or ``"final"`` (once, after the last block). Kept for
        comparisons such as ``local/ctc_probe.py``.
    """

    def __init__(
        self,
        num_features: int = 80,
        d_model: int = 144,
        num_heads: int = 4,
        feedforward_dim: int = 576,
        num_layers: int = 12,
        cnn_module_kernel: int = 31,
        dropout: float = 0.1,
        subsampling_channels: int | None = None,
        output_norm: str = "none",
    ) -> None:
        super().__init__()
        if output_norm not in ("none", "block", "final"):
            raise ValueError(f"output_norm must be none|block|final, got {output_norm!r}")
        self.output_dim = d_model
        if subsampling_channels is None:
            subsampling_channels = max(8, d_model // 4)
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        self.subsampling = Conv2dSubsampling(num_features, d_model, subsampling_channels)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            ConformerLayer(
                d_model,
                num_heads,
                feedforward_dim,
                cnn_module_kernel,
                dropout,
                output_norm=output_norm == "block",
            )
            for _ in range(num_layers)
        )
        self.final_norm: nn.Module = (
            nn.LayerNorm(d_model) if output_norm == "final" else nn.Identity()
        )

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the global CMVN statistics: ``mean``, ``std`` of shape ``(F,)``; ``std > 0``."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.feature_mean.numel() or std.numel() != self.feature_std.numel():
            raise ValueError(
                f"feature stats must have {self.feature_mean.numel()} bins, "
                f"got mean {mean.numel()} / std {std.numel()}"
            )
        if not bool((std > 0).all()):
            raise ValueError("feature std must be positive in every bin")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch.

        Args:
          x: ``(N, T, F)`` features.
          x_lens: ``(N,)`` int64 valid frames per utterance (``>= 7`` for a
            non-empty output).
        Returns:
          ``encoder_out`` ``(N, T', d_model)`` with ``T' = ((T - 1) // 2 - 1) // 2``
          (padded frames are zero) and ``encoder_out_lens`` ``(N,)`` int64
          ``= ((x_lens - 1) // 2 - 1) // 2``.
        """
        x = (x - self.feature_mean) / self.feature_std
        x = self.subsampling(x)
        out_lens = subsampled_lengths(x_lens.to(torch.int64))
        t = x.shape[1]
        positions = torch.arange(t, device=x.device).unsqueeze(0)
        # Never mask every key of an utterance (softmax over nothing is NaN):
        # a 0-frame output keeps frame 0 as a key; its outputs are zeroed below.
        padding_mask = positions >= out_lens.clamp(min=1).unsqueeze(1)  # (N, T')
        x = self.input_dropout(x)
        for layer in self.layers:
            x = layer(x, padding_mask)
        x = self.final_norm(x)
        valid = positions < out_lens.unsqueeze(1)
        x = x * valid.unsqueeze(-1).to(x.dtype)
        return x, out_lens

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Same as :func:`subsampled_lengths`."""
        return subsampled_lengths(x_lens)


__all__ = [
    "Conformer",
    "ConformerLayer",
    "ConvolutionModule",
    "Conv2dSubsampling",
    "RotarySelfAttention",
    "RotaryEmbedding",
    "subsampled_lengths",
]
