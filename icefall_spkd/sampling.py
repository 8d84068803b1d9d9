"""SP-KD sampling: alignment posteriors inside one lattice, and label sequences.

Two different things are sampled in SP-KD (see ``docs/SPKD.md``):

1. *Alignments* inside the RNN-T lattice of one label sequence, used for the
   KD node weights (``--kd-node-weights``):
   :func:`node_occupancy` (exact), :func:`sample_alignments` (Monte Carlo)
   and :func:`viterbi_alignment` (1-best).
2. *Label sequences* ``y~`` for the sampling term ``L_samp``
   (``--kd-sampler``): :func:`sample_sequences` (ancestral sampling from a
   transducer), :func:`nbest_sequences` (modified beam search n-best) and
   :func:`rotate_batch` (other utterances' transcripts).

Lattice conventions (k2 / fast_rnnt "regular" RNN-T, the layouts of
:mod:`icefall_spkd.pruned_rnnt`): for ``B`` utterances, ``S`` symbols and
``T`` frames, ``px`` is ``(B, S, T+1)`` and ``px[b, u, t]`` is the log-prob of
emitting ``y_{u+1}`` at node ``(u, t)`` (arc to ``(u+1, t)``); ``py`` is
``(B, S+1, T)`` and ``py[b, u, t]`` is the log-prob of blank at ``(u, t)``
(arc to ``(u, t+1)``). ``boundary`` rows are ``[0, 0, S_b, T_b]``.
An alignment is a path from ``(0, 0)`` to the terminal ``(S_b, T_b)``; it makes
``T_b`` blank and ``S_b`` emit decisions, one at each *decision node* it
visits, so decision nodes are ``0 <= u <= S_b``, ``0 <= t < T_b``, and every
node tensor returned here is ``(B, S+1, T)`` indexed ``[b, u, t]``.

Choices made where the specification is silent:

* The regular topology is enforced on the inputs: ``px[b, :, t]`` for
  ``t >= T_b``, ``px[b, u, :]`` for ``u >= S_b``, ``py[b, u, :]`` for
  ``u > S_b`` and ``py[b, :, t]`` for ``t >= T_b`` are treated as ``-inf``
  whatever they hold (NaN or garbage in padding is harmless). In particular
  the only way into the terminal is the blank from ``(S_b, T_b - 1)``, and
  emitting on the one-past-the-last frame is impossible (k2's
  ``fix_for_boundary``).
* Node tensors are zero outside the valid region, and zero for an utterance
  whose lattice has no finite-score path (e.g. a broken pruned lattice).
* These functions return no gradient (posteriors are used as weights only).
  Internally half precision is promoted to float32; float64 stays float64.
* Occupancy is computed with fast_rnnt/k2's ``mutual_information_recursion``
  (``return_grad=True`` gives exact arc posteriors); the occupancy of a
  decision node is the sum of the posteriors of the arcs leaving it.
* Alignment sampling walks the posterior Markov chain with
  ``P(emit | (u, t)) = px_grad / (px_grad + py_grad)``; structurally forced
  moves are made exact (``u == S_b`` always blanks, ``t == T_b - 1`` with
  ``u < S_b`` always emits) so that every walker ends at the terminal.
* Random numbers are drawn on the generator's device (CPU when no generator
  is given and the data is on CPU) and moved to the data, so a CPU generator
  also works for CUDA tensors; categorical draws use the inverse CDF of one
  uniform number (found by binary search). :func:`sample_sequences` draws the
  uniforms of all frames in one call before its frame loop.
* Viterbi ties are broken at backtrace time in favour of the blank (time)
  predecessor: among equally good alignments the chosen one has the
  lexicographically largest *reversed* move sequence with blank > emit, so
  e.g. when everything ties, all symbols are emitted on frame 0.
* Empty label sequences (``S_b = 0``) are allowed everywhere: the lattice is
  the single row ``u = 0`` and every node ``(0, t)``, ``t < T_b`` has
  occupancy 1. The KD code maps such a sequence onto a one-row window (see
  :mod:`icefall_spkd.kd_losses`); sampled sequences may be empty.
* :func:`sample_sequences` treats only ``blank_id`` as "move on"; any other
  sampled id (``<unk>`` included) is appended, because that is what the
  distribution being sampled says. Frames ``t >= T_b`` never emit.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from icefall_spkd.pruned_rnnt import mutual_information_recursion
from icefall_spkd.search import advance_decoder, modified_beam_search, run_decoder

__all__ = [
    "node_occupancy",
    "sample_alignments",
    "viterbi_alignment",
    "sample_sequences",
    "nbest_sequences",
    "rotate_batch",
]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_lattice(px: Tensor, py: Tensor, boundary: Tensor) -> Tuple[int, int, int]:
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px, py must be 3-D, got {tuple(px.shape)}, {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[2]
    if T1 != T + 1 or py.shape != (B, S + 1, T):
        raise ValueError(
            "expected regular-RNN-T layouts px (B, S, T+1), py (B, S+1, T); got "
            f"{tuple(px.shape)}, {tuple(py.shape)}"
        )
    if boundary.shape != (B, 4):
        raise ValueError(f"boundary must be (B, 4), got {tuple(boundary.shape)}")
    if (boundary[:, 2] > S).any() or (boundary[:, 3] > T).any() or (boundary < 0).any():
        raise ValueError(f"boundary {boundary.tolist()} does not fit S={S}, T={T}")
    if (boundary[:, :2] != 0).any():
        raise ValueError("only boundaries starting at (0, 0) are supported")
    return B, S, T


def valid_node_mask(boundary: Tensor, S: int, T: int) -> Tensor:
    """Bool ``(B, S+1, T)``: decision node ``(u, t)`` with ``u <= S_b``, ``t < T_b``."""
    u = torch.arange(S + 1, device=boundary.device).view(1, S + 1, 1)
    t = torch.arange(T, device=boundary.device).view(1, 1, T)
    return (u <= boundary[:, 2].view(-1, 1, 1)) & (t < boundary[:, 3].view(-1, 1, 1))


def _regular_lattice(px: Tensor, py: Tensor, boundary: Tensor) -> Tuple[Tensor, Tensor]:
    """Copies of px, py (work dtype, no grad) with ``-inf`` outside the valid arcs."""
    B, S, T = _check_lattice(px, py, boundary)
    dt = _work_dtype(px)
    boundary = boundary.to(px.device)
    s_b = boundary[:, 2].view(B, 1, 1)
    t_b = boundary[:, 3].view(B, 1, 1)
    u_x = torch.arange(S, device=px.device).view(1, S, 1)
    t_x = torch.arange(T + 1, device=px.device).view(1, 1, T + 1)
    ok_x = (u_x < s_b) & (t_x < t_b)
    ok_y = valid_node_mask(boundary, S, T)
    neg_inf = torch.tensor(float("-inf"), dtype=dt, device=px.device)
    px_m = torch.where(ok_x, px.detach().to(dt), neg_inf).contiguous()
    py_m = torch.where(ok_y, py.detach().to(dt), neg_inf).contiguous()
    return px_m, py_m


def _arc_posteriors(
    px: Tensor, py: Tensor, boundary: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(px_post (B,S,T+1), py_post (B,S+1,T), ok (B,) bool, valid (B,S+1,T))."""
    px_m, py_m = _regular_lattice(px, py, boundary)
    B, S, T1 = px_m.shape
    T = T1 - 1
    boundary = boundary.to(px.device)
    with torch.no_grad():
        scores, (px_post, py_post) = mutual_information_recursion(
            px_m, py_m, boundary, return_grad=True
        )
    ok = torch.isfinite(scores)
    valid = valid_node_mask(boundary, S, T)
    zero = torch.zeros((), dtype=px_m.dtype, device=px_m.device)
    px_post = torch.where(ok.view(B, 1, 1), torch.nan_to_num(px_post), zero)
    py_post = torch.where(ok.view(B, 1, 1) & valid, torch.nan_to_num(py_post), zero)
    return px_post, py_post, ok, valid


def _uniform(
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    generator: Optional[torch.Generator],
) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------
# alignments inside one lattice
# ---------------------------------------------------------------------------


def node_occupancy(px: Tensor, py: Tensor, boundary: Tensor) -> Tensor:
    """Exact posterior probability that an alignment visits each decision node.

    Args:
      px: ``(B, S, T+1)`` emit log-probs (k2 regular layout; may be a pruned
        lattice with ``-inf`` outside its window).
      py: ``(B, S+1, T)`` blank log-probs.
      boundary: ``(B, 4)`` int64 rows ``[0, 0, S_b, T_b]``.
    Returns:
      ``(B, S+1, T)`` tensor ``gamma[b, u, t]``, zero outside ``u <= S_b, t < T_b``.
      For an utterance with at least one finite path it sums to ``T_b + S_b``.
    """
    px_post, py_post, _, _ = _arc_posteriors(px, py, boundary)
    S = px_post.shape[1]
    T = py_post.shape[2]
    occ = py_post.clone()
    occ[:, :S, :] += px_post[:, :, :T]
    return occ


def sample_alignments(
    px: Tensor,
    py: Tensor,
    boundary: Tensor,
    num_paths: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Visit frequencies of ``num_paths`` alignments drawn from the lattice posterior.

    Every walker starts at ``(0, 0)`` and at ``(u, t)`` emits with probability
    ``px_post / (px_post + py_post)``; it takes exactly ``T_b + S_b`` steps. All
    walkers of all utterances move together (one Python iteration per step).

    Returns:
      ``(B, S+1, T)`` visit count / ``num_paths``; its expectation is
      :func:`node_occupancy`. Zero for utterances without a finite path.
    """
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}")
    px_post, py_post, ok, _ = _arc_posteriors(px, py, boundary)
    B, S, T1 = px_post.shape
    T = T1 - 1
    device = px_post.device
    dt = px_post.dtype
    boundary = boundary.to(device)

    # P(emit | u, t) on the (S+1, T) node grid.
    emit_post = torch.zeros(B, S + 1, T, dtype=dt, device=device)
    emit_post[:, :S, :] = px_post[:, :, :T]
    denom = emit_post + py_post
    p_emit = torch.where(denom > 0, emit_post / denom.clamp(min=torch.finfo(dt).tiny), 0.0)
    u_grid = torch.arange(S + 1, device=device).view(1, S + 1, 1)
    t_grid = torch.arange(T, device=device).view(1, 1, T)
    s_b = boundary[:, 2].view(B, 1, 1)
    t_b = boundary[:, 3].view(B, 1, 1)
    p_emit = torch.where(u_grid >= s_b, 0.0, p_emit)  # no symbol left: blank
    p_emit = torch.where((u_grid < s_b) & (t_grid == t_b - 1), 1.0, p_emit)  # must emit
    p_emit = p_emit.reshape(B, (S + 1) * T)

    M = num_paths
    counts = torch.zeros(B, (S + 1) * T, dtype=dt, device=device)
    u = torch.zeros(B, M, dtype=torch.int64, device=device)
    t = torch.zeros(B, M, dtype=torch.int64, device=device)
    t_end = boundary[:, 3].view(B, 1)
    num_steps = int((boundary[:, 2] + boundary[:, 3]).max().item()) if B > 0 else 0
    for _ in range(num_steps):
        active = t < t_end  # (B, M); a walker at t == T_b has reached the terminal
        idx = (u * T + t).clamp(max=(S + 1) * T - 1)
        counts.scatter_add_(1, idx, active.to(dt))
        pe = torch.gather(p_emit, 1, idx)
        emit = (_uniform((B, M), device, dt, generator) < pe) & active
        blank = active & ~emit
        u = u + emit.long()
        t = t + blank.long()
    freq = counts.view(B, S + 1, T) / M
    return torch.where(ok.view(B, 1, 1), freq, torch.zeros((), dtype=dt, device=device))


def viterbi_alignment(px: Tensor, py: Tensor, boundary: Tensor) -> Tensor:
    """0/1 visits of the single best alignment (max-product DP and backtrace).

    The DP runs over anti-diagonals ``d = u + t`` (vectorised over the batch
    and the diagonal). Ties: at backtrace the blank (time) predecessor wins, see
    the module docstring. Returns ``(B, S+1, T)`` in the dtype of the work
    (float32/float64), zero for utterances without a finite path.
    """
    px_m, py_m = _regular_lattice(px, py, boundary)
    B, S, T1 = px_m.shape
    T = T1 - 1
    device = px_m.device
    dt = px_m.dtype
    boundary = boundary.to(device)
    neg_inf = float("-inf")

    alpha = torch.full((B, S + 1, T + 1), neg_inf, dtype=dt, device=device)
    alpha[:, 0, 0] = 0.0
    via_emit = torch.zeros(B, S + 1, T + 1, dtype=torch.bool, device=device)
    for d in range(1, S + T + 1):
        u = torch.arange(max(0, d - T), min(S, d) + 1, device=device)
        t = d - u
        tm1 = (t - 1).clamp(min=0)
        um1 = (u - 1).clamp(min=0)
        none = torch.full((B, u.numel()), neg_inf, dtype=dt, device=device)
        from_blank, from_emit = none, none
        if T > 0:  # blank arc (u, t-1) -> (u, t)
            from_blank = alpha[:, u, tm1] + py_m[:, u, tm1.clamp(max=T - 1)]
        if S > 0:  # emit arc (u-1, t) -> (u, t)
            from_emit = alpha[:, um1, t] + px_m[:, um1.clamp(max=S - 1), t]
        from_blank = torch.where((t >= 1).view(1, -1), from_blank, neg_inf)
        from_emit = torch.where((u >= 1).view(1, -1), from_emit, neg_inf)
        emit_wins = from_emit > from_blank  # strict: ties go to the blank predecessor
        alpha[:, u, t] = torch.where(emit_wins, from_emit, from_blank)
        via_emit[:, u, t] = emit_wins

    bidx = torch.arange(B, device=device)
    cur_u = boundary[:, 2].clone()
    cur_t = boundary[:, 3].clone()
    ok = torch.isfinite(alpha[bidx, cur_u, cur_t])
    visits = torch.zeros(B, S + 1, T + 1, dtype=dt, device=device)
    for _ in range(S + T):
        active = (cur_u + cur_t) > 0
        e = via_emit[bidx, cur_u, cur_t] & active
        cur_u = cur_u - e.long()
        cur_t = cur_t - (active & ~e).long()
        visits[bidx, cur_u, cur_t] += active.to(dt)
    visits = visits[:, :, :T]
    return torch.where(ok.view(B, 1, 1), visits, torch.zeros((), dtype=dt, device=device))


# ---------------------------------------------------------------------------
# label sequences
# ---------------------------------------------------------------------------


def _categorical_from_uniform(probs: Tensor, r: Tensor) -> Tensor:
    """Inverse CDF of each row of ``probs`` (N, V) at ``r`` (N, 1) in [0, 1).

    ``k = #{j : cdf_j <= r * cdf_V}`` (a binary search instead of a compare
    over the whole row), clamped to ``V - 1``.
    """
    cdf = probs.cumsum(dim=-1)
    k = torch.searchsorted(cdf, r * cdf[:, -1:], right=True).squeeze(1)
    return k.clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_sequences(
    model: Any,
    encoder_out: Tensor,
    encoder_out_lens: Tensor,
    num_samples: int,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
    sync_free: Optional[bool] = None,
) -> List[List[List[int]]]:
    """Ancestral sampling of label sequences with at most one symbol per frame.

    For each frame ``t < T_b`` of each of the ``B * num_samples`` hypotheses:
    ``k ~ softmax(joiner(enc_t, dec(hyp)) / temperature)``; if ``k`` is blank
    the hypothesis just moves on, else ``k`` is appended (and the frame moves
    on too). The decoder is re-run only for hypotheses that emitted
    (:func:`icefall_spkd.search.advance_decoder`, the step greedy search
    takes). The initial decoder context is ``context_size`` blanks, matching
    a decoder trained with ``need_pad=True`` blank padding.

    Call it with the model in eval mode; no gradient is recorded.

    Args:
      model: a Transducer (``model.decoder(y, need_pad=False)``,
        ``model.joiner(enc, dec, project_input=False)`` with
        ``joiner.encoder_proj`` / ``joiner.decoder_proj``).
      encoder_out: ``(B, T, C)``.
      encoder_out_lens: ``(B,)``.
      num_samples: sequences per utterance.
      temperature: ``> 0`` (greedy search is :func:`icefall_spkd.search.greedy_search_batch`).
      generator: optional ``torch.Generator`` (any device).
      sync_free: how a frame's emissions reach the decoder. False: find the
        hypotheses that emitted (``nonzero``, which makes the host wait for
        the device) and run the decoder on those alone. True: run it on every
        hypothesis and keep the result where one emitted (``torch.where``),
        so the frame loop never waits; on a GPU the waits, not the
        arithmetic, bound the indexed loop (RESULTS.md, "The GPU code
        paths"). Default: True on CUDA, False elsewhere. Both give the same
        sequences (up to the rounding of a different batch size in the
        decoder).
    Returns:
      ``out[b][n]``: the ``n``-th sampled token list (no blanks; may be empty).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    blank_id, context_size = model.decoder.blank_id, model.decoder.context_size
    B, T, _ = encoder_out.shape
    device = encoder_out.device
    N = B * num_samples
    enc = model.joiner.encoder_proj(encoder_out.repeat_interleave(num_samples, dim=0))
    lens = encoder_out_lens.to(device).repeat_interleave(num_samples, dim=0)

    context = torch.full((N, context_size), blank_id, dtype=torch.int64, device=device)
    dec = model.joiner.decoder_proj(model.decoder(context, need_pad=False)).squeeze(1)
    # tokens[i, t]: the token hypothesis i emitted at frame t, or -1 (lists at the end).
    tokens = torch.full((N, max(T, 1)), -1, dtype=torch.int64, device=device)
    t_max = min(T, int(lens.max().item()) if N > 0 else 0)
    # One uniform per hypothesis and frame, drawn up front (a single RNG call).
    uniforms = _uniform((t_max, N, 1), device, torch.float32, generator)
    if sync_free is None:
        sync_free = device.type == "cuda"
    for t in range(t_max):
        logits = model.joiner(enc[:, t], dec, project_input=False).float()  # (N, V)
        k = _categorical_from_uniform(torch.softmax(logits / temperature, dim=-1), uniforms[t])
        emitted = (k != blank_id) & (lens > t)
        if sync_free:
            tokens[:, t] = torch.where(emitted, k, -1)
            advanced = torch.cat([context[:, 1:], k.unsqueeze(1)], dim=1)
            context = torch.where(emitted.unsqueeze(1), advanced, context)
            dec = torch.where(emitted.unsqueeze(1), run_decoder(model, advanced).to(dec.dtype), dec)
        else:
            idx = emitted.nonzero().squeeze(1)
            if idx.numel() > 0:
                tokens[idx, t] = k[idx]
                advance_decoder(model, context, dec, idx, k[idx])
    rows = tokens.tolist()
    hyps = [[v for v in row if v >= 0] for row in rows]
    return [hyps[b * num_samples : (b + 1) * num_samples] for b in range(B)]


def nbest_sequences(
    model: Any,
    encoder_out: Tensor,
    encoder_out_lens: Tensor,
    num: int,
    beam: int,
) -> List[List[List[int]]]:
    """The distinct hypotheses of modified beam search, best first (``<= num`` each).

    Built on ``icefall_spkd.search.modified_beam_search(..., return_nbest=True)``,
    which gives per utterance ``(tokens, log_prob)`` pairs best first by the
    search's own final ranking (length-normalised log-prob by default, see
    search.py); that order is kept. Fewer than ``num`` are returned when the
    beam ends with fewer distinct hypotheses. Deterministic. Raises
    ``ValueError`` if ``beam < num``.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if beam < num:
        raise ValueError(f"beam ({beam}) must be >= num ({num}) for an n-best list")
    with torch.no_grad():
        nbest = modified_beam_search(
            model, encoder_out, encoder_out_lens, beam=beam, return_nbest=True
        )
    out: List[List[List[int]]] = []
    for hyps in nbest:
        seen = set()
        kept: List[List[int]] = []
        for item in hyps:
            tokens = list(item[0])
            key = tuple(tokens)
            if key in seen:
                continue
            seen.add(key)
            kept.append(tokens)
            if len(kept) == num:
                break
        out.append(kept)
    return out


def rotate_batch(token_ids: Sequence[Sequence[int]], n: int) -> List[List[int]]:
    """``y~_b = y_((b + n) mod B)``: other utterances' transcripts (authors' setting).

    With ``n % B == 0`` (e.g. ``B == 1``) an utterance gets its own transcript.
    """
    B = len(token_ids)
    return [list(token_ids[(b + n) % B]) for b in range(B)] if B else []
