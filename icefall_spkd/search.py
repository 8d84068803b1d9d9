"""Transducer decoding: greedy search, beam search and modified beam search.

The searches follow the decoding contract in ``docs/DESIGN.md``: they only
touch ``model.decoder`` (stateless, ``need_pad=False`` on
``(N, context_size)`` contexts) and ``model.joiner`` (``encoder_proj``/
``decoder_proj`` are applied once, then the joiner is called with
``project_input=False``).

Symbols per frame
-----------------
In the RNN-T lattice a non-blank symbol keeps the encoder frame and blank
moves to the next one. A search may cap the symbols emitted on one frame at
``max_sym_per_frame = k`` (icefall's rule): after the k-th symbol the search
moves to the next frame without taking a blank. With ``k = 1`` this is the
"one symbol per frame" lattice that :func:`modified_beam_search` searches
(a non-blank symbol also moves to the next frame).

* :func:`greedy_search_batch`: arg-max at every step, at most
  ``max_sym_per_frame`` symbols per frame (default 1).
* :func:`beam_search`: icefall's standard beam search (Graves 2012,
  Algorithm 1, without prefix merging across frames): several symbols per
  frame, no cap unless ``max_sym_per_frame`` is given.
* :func:`modified_beam_search`: one symbol per frame, batched.

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
from typing import Hashable, Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from icefall_spkd.internal_lm import next_token_log_probs

__all__ = [
    "Hypothesis",
    "HypothesisList",
    "advance_decoder",
    "beam_search",
    "greedy_search_batch",
    "hypothesis_score",
    "modified_beam_search",
]


class TokenLm(Protocol):
    """What shallow fusion needs of a token language model."""

    def state(self, tokens: Sequence[int]) -> Hashable:
        """The LM state after ``tokens``."""

    def log_probs(self, state: Hashable) -> torch.Tensor:
        """``log P(v | state)`` for every token id ``v``, shape ``(vocab_size,)``."""

    def eos_log_prob(self, state: Hashable) -> float:
        """``log P(end of sentence | state)``."""


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
    """One beam entry: the emitted tokens (no blanks) and their total log-probability.

    ``lm_score`` is the scaled language-model log-probability of ``tokens``
    in shallow fusion (0 without an LM); ``log_prob`` stays the transducer's.
    """

    tokens: tuple[int, ...]
    log_prob: float
    lm_score: float = 0.0

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
            self._data[hyp.tokens] = Hypothesis(hyp.tokens, hyp.log_prob, hyp.lm_score)
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


def run_decoder(model: nn.Module, contexts: torch.Tensor) -> torch.Tensor:
    """Projected decoder output ``(N, joiner_dim)`` for contexts ``(N, context_size)``."""
    dec = model.decoder(contexts, need_pad=False)  # (N, 1, D)
    return model.joiner.decoder_proj(dec.squeeze(1))


def advance_decoder(
    model: nn.Module, contexts: torch.Tensor, dec: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor
) -> None:
    """Append ``tokens`` (K,) to the contexts of ``rows`` (K,) and recompute their decoder output.

    ``contexts`` ``(N, context_size)`` and the projected decoder output ``dec``
    ``(N, joiner_dim)`` are updated in place; the other rows are untouched.
    Used by the frame-synchronous searches here and by the SP-KD sampler.
    """
    new_ctx = torch.cat([contexts[rows, 1:], tokens.unsqueeze(1)], dim=1)
    contexts[rows] = new_ctx
    dec[rows] = run_decoder(model, new_ctx).to(dec.dtype)


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
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int = 1,
) -> list[list[int]]:
    """Batched greedy search, at most ``max_sym_per_frame`` symbols per frame.

    On every frame each still-active utterance takes the arg-max of the
    joiner: blank moves it to the next frame, a non-blank symbol is emitted
    and the same frame is tried again, until it has emitted
    ``max_sym_per_frame`` symbols there (then it moves on without a blank).
    The decoder is re-run only for utterances that emitted a symbol.

    Args:
      model: a transducer following the model contract (uses ``decoder``/``joiner``).
      encoder_out: ``(N, T, C)`` encoder output.
      encoder_out_lens: ``(N,)`` valid frames per utterance; frames beyond are ignored.
      max_sym_per_frame: symbols one frame may emit (>= 1).
    Returns:
      One list of token ids (no blanks) per utterance, in input order.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
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
    dec = run_decoder(model, contexts)  # (N, J)
    num_active = n
    for t in range(sorted_lens[0]):
        while num_active > 0 and sorted_lens[num_active - 1] <= t:
            num_active -= 1
        rows = list(range(num_active))  # sorted positions still on frame t
        for _ in range(max_sym_per_frame):
            rows_t = torch.tensor(rows, dtype=torch.int64, device=device)
            logits = model.joiner(enc[rows_t, t], dec[rows_t], project_input=False)
            y = logits.argmax(dim=-1).tolist()  # one host sync per step
            emitted_l = [(r, tok) for r, tok in zip(rows, y) if tok != blank_id]
            if not emitted_l:
                break
            for r, tok in emitted_l:
                results[order[r]].append(tok)
            rows = [r for r, _ in emitted_l]
            emitted = torch.tensor(rows, dtype=torch.int64, device=device)
            y_emit = torch.tensor([tok for _, tok in emitted_l], dtype=torch.int64, device=device)
            advance_decoder(model, contexts, dec, emitted, y_emit)
    return results


@torch.no_grad()
def beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    max_sym_per_frame: Optional[int] = None,
    return_nbest: bool = False,
    length_norm: bool = True,
) -> list[list[int]] | list[list[tuple[list[int], float]]]:
    """icefall's standard transducer beam search (several symbols per frame), one utterance at a time.

    On frame ``t``, ``A`` starts as the hypotheses kept after frame ``t-1``
    and ``B`` empty. Repeatedly the most probable hypothesis ``y`` is taken out
    of ``A``; ``y`` followed by blank goes to ``B`` (hypotheses with the same
    tokens are merged by log-add), and ``y`` extended by each of its ``beam + 1``
    most probable symbols (blank skipped) goes back into ``A`` (merged with an
    equal entry of ``A``). The frame ends when ``B`` holds ``beam`` hypotheses
    more probable than the best one left in ``A``; ``B``'s ``beam`` best are
    kept. With ``max_sym_per_frame = k`` a hypothesis that has emitted ``k``
    symbols on the frame goes to ``B`` as it is (no blank) and is not
    extended (see the module docstring), and the frame also ends when ``A``
    is empty; with a beam at least the number of reachable token sequences
    the search is then exact: each final score is ``log P(y | x)`` summed
    over every alignment with at most ``k`` symbols per frame.

    Args:
      model: a transducer following the model contract (uses ``decoder``/``joiner``).
      encoder_out: ``(N, T, C)`` encoder output.
      encoder_out_lens: ``(N,)`` valid frames per utterance; frames beyond are ignored.
      beam: hypotheses kept per frame (>= 1).
      max_sym_per_frame: cap on the symbols per frame (None: no cap, as icefall).
      return_nbest: return all final hypotheses instead of the best one.
      length_norm: rank final hypotheses by :func:`hypothesis_score`.
    Returns:
      As :func:`modified_beam_search`.
    """
    assert beam >= 1, beam
    if max_sym_per_frame is not None and max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1 or None, got {max_sym_per_frame}")
    lens = _check_inputs(encoder_out, encoder_out_lens)
    out = []
    for b, n in enumerate(lens):
        enc = model.joiner.encoder_proj(encoder_out[b, :n]) if n > 0 else None  # (T, J)
        hyps = _beam_search_one(model, enc, n, beam, max_sym_per_frame)
        if return_nbest:
            out.append([(list(h.tokens), h.log_prob) for h in hyps.sorted(length_norm)])
        else:
            out.append(list(hyps.best(length_norm).tokens))
    return out


def _beam_search_one(
    model: nn.Module,
    enc: Optional[torch.Tensor],
    num_frames: int,
    beam: int,
    max_sym_per_frame: Optional[int],
) -> HypothesisList:
    """:func:`beam_search` on one utterance; ``enc`` is its projected encoder output ``(T, J)``."""
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    device = next(model.joiner.parameters()).device
    dec_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def log_probs(t: int, tokens: tuple[int, ...]) -> torch.Tensor:
        ctx = tuple(Hypothesis(tokens, 0.0).context(context_size, blank_id))
        if ctx not in dec_cache:
            ctx_t = torch.tensor([ctx], dtype=torch.int64, device=device).reshape(1, context_size)
            dec_cache[ctx] = run_decoder(model, ctx_t)  # (1, J)
        logits = model.joiner(enc[t : t + 1], dec_cache[ctx], project_input=False)  # (1, V)
        return logits[0].float().log_softmax(dim=-1)

    kept = HypothesisList([Hypothesis((), 0.0)])
    for t in range(num_frames):
        # A: (tokens, symbols emitted on this frame) -> log-prob.
        frontier: dict[tuple[tuple[int, ...], int], float] = {(h.tokens, 0): h.log_prob for h in kept}
        done = HypothesisList()
        while frontier:
            key = max(frontier, key=frontier.__getitem__)
            tokens, n_sym = key
            lp = frontier.pop(key)
            if max_sym_per_frame is not None and n_sym >= max_sym_per_frame:
                done.add(Hypothesis(tokens, lp))
            else:
                scores = log_probs(t, tokens)
                done.add(Hypothesis(tokens, lp + float(scores[blank_id])))
                k = min(beam + 1, scores.numel())
                top_vals, top_idx = scores.topk(k)
                for v, sym in zip(top_vals.tolist(), top_idx.tolist()):
                    if sym == blank_id:
                        continue
                    nxt = (tokens + (sym,), n_sym + 1)
                    frontier[nxt] = _log_add(frontier.get(nxt, -math.inf), lp + v)
            if frontier:
                best_left = max(frontier.values())
                if sum(1 for h in done if h.log_prob > best_left) >= beam:
                    break
        kept = HypothesisList(done.sorted(length_norm=False)[:beam])
    return kept


@torch.no_grad()
def modified_beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    return_nbest: bool = False,
    length_norm: bool = True,
    lm: Optional[TokenLm] = None,
    lm_scale: float = 0.0,
    lm_token_bonus: float = 0.0,
    ilm_scale: float = 0.0,
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
      lm: a token language model for shallow fusion (e.g.
        :class:`icefall_spkd.ngram_lm.TokenNgramLm`). Every non-blank
        expansion by ``v`` then also scores ``lm_scale * log P_lm(v | tokens)``,
        and a final hypothesis ``lm_scale * log P_lm(end | tokens)``: the
        search ranks ``log P(y | x) + lm_scale * log P_lm(y)``. Merged
        expansions have the same tokens, hence the same LM score, so the
        log-add above still sums the transducer's alignments only.
      lm_scale: the LM weight (``lm`` unused when 0).
      lm_token_bonus: with an LM, a reward added for every emitted token
        (a length bonus): the LM's per-token cost otherwise pushes the
        search to delete. The search then ranks
        ``log P(y | x) + lm_scale * log P_lm(y) + lm_token_bonus * len(y)``.
      ilm_scale: with an LM, the weight of the transducer's own internal LM,
        subtracted (internal-LM estimation, Meng et al. 2021): every
        non-blank expansion by ``v`` also scores ``-ilm_scale * log
        P_ilm(v | context)``, where ``P_ilm`` is the joiner on a zero
        encoder output with blank removed and the rest renormalised (as
        :func:`icefall_spkd.internal_lm.next_token_log_probs`). The search
        then ranks the sum above minus ``ilm_scale * log P_ilm(y)``.
    Returns:
      Without ``return_nbest``: one token list (no blanks) per utterance.
      With ``return_nbest``: per utterance, a list of ``(tokens, log_prob)``
      for every distinct final hypothesis, best first by the same criterion;
      ``log_prob`` is the un-normalised total log-probability (the
      transducer's alone, also with an LM).
    """
    assert beam >= 1, beam
    if lm_scale == 0.0:
        lm = None
    if ilm_scale and lm is None:
        raise ValueError("ilm_scale needs an external LM (lm= and lm_scale != 0)")
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
        dec = run_decoder(model, contexts)  # (H, J)
        counts_t = torch.tensor(counts, device=device)
        active_t = torch.tensor(active, device=device)
        enc_t = enc[active_t, t].repeat_interleave(counts_t, dim=0)  # (H, J)
        logits = model.joiner(enc_t, dec, project_input=False)  # (H, V)
        log_probs = logits.float().log_softmax(dim=-1)
        vocab_size = log_probs.size(-1)
        prev = torch.tensor([h.log_prob for h in flat], dtype=torch.float32, device=device)
        scores = log_probs + prev.unsqueeze(1)  # (H, V)
        if lm is not None:
            # Fused scores: the hypothesis's LM total plus the next token's, blank unscored.
            lm_next = lm_scale * torch.stack([lm.log_probs(lm.state(h.tokens)) for h in flat]).to(device)
            lm_next += lm_token_bonus
            if ilm_scale:
                lm_next -= ilm_scale * next_token_log_probs(model.joiner, dec, blank_id)
            lm_next[:, blank_id] = 0.0
            lm_prev = torch.tensor([h.lm_score for h in flat], dtype=torch.float32, device=device)
            scores = scores + lm_prev.unsqueeze(1) + lm_next
            lm_next_l = lm_next.tolist()

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
                if v == blank_id:
                    new_hyps.add(Hypothesis(src.tokens, val - src.lm_score, src.lm_score))
                else:
                    lm_score = src.lm_score + lm_next_l[offsets[a] + h_pos][v] if lm is not None else 0.0
                    new_hyps.add(Hypothesis(src.tokens + (v,), val - lm_score, lm_score))
            hyps[b] = new_hyps

    if lm is None:
        ranked = [hl.sorted(length_norm) for hl in hyps]
    else:
        ranked = [_rank_with_lm(hl, lm, lm_scale, length_norm) for hl in hyps]
    if return_nbest:
        return [[(list(h.tokens), h.log_prob) for h in hl] for hl in ranked]
    return [list(hl[0].tokens) for hl in ranked]


def _rank_with_lm(
    hyps: HypothesisList, lm: TokenLm, lm_scale: float, length_norm: bool
) -> list[Hypothesis]:
    """Final hypotheses, best first by the fused score with the LM's end-of-sentence term."""

    def fused(h: Hypothesis) -> float:
        total = h.log_prob + h.lm_score + lm_scale * lm.eos_log_prob(lm.state(h.tokens))
        return hypothesis_score(h.tokens, total, length_norm)

    return sorted(hyps, key=fused, reverse=True)
