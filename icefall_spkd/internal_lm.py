"""The internal language model of a transducer, estimated with the encoder switched off.

A transducer's prediction network and joiner learn, besides the alignment, how
likely each token is after the previous ones: an *internal* LM. Shallow fusion
with an external LM adds a second opinion on the same thing, so how much a
model gains from fusion depends on how strong its internal LM already is.

The estimate used here is the usual one for a joiner that adds its two inputs
before a non-linearity (the "zero encoder" estimate of internal-LM estimation,
Meng et al., ICASSP 2021): the joiner is run with the encoder's contribution
set to zero (``encoder_out = 0``, so only ``encoder_proj``'s bias remains), blank
is removed and the remaining logits are renormalised over the real tokens:

    log P_ilm(y_u | y_<u) = log_softmax_{v != blank}(joiner(0, decoder(y_<u)))[y_u]

No end-of-sentence probability exists in a transducer, so a sentence's score is
the sum over its tokens only.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn


@torch.no_grad()
def internal_lm_log_probs(
    model: nn.Module, token_ids: Sequence[Sequence[int]], blank_id: int = 0
) -> List[Tensor]:
    """Per-token internal-LM log-probabilities of each token sequence.

    Args:
      model: a transducer with ``run_decoder(y_padded)`` (the prediction network
        on the blank-prefixed sequence) and ``joiner`` with ``encoder_proj``,
        ``decoder_proj`` and ``forward(enc, dec)``, like
        :class:`icefall_spkd.models.transducer.Transducer`.
      token_ids: the sequences, token ids without blank.
      blank_id: the id removed from the output distribution.
    Returns:
      One float tensor of shape ``(U_i,)`` per sequence: ``log P(y_u | y_<u)``.
    """
    if not token_ids:
        return []
    lens = [len(s) for s in token_ids]
    if min(lens) == 0:
        raise ValueError("internal_lm_log_probs: a token sequence is empty")
    if any(t == blank_id for s in token_ids for t in s):
        raise ValueError(f"internal_lm_log_probs: a sequence holds the blank id {blank_id}")
    y = torch.full((len(token_ids), max(lens)), blank_id, dtype=torch.int64)
    for i, s in enumerate(token_ids):
        y[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    decoder_out = model.run_decoder(y)  # (N, U + 1, D): position u has seen y[:u]
    projected = model.joiner.decoder_proj(decoder_out)
    log_probs = next_token_log_probs(model.joiner, projected, blank_id)[:, :-1]  # u predicts y[u]
    picked = log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (N, U)
    return [picked[i, :n].float() for i, n in enumerate(lens)]


def next_token_log_probs(joiner: nn.Module, decoder_out: Tensor, blank_id: int = 0) -> Tensor:
    """``log P_ilm(. | context)`` after each (projected) decoder output.

    ``decoder_out`` is ``(..., J)``, already through ``joiner.decoder_proj``
    (as the searches keep it). The joiner runs on the projection of a zero
    encoder output; the result ``(..., V)`` is in float32, renormalised over
    the non-blank tokens, with 0 in the blank's column (nothing to score).
    """
    proj = joiner.encoder_proj
    zero_encoder = proj(decoder_out.new_zeros(proj.in_features)).expand_as(decoder_out)
    logits = joiner(zero_encoder, decoder_out, project_input=False).float()
    logits[..., blank_id] = float("-inf")
    out = logits.log_softmax(dim=-1)
    out[..., blank_id] = 0.0
    return out


def perplexity(log_probs: Sequence[Tensor]) -> float:
    """Token perplexity ``exp(-sum log p / number of tokens)`` over all sequences."""
    total = sum(float(lp.sum()) for lp in log_probs)
    count = sum(int(lp.numel()) for lp in log_probs)
    if count == 0:
        raise ValueError("perplexity: no tokens")
    return float(torch.exp(torch.tensor(-total / count, dtype=torch.float64)))
