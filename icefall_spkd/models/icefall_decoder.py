"""icefall's stateless decoder as used by its Zipformer recipes (for checkpoint compatibility).

It differs from :class:`~icefall_spkd.models.decoder.Decoder` (the Conformer
path's) in three ways that change its values with icefall's weights:

* the left context is padded with zero *vectors* after the embedding (not with
  blank tokens, whose embedding icefall learns and does not keep at zero);
* the embedding has no ``padding_idx`` (the blank row is trained);
* the ReLU is applied only after the context convolution (none when
  ``context_size == 1``).

Contexts for ``need_pad=False`` (one output from the last ``context_size``
tokens): icefall's searches start a hypothesis as ``[-1] * (c - 1) + [blank]``;
this package's searches, samplers and KD code left-pad with blanks instead
(``[blank] * c``), which the Conformer's decoder cannot tell apart (its blank
and -1 both embed to zero). So that both conventions give the value training
used (zero-vector history, then the start-of-sequence blank), a blank that is
followed by another blank in a context counts as history padding (-1). Real
hypotheses never contain blank as a token, so icefall-style contexts are
unchanged by this.

In training two Balancers (probability 0.05) keep the embedding and output
magnitudes in range, as in icefall. Parameters: ``embedding.weight`` and
``conv.weight`` (groups ``decoder_dim // 4``, no bias).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import Decoder
from .scaling import Balancer


def blank_padding_to_icefall(contexts: Tensor, blank_id: int) -> Tensor:
    """Blank-padded decoder contexts (N, c) -> icefall's: a blank followed by a blank becomes -1.

    ``[0, 0] -> [-1, 0]``, ``[0, 0, 0] -> [-1, -1, 0]``, ``[0, 5] -> [0, 5]``.
    """
    is_blank = contexts == blank_id
    pad = is_blank[:, :-1] & is_blank[:, 1:]
    if not bool(pad.any()):
        return contexts
    out = contexts.clone()
    out[:, :-1] = out[:, :-1].masked_fill(pad, -1)
    return out


class IcefallDecoder(Decoder):
    """Stateless decoder with icefall's Zipformer-recipe function; same interface as :class:`Decoder`."""

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2) -> None:
        nn.Module.__init__(self)
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        if context_size > 1 and decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim must be a multiple of 4 (grouped conv), got {decoder_dim}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                 min_abs=0.5, max_abs=1.0, prob=0.05)
        if context_size > 1:
            self.conv: nn.Module = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                             groups=decoder_dim // 4, bias=False)
            self.balancer2: nn.Module = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0,
                                                 max_positive=1.0, min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """y (N, U) int64 (negative ids embed to zero) -> (N, U, D); with ``need_pad=False``
        ``U`` must be ``context_size`` and the result is (N, 1, D)."""
        y = y.long()
        if not need_pad and self.context_size > 1:
            y = blank_padding_to_icefall(y, self.blank_id)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        emb = self.balancer(emb)
        if self.context_size == 1:
            return emb
        emb = emb.transpose(1, 2)  # (N, D, U)
        if need_pad:
            emb = F.pad(emb, (self.context_size - 1, 0))
        elif emb.shape[-1] != self.context_size:
            raise ValueError(
                f"need_pad=False expects (N, {self.context_size}) tokens, got {tuple(y.shape)}"
            )
        out = F.relu(self.conv(emb).transpose(1, 2))
        return self.balancer2(out)
