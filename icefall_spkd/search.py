"""Transducer decoding: batched greedy search and modified beam search.

Both searches follow the decoding contract in ``docs/DESIGN.md``: they emit at
most one non-blank symbol per encoder frame and only touch ``model.decoder``
(stateless, ``need_pad=False`` on ``(N, context_size)`` contexts) and
``model.joiner`` (``encoder_proj``/``decoder_proj`` are applied once, then the
joiner is called with ``project_input=False``).

Length normalisation of the final pick in :func:`modified_beam_search`
---------------------------------------------------------------------
With ``length_norm=True`` (the default) a final hypothesis with token sequence
``y`` (blanks excluded) and total log-probability ``log P(y | x)`` is ranked by::

    log P(y | x) / max(len(y), 1)

i.e. the average log-probability per emitted token, with the empty hypothesis
divided by 1. (icefall divides by ``len(y) + context_size`` because its
hypotheses carry the initial blank context; we count real tokens only.) With
``length_norm=False`` hypotheses are ranked by ``log P(y | x)`` itself.
``log P(y | x)`` is always the un-normalised sum over the alignments that
survived the beam, and it is what ``return_nbest=True`` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = [
    "Hypothesis",
    "HypothesisList",
    "greedy_search_batch",
    "hypothesis_score",
    "modified_beam_search",
]


def _log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` for Python floats, safe for ``-inf``."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def hypothesis_score(
    tokens: tuple[int, ...] | list[int], log_prob: float, length_norm: bool = True
) -> float:
    """The ranking score of a final hypothesis (see the module docstring).

    Args:
      tokens: the emitted tokens (no blanks).
      log_prob: total log-probability of ``tokens``.
      length_norm: divide by ``max(len(tokens), 1)`` when true.
    """
    if not length_norm:
        return log_prob
    return log_prob / max(len(tokens), 1)


@dataclass
class Hypothesis:
    """One beam entry: the emitted tokens (no blanks) and their total log-probability."""

    tokens: tuple[int, ...]
    log_prob: float

    def context(self, context_size: int, blank_id: int) -> list[int]:
        """The decoder context: the last ``context_size`` tokens, left-padded with blank."""
        if context_size <= 0:
            return []
        ctx = list(self.tokens[-context_size:])
        return [blank_id] * (context_size - len(ctx)) + ctx


class HypothesisList:
    """Hypotheses of one utterance, keyed by token sequence.

    Adding a hypothesis whose tokens are already present log-adds the two
    scores (the two sets of alignments are merged).
    """

    def __init__(self, hyps: Optional[list[Hypothesis]] = None) -> None:
        self._data: dict[tuple[int, ...], Hypothesis] = {}
        for h in hyps or []:
            self.add(h)

    def add(self, hyp: Hypothesis) -> None:
        """Insert ``hyp``, merging by log-add with an existing equal token sequence."""
        old = self._data.get(hyp.tokens)
        if old is None:
            self._data[hyp.tokens] = Hypothesis(hyp.tokens, hyp.log_prob)
        else:
            old.log_prob = _log_add(old.log_prob, hyp.log_prob)

    def get(self, tokens: tuple[int, ...]) -> Optional[Hypothesis]:
        """The hypothesis with exactly these tokens, or ``None``."""
        return self._data.get(tokens)

    def sorted(self, length_norm: bool = True) -> list[Hypothesis]:
        """All hypotheses, best first by :func:`hypothesis_score` (stable for ties)."""
        return sorted(
            self._data.values(),
            key=lambda h: hypothesis_score(h.tokens, h.log_prob, length_norm),
            reverse=True,
        )

    def best(self, length_norm: bool = True) -> Hypothesis:
        """The best hypothesis by :func:`hypothesis_score`."""
        return max(
            self._data.values(),
            key=lambda h: hypothesis_score(h.tokens, h.log_prob, length_norm),
        )

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Hypothesis]:
        return iter(self._data.values())

    def __contains__(self, tokens: object) -> bool:
        return tokens in self._data


def _run_decoder(model: nn.Module, contexts: torch.Tensor) -> torch.Tensor:
    """Projected decoder output ``(N, joiner_dim)`` for contexts ``(N, context_size)``."""
    dec = model.decoder(contexts, need_pad=False)  # (N, 1, D)
    return model.joiner.decoder_proj(dec.squeeze(1))


def _check_inputs(encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> list[int]:
    assert encoder_out.ndim == 3, encoder_out.shape
    assert encoder_out_lens.ndim == 1 and encoder_out_lens.numel() == encoder_out.size(0), (
        encoder_out_lens.shape,
        encoder_out.shape,
    )
    lens = [min(int(n), encoder_out.size(1)) for n in encoder_out_lens.tolist()]
    assert all(n >= 0 for n in lens), lens
    return lens


@torch.no_grad()
def greedy_search_batch(
    model: nn.Module, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor
) -> list[list[int]]:
    """Batched greedy search, at most one symbol per frame.

    At every frame each still-active utterance takes the arg-max of the
    joiner; the decoder is re-run only for utterances that emitted a
    non-blank symbol.

    Args:
      model: a transducer following the model contract (uses ``decoder``/``joiner``).
      encoder_out: ``(N, T, C)`` encoder output.
      encoder_out_lens: ``(N,)`` valid frames per utterance; frames beyond are ignored.
    Returns:
      One list of token ids (no blanks) per utterance, in input order.
    """
    lens = _check_inputs(encoder_out, encoder_out_lens)
    n = len(lens)
    device = encoder_out.device
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    results: list[list[int]] = [[] for _ in range(n)]
    if n == 0 or max(lens) == 0:
        return results

    # Sort by length (longest first) so the active utterances at frame t are a prefix.
    order = sorted(range(n), key=lambda i: -lens[i])
    sorted_lens = [lens[i] for i in order]
    order_t = torch.tensor(order, device=device)
    enc = model.joiner.encoder_proj(encoder_out.index_select(0, order_t))  # (N, T, J)

    contexts = torch.full((n, context_size), blank_id, dtype=torch.int64, device=device)
    dec = _run_decoder(model, contexts)  # (N, J)
    num_active = n
    for t in range(sorted_lens[0]):
        while num_active > 0 and sorted_lens[num_active - 1] <= t:
            num_active -= 1
        logits = model.joiner(enc[:num_active, t], dec[:num_active], project_input=False)
        y = logits.argmax(dim=-1).tolist()  # one host sync per frame
        emitted_l = [i for i, tok in enumerate(y) if tok != blank_id]
        if not emitted_l:
            continue
        for i in emitted_l:
            results[order[i]].append(y[i])
        emitted = torch.tensor(emitted_l, dtype=torch.int64, device=device)
        y_emit = torch.tensor([y[i] for i in emitted_l], dtype=torch.int64, device=device)
        new_ctx = torch.cat([contexts[emitted, 1:], y_emit.unsqueeze(1)], dim=1)
        contexts[emitted] = new_ctx
        dec[emitted] = _run_decoder(model, new_ctx).to(dec.dtype)
    return results


@torch.no_grad()
def modified_beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    return_nbest: bool = False,
    length_norm: bool = True,
) -> list[list[int]] | list[list[tuple[list[int], float]]]:
    """Batched modified beam search, at most one symbol per frame.

    At frame ``t`` every hypothesis of every utterance with ``t < length`` is
    expanded by every vocabulary entry (blank keeps the tokens, a non-blank
    appends it) with score ``log_prob + log_softmax(joiner)``. Expansions that
    give the same token sequence -- blank after ``y`` and ``y[-1]`` after
    ``y[:-1]`` -- are merged by log-add *before* selection, and the ``beam``
    best distinct sequences are kept per utterance. Hence with ``beam`` at
    least the number of reachable token sequences the search is exact: each
    kept score is ``log P(y | x)`` summed over all alignments.

    Args:
      model: a transducer following the model contract (uses ``decoder``/``joiner``).
      encoder_out: ``(N, T, C)`` encoder output.
      encoder_out_lens: ``(N,)`` valid frames per utterance; frames beyond are ignored.
      beam: hypotheses kept per utterance per frame (>= 1).
      return_nbest: return all final hypotheses instead of the best one.
      length_norm: rank final hypotheses by ``log_prob / max(len(tokens), 1)``
        (see the module docstring) instead of ``log_prob``.
    Returns:
      Without ``return_nbest``: one token list (no blanks) per utterance.
      With ``return_nbest``: per utterance, a list of ``(tokens, log_prob)``
      for every distinct final hypothesis, best first by the same criterion;
      ``log_prob`` is the un-normalised total log-probability.
    """
    assert beam >= 1, beam
    lens = _check_inputs(encoder_out, encoder_out_lens)
    n = len(lens)
    device = encoder_out.device
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size

    hyps = [HypothesisList([Hypothesis((), 0.0)]) for _ in range(n)]
    max_len = max(lens, default=0)
    enc = model.joiner.encoder_proj(encoder_out) if max_len > 0 else None  # (N, T, J)

    for t in range(max_len):
        active = [b for b in range(n) if lens[b] > t]
        # Flatten the hypotheses of the active utterances.
        flat: list[Hypothesis] = []
        counts: list[int] = []
        offsets: list[int] = []
        num_folded: list[int] = []
        # (i, j, v): flat[i].tokens == flat[j].tokens + (v,) within one utterance.
        fold_i: list[int] = []
        fold_j: list[int] = []
        fold_v: list[int] = []
        for b in active:
            offset = len(flat)
            offsets.append(offset)
            utt_hyps = list(hyps[b])
            flat.extend(utt_hyps)
            counts.append(len(utt_hyps))
            index = {h.tokens: offset + k for k, h in enumerate(utt_hyps)}
            num_fold_before = len(fold_i)
            for k, h in enumerate(utt_hyps):
                if h.tokens:
                    j = index.get(h.tokens[:-1])
                    if j is not None:
                        fold_i.append(offset + k)
                        fold_j.append(j)
                        fold_v.append(h.tokens[-1])
            num_folded.append(len(fold_i) - num_fold_before)

        contexts = torch.tensor(
            [h.context(context_size, blank_id) for h in flat], dtype=torch.int64, device=device
        ).reshape(len(flat), context_size)
        dec = _run_decoder(model, contexts)  # (H, J)
        counts_t = torch.tensor(counts, device=device)
        active_t = torch.tensor(active, device=device)
        enc_t = enc[active_t, t].repeat_interleave(counts_t, dim=0)  # (H, J)
        logits = model.joiner(enc_t, dec, project_input=False)  # (H, V)
        log_probs = logits.float().log_softmax(dim=-1)
        vocab_size = log_probs.size(-1)
        prev = torch.tensor([h.log_prob for h in flat], dtype=torch.float32, device=device)
        scores = log_probs + prev.unsqueeze(1)  # (H, V)

        if fold_i:
            ii = torch.tensor(fold_i, device=device)
            jj = torch.tensor(fold_j, device=device)
            vv = torch.tensor(fold_v, device=device)
            merged = torch.logaddexp(scores[ii, blank_id], scores[jj, vv])
            scores[jj, vv] = -math.inf
            scores[ii, blank_id] = merged

        # Per-utterance top-k over (hyp x vocab), padded with -inf.
        num_utts = len(active)
        max_h = max(counts)
        rows = torch.repeat_interleave(torch.arange(num_utts, device=device), counts_t)
        starts = torch.cumsum(counts_t, dim=0) - counts_t
        cols = torch.arange(len(flat), device=device) - starts[rows]
        padded = scores.new_full((num_utts, max_h, vocab_size), -math.inf)
        padded[rows, cols] = scores
        k = min(beam, max_h * vocab_size)
        top_vals, top_idx = padded.view(num_utts, -1).topk(k, dim=1)
        top_vals_l = top_vals.tolist()
        top_idx_l = top_idx.tolist()

        # The folded (-inf) cells are excluded by taking only the valid count.
        for a, b in enumerate(active):
            k_b = min(beam, counts[a] * vocab_size - num_folded[a])
            new_hyps = HypothesisList()
            for val, idx in zip(top_vals_l[a][:k_b], top_idx_l[a][:k_b]):
                h_pos, v = divmod(idx, vocab_size)
                src = flat[offsets[a] + h_pos]
                tokens = src.tokens if v == blank_id else src.tokens + (v,)
                new_hyps.add(Hypothesis(tokens, val))
            hyps[b] = new_hyps

    if return_nbest:
        return [[(list(h.tokens), h.log_prob) for h in hl.sorted(length_norm)] for hl in hyps]
    return [list(hl.best(length_norm).tokens) for hl in hyps]
