"""The interface every acoustic encoder of this package implements."""

from __future__ import annotations

from torch import Tensor, nn


class EncoderInterface(nn.Module):
    """An acoustic encoder: features in, subsampled hidden vectors out.

    Attributes:
      output_dim: ``C``, the size of the last axis of ``encoder_out``.
    """

    output_dim: int

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch.

        Args:
          x: ``(N, T, F)`` float features, padded after each utterance's end.
          x_lens: ``(N,)`` int64, the number of valid frames of each utterance.
        Returns:
          ``(encoder_out, encoder_out_lens)``: ``(N, T', C)`` float and ``(N,)``
          int64, the number of valid output frames of each utterance.
        """
        raise NotImplementedError("Please implement it in a subclass")
