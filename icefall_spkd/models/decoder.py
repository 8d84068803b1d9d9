"""Stateless prediction network: embedding + Conv1d over the last ``context_size`` tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Decoder(nn.Module):
    """Stateless transducer decoder (prediction network).

    Output ``u`` is a function of the ``context_size`` most recent tokens
    ``y[u - context_size + 1 .. u]`` only (blank where that reaches before the
    start). The blank embedding is zero (``padding_idx=blank_id``), so blank
    history means "no history".

    Args:
      vocab_size: number of tokens, blank included.
      decoder_dim: output (and embedding) dimension.
      blank_id: id of blank, used for left padding.
      context_size: number of tokens of history (1 = bigram-free, embedding only).
    """

    def __init__(
        self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim, padding_idx=blank_id)
        if context_size > 1:
            groups = decoder_dim // 4 if decoder_dim % 4 == 0 else 1
            self.conv: nn.Module = nn.Conv1d(
                decoder_dim, decoder_dim, kernel_size=context_size, groups=groups, bias=False
            )
        else:
            self.conv = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """Run the decoder.

        Args:
          y: ``(N, U)`` int64 token ids (negative ids act as blank). With ``need_pad=False`` ``U`` must equal
            ``context_size`` (the last ``context_size`` tokens of a hypothesis).
          need_pad: True: left-pad ``y`` with ``context_size - 1`` blanks so that
            output ``u`` sees ``y[:u + 1]`` (its last ``context_size`` tokens);
            False: no padding, one output from exactly ``context_size`` tokens.
        Returns:
          ``(N, U, decoder_dim)`` if ``need_pad`` else ``(N, 1, decoder_dim)``.
        """
        if need_pad:
            y = F.pad(y, (self.context_size - 1, 0), value=self.blank_id)
        elif y.shape[1] != self.context_size:
            raise ValueError(
                f"need_pad=False expects (N, {self.context_size}) tokens, got {tuple(y.shape)}"
            )
        # Negative ids (a "no token" filler some searches use) embed to zero,
        # like blank.
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        out = self.conv(emb.transpose(1, 2)).transpose(1, 2)  # (N, U, D) or (N, 1, D)
        return F.relu(out)
