"""SP-KD losses: pruned KD (PKD), its sampling term, and the lattice-KD baselines.

Implements the recipe of ``docs/SPKD.md``:

* :func:`pruned_kd_loss` - per-node forward ``KL(p_T || p_S) * tau^2`` over the
  full vocabulary on the nodes of a ``(B, T, R)`` window, masked and weighted,
  summed.
* :func:`node_weights_from_lattice` - ``uniform | sampled | posterior | viterbi``
  node weights on that window, from the teacher's pruned lattice.
* :func:`full_lattice_kd_loss` / :func:`collapsed_kd_loss` - the baselines of
  Panchapagesan et al. (ICASSP 2021): full-vocabulary KL, or KL between the
  3-class ``{y_(u+1), blank, rest}`` distributions, at every valid node.
* :func:`compute_kd_losses` - everything above wired to two models'
  :class:`TransducerOutputs`, plus ``L_samp`` over sampled sequences.

Choices made where the specification is silent:

* Teacher logits are always ``detach()``-ed and computed under ``no_grad``;
  all KD arithmetic is in float32 (float64 if given float64), whatever autocast
  produced. The losses are sums (``"sum"`` reduction, like the transducer
  losses); :func:`compute_kd_losses` returns them unscaled, the training script
  applies ``lambda`` and ``rho``.
* Masked nodes (``t >= T_b`` or ``u > U_b``) have their logits replaced by zeros
  before the softmax, so padding holding anything (even inf/NaN) changes
  neither the loss nor any gradient, and the student's padded nodes get an
  exactly-zero gradient.
* ``pruned_kd_loss(node_weights=None)`` is the raw paper form: weight 1 per
  unmasked node. :func:`compute_kd_losses` always passes weights from
  :func:`node_weights_from_lattice`, which normalises *every* kind (uniform
  included) to a total of ``T_b`` per utterance (one unit per frame), so that
  ``lambda`` keeps its meaning across ``--kd-node-weights``. The scaling is one
  factor per utterance (not per frame). An utterance whose weights sum to 0
  (no finite path in its lattice) gets weight 0.
* ``sampled`` / ``posterior`` / ``viterbi`` weights are node tensors over the
  teacher's pruned lattice (``get_rnnt_logprobs_pruned`` on the KD window:
  ``-inf`` outside it, so the posterior lives on the window). Mass on nodes
  outside the window (possible only if the lattice and the window differ) is
  lost by construction, before normalisation.
* Empty sequences (a sampler may produce them; references too): the lattice
  is the single row ``u = 0``. k2/fast_rnnt assert ``S_b >= 1`` in
  ``get_rnnt_prune_ranges`` and ``get_rnnt_logprobs_pruned`` although they use
  ``S_b`` for nothing else that matters here, so those calls get ``S_b``
  raised to 1; the window of an empty sequence is then forced to start at
  ``u = 0`` (all-empty batch: a width-1 window of zeros), and the true
  boundary (``U_b = 0``) masks every window position but ``u = 0``. So an
  empty sequence contributes the KL at ``(t, 0)`` for every ``t < T_b``
  (blank-context nodes), which is exactly its lattice; with lattice-based node
  weights each of those nodes has occupancy 1. The model's
  ``transducer_outputs`` accepts empty sequences (see models/transducer.py).
* Collapsed KD at ``u = U_b`` (no next reference token) uses 2 classes
  ``{blank, rest}``; the temperature applies to the full softmax before
  collapsing, and the ``tau^2`` factor is kept for symmetry with PKD.
* For ``--kd-loss full|collapsed`` the node weights are ignored (every valid
  node weighs 1, as in the paper) and a sampler, if set, applies the same loss
  to each sampled sequence.
* ``--kd-sampler nbest`` uses beam ``max(N, 4)`` (``params.kd_nbest_beam`` if
  set); an utterance with fewer than ``N`` distinct hypotheses repeats its list
  cyclically, so ``L_samp`` is still an average over ``N`` sequences.
* ``--kd-sampler batch`` uses rotations ``n = 1..N``; when ``n % B == 0`` an
  utterance is paired with its own transcript (as in the authors' code).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from icefall_spkd import pruned_rnnt
from icefall_spkd.sampling import (
    nbest_sequences,
    node_occupancy,
    rotate_batch,
    sample_alignments,
    sample_sequences,
    viterbi_alignment,
)

__all__ = [
    "NODE_WEIGHT_KINDS",
    "KD_LOSSES",
    "KD_SAMPLERS",
    "pruned_kd_loss",
    "node_weights_from_lattice",
    "pruned_lattice_logprobs",
    "full_lattice_kd_loss",
    "collapsed_kd_loss",
    "kd_prune_ranges",
    "compute_kd_losses",
]

NODE_WEIGHT_KINDS = ("uniform", "sampled", "posterior", "viterbi")
KD_LOSSES = ("none", "pkd", "full", "collapsed")
KD_SAMPLERS = ("teacher", "nbest", "batch", "none")


# ---------------------------------------------------------------------------
# per-node KL
# ---------------------------------------------------------------------------


def _float(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _window_mask(ranges: Tensor, boundary: Tensor) -> Tensor:
    """Bool ``(B, T, R)``: frame ``t < T_b`` and window position ``u <= U_b``."""
    B, T, _ = ranges.shape
    boundary = boundary.to(ranges.device)
    t = torch.arange(T, device=ranges.device).view(1, T, 1)
    return (t < boundary[:, 3].view(B, 1, 1)) & (ranges <= boundary[:, 2].view(B, 1, 1))


def _masked_kl(
    teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float
) -> Tensor:
    """Per-node ``KL(softmax(zT/tau) || softmax(zS/tau))``, 0 at masked nodes."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher/student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    m = mask.unsqueeze(-1)
    zt = torch.where(m, _float(teacher_logits.detach()), 0.0)
    zs = torch.where(m, _float(student_logits), 0.0)
    log_pt = torch.log_softmax(zt / temperature, dim=-1)
    log_ps = torch.log_softmax(zs / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
    return torch.where(mask, kl, 0.0)


def pruned_kd_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    ranges: Tensor,
    boundary: Tensor,
    temperature: float = 1.0,
    node_weights: Optional[Tensor] = None,
) -> Tensor:
    """Pruned KD: ``sum_b sum_t sum_k w * KL(p_T || p_S) * tau^2`` on a window.

    Args:
      teacher_logits: ``(B, T, R, V)`` teacher joiner logits on the nodes
        ``(t, u = ranges[b, t, k])`` (detached here).
      student_logits: ``(B, T, R, V)`` student joiner logits on the SAME nodes.
      ranges: ``(B, T, R)`` int64 window (the teacher's, or the student's with
        ``--kd-ranges student``; the same tensor for both models).
      boundary: ``(B, 4)`` int64 ``[0, 0, U_b, T_b]``.
      temperature: ``tau``.
      node_weights: optional ``(B, T, R)``; default 1 per unmasked node.
    Returns:
      scalar (float32) loss.
    """
    mask = _window_mask(ranges, boundary)
    kl = _masked_kl(teacher_logits, student_logits, mask, temperature)
    if node_weights is not None:
        if node_weights.shape != kl.shape:
            raise ValueError(f"node_weights {tuple(node_weights.shape)} != {tuple(kl.shape)}")
        kl = kl * torch.where(mask, node_weights.detach().to(kl.dtype), 0.0)
    return kl.sum() * (temperature**2)


def _full_ranges(B: int, T: int, U1: int, device: torch.device) -> Tensor:
    return torch.arange(U1, device=device).view(1, 1, U1).expand(B, T, U1).contiguous()


def full_lattice_kd_loss(
    teacher_logits_full: Tensor,
    student_logits_full: Tensor,
    boundary: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Full-lattice KD: full-vocabulary ``KL * tau^2`` at every valid node.

    Logits are ``(B, T, U+1, V)`` indexed ``[b, t, u]``; valid nodes are
    ``t < T_b``, ``u <= U_b``. Sum over nodes and batch.
    """
    B, T, U1, _ = teacher_logits_full.shape
    ranges = _full_ranges(B, T, U1, teacher_logits_full.device)
    mask = _window_mask(ranges, boundary)
    kl = _masked_kl(teacher_logits_full, student_logits_full, mask, temperature)
    return kl.sum() * (temperature**2)


def _collapsed_logprobs(z: Tensor, next_tok: Tensor, blank_id: int) -> Tensor:
    """(…, V) logits -> (…, 3) log-probs of {next token, blank, rest}.

    ``next_tok`` (…) is -1 where there is no next token (the class is then
    impossible: log-prob -inf, and "rest" takes everything but blank).
    """
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    logp = z - lse
    has_next = next_tok >= 0
    idx = next_tok.clamp(min=0).unsqueeze(-1)
    lp_next = torch.where(has_next, torch.gather(logp, -1, idx).squeeze(-1), float("-inf"))
    lp_blank = logp[..., blank_id]
    V = z.shape[-1]
    vocab = torch.arange(V, device=z.device)
    excluded = (vocab == blank_id) | ((vocab == idx) & has_next.unsqueeze(-1))
    rest = z.masked_fill(excluded, float("-inf"))
    none_left = excluded.all(dim=-1, keepdim=True)
    # keep the logsumexp (and its gradient) finite when no "rest" token exists
    rest = torch.where(none_left & (vocab == 0), 0.0, rest)
    lp_rest = (torch.logsumexp(rest, dim=-1, keepdim=True) - lse).squeeze(-1)
    lp_rest = torch.where(none_left.squeeze(-1), float("-inf"), lp_rest)
    return torch.stack([lp_next, lp_blank, lp_rest], dim=-1)


def collapsed_kd_loss(
    teacher_logits_full: Tensor,
    student_logits_full: Tensor,
    y_padded: Tensor,
    boundary: Tensor,
    temperature: float = 1.0,
    blank_id: int = 0,
) -> Tensor:
    """Collapsed ("efficient") KD: KL of ``{y_(u+1), blank, rest}`` at every valid node.

    Args:
      teacher_logits_full, student_logits_full: ``(B, T, U+1, V)``.
      y_padded: ``(B, U)`` int64 reference tokens (padding arbitrary).
      boundary: ``(B, 4)`` ``[0, 0, U_b, T_b]``.
      temperature: ``tau`` (softmax of ``z / tau`` before collapsing; ``* tau^2``).
      blank_id: blank's id.
    At ``u = U_b`` there is no next token and the distribution is 2-class
    ``{blank, rest}``.
    """
    B, T, U1, V = teacher_logits_full.shape
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = teacher_logits_full.device
    boundary = boundary.to(device)
    ranges = _full_ranges(B, T, U1, device)
    mask = _window_mask(ranges, boundary)
    u = torch.arange(U1, device=device).view(1, U1)
    y_ext = torch.cat(
        [y_padded.to(device), torch.full((B, 1), -1, dtype=torch.int64, device=device)], dim=1
    )[:, :U1]
    next_tok = torch.where(u < boundary[:, 2].view(B, 1), y_ext, -1)  # (B, U+1)
    next_tok = next_tok.view(B, 1, U1).expand(B, T, U1)
    m = mask.unsqueeze(-1)
    zt = torch.where(m, _float(teacher_logits_full.detach()), 0.0) / temperature
    zs = torch.where(m, _float(student_logits_full), 0.0) / temperature
    lpt = _collapsed_logprobs(zt, next_tok, blank_id)
    lps = _collapsed_logprobs(zs, next_tok, blank_id)
    pt = lpt.exp()
    terms = torch.where(pt > 0, pt * (lpt - torch.where(pt > 0, lps, 0.0)), 0.0)
    kl = torch.where(mask, terms.sum(dim=-1), 0.0)
    return kl.sum() * (temperature**2)


# ---------------------------------------------------------------------------
# node weights on a window
# ---------------------------------------------------------------------------


def pruned_lattice_logprobs(
    logits: Tensor, symbols: Tensor, ranges: Tensor, blank_id: int, boundary: Tensor
) -> Tuple[Tensor, Tensor]:
    """``get_rnnt_logprobs_pruned`` (regular) that also accepts ``U_b = 0`` rows.

    Returns k2's ``px (B, S, T+1)``, ``py (B, S+1, T)`` (``-inf`` outside the
    window) in float32. The backend refuses ``S_b = 0``; its boundary is used
    only for that check and to put ``-inf`` in column ``T_b``, so it is called
    with ``S_b`` clamped to >= 1, and the rows of an empty sequence are ignored
    downstream anyway (the true boundary has ``S_b = 0``).
    """
    B, S = symbols.shape
    safe_boundary = boundary.clone()
    safe_boundary[:, 2] = safe_boundary[:, 2].clamp(min=1)
    sym = symbols
    if S == 0:
        sym = torch.full((B, 1), blank_id, dtype=torch.int64, device=symbols.device)
    px, py = pruned_rnnt.get_rnnt_logprobs_pruned(
        logits=_float(logits.detach()),
        symbols=sym,
        ranges=ranges,
        termination_symbol=blank_id,
        boundary=safe_boundary,
        rnnt_type="regular",
    )
    if S == 0:
        px, py = px[:, :0, :], py[:, :1, :]
    return px, py


def node_weights_from_lattice(
    kind: str,
    px: Optional[Tensor],
    py: Optional[Tensor],
    boundary: Tensor,
    ranges: Tensor,
    num_paths: int = 16,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Node weights ``(B, T, R)`` on the window ``ranges``, total ``T_b`` per utterance.

    Args:
      kind: ``uniform`` (same weight for every unmasked window node),
        ``sampled`` (visit frequency of ``num_paths`` posterior alignments),
        ``posterior`` (exact occupancy), ``viterbi`` (best alignment).
      px, py: the teacher's pruned-lattice log-probs (k2 layouts,
        :func:`pruned_lattice_logprobs`); unused for ``uniform`` (may be None).
      boundary: ``(B, 4)`` ``[0, 0, U_b, T_b]``.
      ranges: ``(B, T, R)`` window.
    Node tensors ``(B, U+1, T)`` are read at ``[b, ranges[b, t, k], t]``;
    weight on nodes outside the window is lost by construction.
    """
    if kind not in NODE_WEIGHT_KINDS:
        raise ValueError(f"unknown node-weight kind {kind!r}; choose from {NODE_WEIGHT_KINDS}")
    B, T, R = ranges.shape
    boundary = boundary.to(ranges.device)
    mask = _window_mask(ranges, boundary)
    if kind == "uniform":
        w = mask.float()
    else:
        if px is None or py is None:
            raise ValueError(f"node weights {kind!r} need the lattice px, py")
        if kind == "posterior":
            g = node_occupancy(px, py, boundary)
        elif kind == "sampled":
            g = sample_alignments(px, py, boundary, num_paths, generator=generator)
        else:
            g = viterbi_alignment(px, py, boundary)
        U1 = g.shape[1]
        if g.shape[2] != T:
            raise ValueError(f"lattice has {g.shape[2]} frames, window has {T}")
        g_tu = g.transpose(1, 2).float()  # (B, T, U+1)
        w = torch.gather(g_tu, 2, ranges.clamp(max=U1 - 1))
        w = torch.where(mask & (ranges < U1), w, 0.0)
    total = w.sum(dim=(1, 2))
    t_b = boundary[:, 3].to(w.dtype)
    scale = torch.where(total > 0, t_b / total.clamp(min=1e-30), 0.0)
    return w * scale.view(B, 1, 1)


def kd_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    """KD window from simple-loss occupancies (``get_rnnt_prune_ranges``)."""
    return pruned_rnnt.get_rnnt_prune_ranges(
        px_grad=px_grad.detach().float(),
        py_grad=py_grad.detach().float(),
        boundary=boundary,
        s_range=s_range,
    )


# ---------------------------------------------------------------------------
# the whole recipe
# ---------------------------------------------------------------------------


def _get(params: Any, name: str, default: Any) -> Any:
    if isinstance(params, dict):
        return params.get(name, default)
    return getattr(params, name, default)


def _blank_id(model: Any) -> int:
    b = getattr(model, "blank_id", None)
    return int(model.decoder.blank_id if b is None else b)


def _decoder_out(model: Any, y_padded: Tensor, blank_id: int) -> Tensor:
    """``model.decoder`` on ``[blank] + y`` -> ``(B, U+1, D)`` (TransducerOutputs.decoder_out)."""
    run_decoder = getattr(model, "run_decoder", None)
    if run_decoder is not None:
        return run_decoder(y_padded)
    sos_y = F.pad(y_padded, (1, 0), value=blank_id)
    return model.decoder(sos_y, need_pad=True)


def _pad(seqs: Sequence[Sequence[int]], device: torch.device) -> Tuple[Tensor, Tensor]:
    lens = [len(s) for s in seqs]
    y = torch.zeros(len(seqs), max(lens, default=0), dtype=torch.int64)
    for i, s in enumerate(seqs):
        if s:
            y[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return y.to(device), torch.tensor(lens, dtype=torch.int64, device=device)


def _lattice_kd(
    teacher: Any,
    student: Any,
    t_enc: Tensor,
    s_enc: Tensor,
    enc_lens: Tensor,
    y_padded: Tensor,
    y_lens: Tensor,
    params: Any,
    generator: Optional[torch.Generator],
    teacher_out: Any = None,
    student_out: Any = None,
) -> Tensor:
    """KD loss (per --kd-loss) of one label sequence per utterance.

    With ``teacher_out`` / ``student_out`` (the reference transcripts) their
    decoder outputs and simple-loss occupancies are reused; otherwise the
    decoders are run on ``y_padded`` (and, for PKD, the teacher's - or with
    ``--kd-ranges student`` the student's - ``transducer_outputs`` under
    ``no_grad`` for the KD window).
    """
    kd_loss = _get(params, "kd_loss", "pkd")
    tau = float(_get(params, "kd_temperature", 1.0))
    blank_id = _blank_id(teacher)
    device = s_enc.device
    B, T = s_enc.shape[0], s_enc.shape[1]
    use_ref = teacher_out is not None
    y_padded = y_padded.to(device)
    y_lens = y_lens.to(device)
    enc_lens = enc_lens.to(device)

    # Empty sequences: k2 asserts S_b >= 1, so its calls get S_b raised to 1
    # (see the module docstring); the true boundary masks the extra rows.
    empty = y_lens == 0
    zeros = torch.zeros_like(enc_lens)
    boundary = torch.stack([zeros, zeros, y_lens, enc_lens], dim=1)
    boundary_k2 = torch.stack([zeros, zeros, y_lens.clamp(min=1), enc_lens], dim=1)
    U = y_padded.shape[1]

    # decoder outputs on [blank] + y
    if use_ref:
        t_dec = teacher_out.decoder_out
        s_dec = student_out.decoder_out
    else:
        with torch.no_grad():
            t_dec = _decoder_out(teacher, y_padded, blank_id)
        s_dec = _decoder_out(student, y_padded, blank_id)

    if kd_loss in ("full", "collapsed"):
        full = _full_ranges(B, T, U + 1, device)
        with torch.no_grad():
            zt = teacher.joiner_on_ranges(t_enc, t_dec, full)
        zs = student.joiner_on_ranges(s_enc, s_dec, full)
        if kd_loss == "full":
            return full_lattice_kd_loss(zt, zs, boundary, tau)
        return collapsed_kd_loss(zt, zs, y_padded, boundary, tau, blank_id=blank_id)
    if kd_loss != "pkd":
        raise ValueError(f"unknown kd_loss {kd_loss!r}; choose from {KD_LOSSES}")

    # --- PKD: the KD window from the chosen model's simple-loss occupancies ---
    kd_range = int(_get(params, "kd_prune_range", 5))
    which = _get(params, "kd_ranges", "teacher")
    if which not in ("teacher", "student"):
        raise ValueError(f"kd_ranges must be teacher|student, got {which!r}")
    if U == 0:  # every sequence empty: the lattice is the row u = 0
        ranges = torch.zeros(B, T, 1, dtype=torch.int64, device=device)
    else:
        out_for_ranges = teacher_out if which == "teacher" else student_out
        if not use_ref:
            model_for_ranges = teacher if which == "teacher" else student
            enc_for_ranges = t_enc if which == "teacher" else s_enc
            with torch.no_grad():
                out_for_ranges = model_for_ranges.transducer_outputs(
                    enc_for_ranges.detach(),
                    enc_lens,
                    y_padded,
                    y_lens,
                    prune_range=int(_get(params, "prune_range", 5)),
                    am_scale=float(_get(params, "am_scale", 0.0)),
                    lm_scale=float(_get(params, "lm_scale", 0.0)),
                )
        ranges = kd_prune_ranges(
            out_for_ranges.px_grad, out_for_ranges.py_grad, boundary_k2, kd_range
        )
        if bool(empty.any()):  # an empty sequence's window starts at u = 0
            R = ranges.shape[2]
            start = torch.arange(R, device=device).view(1, 1, R).expand(B, T, R)
            ranges = torch.where(empty.view(B, 1, 1), start, ranges)

    with torch.no_grad():
        if (
            use_ref
            and which == "teacher"
            and teacher_out.ranges.shape == ranges.shape
            and torch.equal(teacher_out.ranges, ranges)
        ):
            zt = teacher_out.logits.detach()
        else:
            zt = teacher.joiner_on_ranges(t_enc, t_dec, ranges)
    zs = student.joiner_on_ranges(s_enc, s_dec, ranges)

    kind = _get(params, "kd_node_weights", "uniform")
    px = py = None
    if kind != "uniform":
        px, py = pruned_lattice_logprobs(zt, y_padded, ranges, blank_id, boundary)
    weights = node_weights_from_lattice(
        kind,
        px,
        py,
        boundary,
        ranges,
        num_paths=int(_get(params, "kd_num_paths", 16)),
        generator=generator,
    )
    return pruned_kd_loss(zt, zs, ranges, boundary, tau, weights)


def _sampled_sequences(
    teacher: Any,
    t_enc: Tensor,
    enc_lens: Tensor,
    y_list: List[List[int]],
    params: Any,
    generator: Optional[torch.Generator],
) -> List[List[List[int]]]:
    """``out[n][b]``: the n-th sampled sequence of utterance b (n < N)."""
    sampler = _get(params, "kd_sampler", "none")
    N = int(_get(params, "kd_num_samples", 1))
    B = len(y_list)
    if sampler == "none" or N <= 0:
        return []
    if sampler == "teacher":
        per_utt = sample_sequences(
            teacher,
            t_enc,
            enc_lens,
            N,
            temperature=float(_get(params, "kd_sample_temperature", 1.0)),
            generator=generator,
        )
    elif sampler == "nbest":
        beam = max(N, int(_get(params, "kd_nbest_beam", 4)))
        nb = nbest_sequences(teacher, t_enc, enc_lens, num=N, beam=beam)
        per_utt = []
        for hyps in nb:
            hyps = hyps if hyps else [[]]
            per_utt.append([hyps[n % len(hyps)] for n in range(N)])
    elif sampler == "batch":
        return [rotate_batch(y_list, n) for n in range(1, N + 1)]
    else:
        raise ValueError(f"unknown kd_sampler {sampler!r}; choose from {KD_SAMPLERS}")
    return [[per_utt[b][n] for b in range(B)] for n in range(N)]


def compute_kd_losses(
    teacher: Any,
    student: Any,
    teacher_out: Any,
    student_out: Any,
    y_padded: Tensor,
    y_lens: Tensor,
    params: Any,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    """The SP-KD recipe of ``docs/SPKD.md`` on one batch.

    Args:
      teacher, student: Transducers (teacher frozen, eval mode).
      teacher_out, student_out: their ``TransducerOutputs`` on the reference
        ``(x, y)`` (same frame rate: equal ``encoder_out_lens`` required).
      y_padded, y_lens: reference tokens ``(B, U)``, ``(B,)``.
      params: dict/AttributeDict/Namespace with ``kd_loss`` (none|pkd|full|
        collapsed), ``kd_sampler`` (teacher|nbest|batch|none),
        ``kd_num_samples``, ``kd_sample_temperature``, ``kd_temperature``,
        ``kd_prune_range``, ``kd_ranges`` (teacher|student),
        ``kd_node_weights``, ``kd_num_paths``; also read: ``prune_range``,
        ``am_scale``, ``lm_scale`` (for the simple loss on sampled sequences).
        ``kd_scale`` / ``kd_sampling_scale`` are NOT applied here.
      generator: for the sampler and ``sampled`` node weights.
    Returns:
      ``kd`` (L_PKD or the baseline's loss on the reference, a sum),
      ``kd_samp`` (``(1/N) sum_n`` of the same on sampled sequences; 0 if no
      sampler), ``kd_frames`` (sum of ``T_b``), and detached statistics
      ``kd_samp_tokens`` (sampled tokens per sequence) and ``kd_samp_empty``
      (fraction of empty sampled sequences).
    """
    s_enc = student_out.encoder_out
    device = s_enc.device
    enc_lens = student_out.encoder_out_lens.to(device)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    out: Dict[str, Tensor] = {
        "kd": zero,
        "kd_samp": zero,
        "kd_frames": enc_lens.sum().to(torch.float32),
    }
    kd_loss = _get(params, "kd_loss", "none")
    if kd_loss == "none":
        return out
    if kd_loss not in KD_LOSSES:
        raise ValueError(f"unknown kd_loss {kd_loss!r}; choose from {KD_LOSSES}")
    t_enc = teacher_out.encoder_out.detach()
    if t_enc.shape[:2] != s_enc.shape[:2] or not torch.equal(
        teacher_out.encoder_out_lens.to(device), enc_lens
    ):
        raise ValueError(
            "teacher and student must have the same encoder frame rate: got "
            f"{tuple(t_enc.shape[:2])} / {tuple(s_enc.shape[:2])}"
        )
    y_lens_l = y_lens.tolist()
    y_list = [y_padded[b, : y_lens_l[b]].tolist() for b in range(len(y_lens_l))]

    out["kd"] = _lattice_kd(
        teacher,
        student,
        t_enc,
        s_enc,
        enc_lens,
        y_padded,
        y_lens,
        params,
        generator,
        teacher_out=teacher_out,
        student_out=student_out,
    )

    samples = _sampled_sequences(teacher, t_enc, enc_lens, y_list, params, generator)
    if samples:
        total = zero
        for seqs in samples:
            y_s, y_s_lens = _pad(seqs, device)
            total = total + _lattice_kd(
                teacher, student, t_enc, s_enc, enc_lens, y_s, y_s_lens, params, generator
            )
        out["kd_samp"] = total / len(samples)
        lens = torch.tensor([len(s) for seqs in samples for s in seqs], dtype=torch.float32)
        out["kd_samp_tokens"] = lens.mean().to(device)
        out["kd_samp_empty"] = (lens == 0).float().mean().to(device)
    return out
