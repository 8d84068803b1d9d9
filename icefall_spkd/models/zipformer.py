"""Zipformer2 encoder (Yao et al., "Zipformer: A faster and better encoder for
automatic speech recognition", ICLR 2024), batch-first, with icefall's names.

Input: the 50 Hz output of :class:`~icefall_spkd.models.subsampling.Conv2dSubsampling`
(``encoder_embed``). The encoder is a sequence of stacks; stack ``i`` runs at
``1 / downsampling_factor[i]`` of that rate (icefall: 1,2,4,8,4,2), with its own
dimension, layer count, heads, feed-forward sizes and conv kernel. Between
stacks the channel count is truncated or zero-padded; a downsampled stack is
wrapped in :class:`DownsampledZipformerEncoder` (weighted downsampling, the
layers, repeat-upsampling, and a learned bypass with its input). The output
takes each channel from the most recent stack that has it (dimension
``max(encoder_dim)``) and is downsampled by 2 again: 25 Hz,
``lengths = (x_lens + 1) // 2``.

A layer (:class:`ZipformerEncoderLayer`) computes one set of relative-position
attention weights and uses them three times: non-linear attention (head 0)
and two self-attention modules. Order: ff1, nonlin-attn, attn1, conv1, ff2,
mid bypass, attn2, conv2, ff3, BiasNorm, bypass to the layer input.

Training-time regularisation follows icefall: feature masks on the channels
above ``encoder_unmasked_dim``, scheduled per-utterance skipping of modules and
whole layers, constant-attention substitution, positional-term dropout,
Balancer / Whiten gradient terms. All are off in eval mode.
"""

from __future__ import annotations

import copy
import random
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .scaling import (
    Balancer,
    BiasNorm,
    FloatLike,
    ScheduledFloat,
    Whiten,
    convert_num_channels,
    to_int_tuple,
)
from .zipformer_layers import (
    BypassModule,
    CompactRelPositionalEncoding,
    ConvolutionModule,
    FeedforwardModule,
    NonlinAttention,
    RelPositionMultiheadAttentionWeights,
    SelfAttention,
    SimpleDownsample,
    SimpleUpsample,
    whitening_schedule,
)


def _sf(*points: Tuple[float, float], default: float = 0.0) -> ScheduledFloat:
    return ScheduledFloat(*points, default=default)


def _sequence_mask(x: Tensor, rate: float, training: bool) -> Optional[Tensor]:
    """(N, 1, 1) 0/1 mask dropping whole utterances at ``rate`` (None when inactive)."""
    if rate == 0.0 or not training:
        return None
    return (torch.rand(x.shape[0], 1, 1, device=x.device) > rate).to(x.dtype)


def _masked(y: Tensor, mask: Optional[Tensor]) -> Tensor:
    return y if mask is None else y * mask


class ZipformerEncoderLayer(nn.Module):
    """One Zipformer2 layer on (N, T, C); see the module docstring for the order of its parts."""

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, value_head_dim: int, feedforward_dim: int,
                 dropout: FloatLike = 0.1, cnn_module_kernel: int = 31, causal: bool = False) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.bypass = BypassModule(embed_dim, skip_rate=_sf((0.0, 0.5), (4000.0, 0.02)))
        self.bypass_mid = BypassModule(embed_dim)
        self.attention_skip_rate = _sf((0.0, 0.2), (4000.0, 0.05), (16000, 0.0))
        self.conv_skip_rate = _sf((0.0, 0.2), (4000.0, 0.05), (16000, 0.0))
        self.ff2_skip_rate = _sf((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = _sf((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.const_attention_rate = _sf((0.0, 0.25), (4000.0, 0.025))

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim, num_heads, query_head_dim, pos_head_dim
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, feedforward_dim * 3 // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, feedforward_dim * 5 // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused by the computation; kept because icefall's checkpoints contain it.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

        def bal(min_pos: float, max_pos: float, min_abs: FloatLike, max_abs: Optional[float] = None,
                prob: Optional[float] = None) -> Balancer:
            kw = {} if max_abs is None else {"max_abs": max_abs}
            return Balancer(embed_dim, channel_dim=-1, min_positive=min_pos, max_positive=max_pos,
                            min_abs=min_abs, prob=prob, **kw)

        self.balancer1 = bal(0.45, 0.55, 0.2, 4.0)
        self.balancer_na = bal(0.3, 0.7, _sf((0.0, 0.004), (4000.0, 0.02)), prob=0.05)
        self.balancer_ff2 = bal(0.3, 0.7, _sf((0.0, 0.0), (4000.0, 0.1)), 2.0, prob=0.05)
        self.balancer_ff3 = bal(0.3, 0.7, _sf((0.0, 0.0), (4000.0, 0.2)), 4.0, prob=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(4.0, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.balancer2 = bal(0.45, 0.55, 0.1, 4.0)

    def forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int = -1,
                attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src (N, T, C); pos_emb (1, 2T-1, pos_dim); masks as in :class:`Zipformer2`."""
        if not self.training and not torch.is_grad_enabled():
            return self._inference(src, pos_emb, chunk_size, attn_mask, src_key_padding_mask)
        training = self.training
        src_orig = src
        w = self.self_attn_weights(src, pos_emb, src_key_padding_mask, attn_mask)  # (N, H, T, T)
        src = src + self.feed_forward1(src)

        attn_mask_seq = _sequence_mask(src, float(self.attention_skip_rate), training)
        w0 = w[:, 0]
        if training and random.random() < float(self.const_attention_rate):
            # Uniform weights over the allowed keys, to encourage averaging.
            w0 = (w0 > 0.0).to(w0.dtype)
            w0 = w0 / w0.sum(dim=-1, keepdim=True)
        na = self.balancer_na(self.nonlin_attention(src, w0))
        src = src + _masked(na, attn_mask_seq)
        src = src + _masked(self.self_attn1(src, w), attn_mask_seq)

        conv_rate = float(self.conv_skip_rate) if training else 0.0
        conv = self.conv_module1(src, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size)
        src = src + _masked(conv, _sequence_mask(src, conv_rate, training))
        ff2_rate = float(self.ff2_skip_rate) if training else 0.0
        src = src + _masked(self.balancer_ff2(self.feed_forward2(src)),
                            _sequence_mask(src, ff2_rate, training))

        src = self.bypass_mid(src_orig, src)

        src = src + _masked(self.self_attn2(src, w), attn_mask_seq)
        conv = self.conv_module2(src, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size)
        src = src + _masked(conv, _sequence_mask(src, conv_rate, training))
        ff3_rate = float(self.ff3_skip_rate) if training else 0.0
        src = src + _masked(self.balancer_ff3(self.feed_forward3(src)),
                            _sequence_mask(src, ff3_rate, training))

        src = self.norm(self.balancer1(src))
        src = self.bypass(src_orig, src)
        return self.whiten(self.balancer2(src))


    def _inference(self, src: Tensor, pos_emb: Tensor, chunk_size: int,
                   attn_mask: Optional[Tensor], src_key_padding_mask: Optional[Tensor]) -> Tensor:
        """:meth:`forward` in eval mode without autograd: the residual sums are accumulated
        in place (regularisers and skips are identities here)."""
        w = self.self_attn_weights(src, pos_emb, src_key_padding_mask, attn_mask)
        x = src + self.feed_forward1(src)
        x.add_(self.nonlin_attention(x, w[:, 0]))
        x.add_(self.self_attn1(x, w))
        x.add_(self.conv_module1(x, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size))
        x.add_(self.feed_forward2(x))
        x = self.bypass_mid(src, x)
        x.add_(self.self_attn2(x, w))
        x.add_(self.conv_module2(x, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size))
        x.add_(self.feed_forward3(x))
        return self.bypass(src, self.norm(x))


class ZipformerEncoder(nn.Module):
    """A stack of ``num_layers`` copies of a layer sharing one positional encoding.

    Layer ``i``'s whole-layer skip rate falls from 0.5 to ``final_layerdrop_rate``
    between batches ``warmup_begin + i * d`` and ``warmup_begin + (i + 1) * d``,
    ``d = (warmup_end - warmup_begin) / num_layers``.
    """

    def __init__(self, encoder_layer: ZipformerEncoderLayer, num_layers: int, pos_dim: int,
                 warmup_begin: float, warmup_end: float, initial_layerdrop_rate: float = 0.5,
                 final_layerdrop_rate: float = 0.05) -> None:
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        step = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * step
            layer.bypass.skip_rate = ScheduledFloat(
                (begin, initial_layerdrop_rate), (begin + step, final_layerdrop_rate), default=0.0
            )

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Union[Tensor, float] = 1.0,
                attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        pos_emb = self.encoder_pos(src.shape[1], src)
        out = src * feature_mask if isinstance(feature_mask, Tensor) else src
        for layer in self.layers:
            out = layer(out, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask,
                        src_key_padding_mask=src_key_padding_mask)
            if isinstance(feature_mask, Tensor):
                out = out * feature_mask
        return out


class DownsampledZipformerEncoder(nn.Module):
    """Run a :class:`ZipformerEncoder` at ``1 / downsample`` of the frame rate and bypass-combine
    its upsampled output with the input."""

    def __init__(self, encoder: ZipformerEncoder, dim: int, downsample: int) -> None:
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(downsample)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(downsample)
        self.out_combiner = BypassModule(dim)

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Union[Tensor, float] = 1.0,
                attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        ds = self.downsample_factor
        x = self.downsample(src)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        x = self.encoder(x, chunk_size=chunk_size // ds, feature_mask=feature_mask,
                         attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask)
        x = self.upsample(x)[:, : src.shape[1]]
        return self.out_combiner(src, x)


class Zipformer2(nn.Module):
    """The Zipformer2 encoder, batch-first.

    Args (per-stack values are tuples of length ``len(downsampling_factor)``;
    one value is repeated):
      output_downsampling_factor: must be 2 (icefall).
      downsampling_factor: per stack, relative to the 50 Hz input.
      encoder_dim, num_encoder_layers, encoder_unmasked_dim, query_head_dim,
      pos_head_dim, value_head_dim, num_heads, feedforward_dim, cnn_module_kernel:
        per stack.
      pos_dim: positional-encoding dimension.
      dropout: feed-forward dropout; default 0.3 -> 0.1 over 20000 batches.
      warmup_batches: layer-skip warm-up (stack i warms up in
        ``[i + 1, i + 2] * warmup_batches / (stacks + 1)``).
      causal, chunk_size, left_context_frames: chunked causal attention and
        convolution (chunk size drawn from the lists on every forward).
    Attributes: ``output_dim = max(encoder_dim)``.
    """

    def __init__(self, output_downsampling_factor: int = 2,
                 downsampling_factor: Sequence[int] = (2, 4),
                 encoder_dim: Union[int, Sequence[int]] = 384,
                 num_encoder_layers: Union[int, Sequence[int]] = 4,
                 encoder_unmasked_dim: Union[int, Sequence[int]] = 256,
                 query_head_dim: Union[int, Sequence[int]] = 24,
                 pos_head_dim: Union[int, Sequence[int]] = 4,
                 value_head_dim: Union[int, Sequence[int]] = 12,
                 num_heads: Union[int, Sequence[int]] = 8,
                 feedforward_dim: Union[int, Sequence[int]] = 1536,
                 cnn_module_kernel: Union[int, Sequence[int]] = 31,
                 pos_dim: int = 192, dropout: Optional[FloatLike] = None,
                 warmup_batches: float = 4000.0, causal: bool = False,
                 chunk_size: Sequence[int] = (-1,),
                 left_context_frames: Sequence[int] = (-1,)) -> None:
        super().__init__()
        if output_downsampling_factor != 2:
            raise ValueError("output_downsampling_factor must be 2 (as in icefall)")
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        self.downsampling_factor = to_int_tuple(downsampling_factor)
        n = len(self.downsampling_factor)
        self.encoder_dim = to_int_tuple(encoder_dim, n)
        self.encoder_unmasked_dim = to_int_tuple(encoder_unmasked_dim, n)
        self.num_encoder_layers = to_int_tuple(num_encoder_layers, n)
        self.query_head_dim = to_int_tuple(query_head_dim, n)
        self.value_head_dim = to_int_tuple(value_head_dim, n)
        self.pos_head_dim = to_int_tuple(pos_head_dim, n)
        self.num_heads = to_int_tuple(num_heads, n)
        self.feedforward_dim = to_int_tuple(feedforward_dim, n)
        self.cnn_module_kernel = to_int_tuple(cnn_module_kernel, n)
        self.output_downsampling_factor = output_downsampling_factor
        self.causal = causal
        self.chunk_size = to_int_tuple(chunk_size)
        self.left_context_frames = to_int_tuple(left_context_frames)
        self.output_dim = max(self.encoder_dim)
        for u, d in zip(self.encoder_unmasked_dim, self.encoder_dim):
            if u > d:
                raise ValueError(f"encoder_unmasked_dim {u} exceeds encoder_dim {d}")

        stacks: List[nn.Module] = []
        for i in range(n):
            layer = ZipformerEncoderLayer(
                embed_dim=self.encoder_dim[i], pos_dim=pos_dim, num_heads=self.num_heads[i],
                query_head_dim=self.query_head_dim[i], pos_head_dim=self.pos_head_dim[i],
                value_head_dim=self.value_head_dim[i], feedforward_dim=self.feedforward_dim[i],
                dropout=dropout, cnn_module_kernel=self.cnn_module_kernel[i], causal=causal,
            )
            stack: nn.Module = ZipformerEncoder(
                layer, self.num_encoder_layers[i], pos_dim=pos_dim,
                warmup_begin=warmup_batches * (i + 1) / (n + 1),
                warmup_end=warmup_batches * (i + 2) / (n + 1),
                final_layerdrop_rate=0.035 * self.downsampling_factor[i] ** 0.5,
            )
            if self.downsampling_factor[i] != 1:
                stack = DownsampledZipformerEncoder(
                    stack, dim=self.encoder_dim[i], downsample=self.downsampling_factor[i]
                )
            stacks.append(stack)
        self.encoders = nn.ModuleList(stacks)
        self.downsample_output = SimpleDownsample(output_downsampling_factor)

    # ----------------------------------------------------------------- helpers
    def _feature_masks(self, x: Tensor) -> List[Union[Tensor, float]]:
        """Per stack: 1.0 in eval; in training an (N, 1, C) mask zeroing channels above
        ``encoder_unmasked_dim`` for some utterances (upper half of them for ~12.5%,
        the lower half of them for ~23%)."""
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        n = x.shape[0]
        keep1 = (torch.rand(n, 1, 1, device=x.device) > 0.125).to(x.dtype)
        keep2 = keep1 * (torch.rand(n, 1, 1, device=x.device) > 0.125).to(x.dtype)
        masks: List[Union[Tensor, float]] = []
        for dim, u1 in zip(self.encoder_dim, self.encoder_unmasked_dim):
            u2 = u1 + (dim - u1) // 2
            m = torch.ones(n, 1, dim, dtype=x.dtype, device=x.device)
            m[:, :, u1:u2] = m[:, :, u1:u2] * keep1
            m[:, :, u2:] = m[:, :, u2:] * keep2
            masks.append(m)
        return masks

    def _chunk_info(self) -> Tuple[int, int]:
        if not self.causal:
            return -1, -1
        chunk = random.choice(self.chunk_size)
        if chunk == -1:
            return -1, -1
        left = random.choice(self.left_context_frames) // chunk
        return chunk, max(left, 1) if left != -1 else -1

    def _attn_mask(self, t: int, chunk: int, left_chunks: int, device: torch.device) -> Optional[Tensor]:
        """(T, T) True where query frame i may not see key frame j (other chunks)."""
        if chunk <= 0:
            return None
        if any(chunk % d for d in self.downsampling_factor):
            raise ValueError(f"chunk_size {chunk} must be a multiple of every downsampling factor")
        if left_chunks < 0:
            left_chunks = 1_000_000
        c = torch.arange(t, device=device) // chunk
        return (c[None, :] > c[:, None]) | (c[None, :] < c[:, None] - left_chunks)

    def _full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, x_lens: Tensor,
                src_key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x (N, T, C0) at 50 Hz; x_lens (N,); src_key_padding_mask (N, T), True = padding
        (None: built from ``x_lens``). Returns (N, ceil(T/2), output_dim) and ``(x_lens + 1) // 2``."""
        if src_key_padding_mask is None:
            src_key_padding_mask = (
                torch.arange(x.shape[1], device=x.device)[None, :] >= x_lens[:, None]
            )
        masks = self._feature_masks(x)
        chunk, left_chunks = self._chunk_info()
        attn_mask = self._attn_mask(x.shape[1], chunk, left_chunks, x.device)
        outputs = []
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x = stack(x, chunk_size=chunk, feature_mask=masks[i], attn_mask=attn_mask,
                      src_key_padding_mask=src_key_padding_mask[:, ::ds])
            outputs.append(x)
        x = self.downsample_output(self._full_dim_output(outputs))
        return x, torch.div(x_lens + 1, 2, rounding_mode="floor")
