"""Transducer joiner: ``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Joiner(nn.Module):
    """Combine encoder and decoder vectors into token logits.

    Args:
      encoder_dim: ``C`` of ``encoder_out``.
      decoder_dim: ``D`` of ``decoder_out``.
      joiner_dim: ``J``, the hidden size where the two are added.
      vocab_size: ``V``, number of output logits.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(
        self, encoder_out: Tensor, decoder_out: Tensor, project_input: bool = True
    ) -> Tensor:
        """Joint logits.

        Args:
          encoder_out: ``(..., C)``, or ``(..., J)`` if already projected.
          decoder_out: ``(..., D)``, or ``(..., J)`` if already projected; its
            leading shape must broadcast with ``encoder_out``'s, e.g.
            ``(N, T, 1, C)`` with ``(N, 1, U, D)``, or ``(N, T, R, J)`` with
            ``(N, T, R, J)`` after pruning.
          project_input: apply ``encoder_proj`` / ``decoder_proj`` first; False when
            the inputs are the projections already.
        Returns:
          ``(..., V)`` logits over the broadcast leading shape.
        """
        if project_input:
            encoder_out = self.encoder_proj(encoder_out)
            decoder_out = self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))
