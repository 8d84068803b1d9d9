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
* Cost: the ``N`` sampled sequences of all ``B`` utterances go through ONE
  pass of ``B*N`` rows (encoder outputs repeated, never recomputed; one
  decoder run and one joiner call per model; the teacher's KD window comes
  from its simple-loss occupancies only, without the joiner and pruned loss
  that ``transducer_outputs`` would add). ``L_samp`` is that sum divided by
  ``N``, i.e. the average of the ``N`` per-sample sums. The window width is
  then common to the ``B*N`` rows, exactly as it already is to the ``B`` rows
  of one batch: the backend widens ``R_kd`` for the whole batch only for
  sequences with more than ~``R_kd - 2`` tokens per frame (impossible for the
  ``teacher`` / ``nbest`` samplers, one symbol per frame), and narrows it to
  ``U_max + 1`` when every sequence is shorter than the window (the extra
  positions of a wider window are masked, so the loss is the same). The KL's
  backward is hand-written (:class:`_NodeKL`): one full-vocabulary tensor is
  kept instead of three.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

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
    "set_profiler",
]

NODE_WEIGHT_KINDS = ("uniform", "sampled", "posterior", "viterbi")
KD_LOSSES = ("none", "pkd", "full", "collapsed")
KD_SAMPLERS = ("teacher", "nbest", "batch", "none")


# ---------------------------------------------------------------------------
# optional section timing (benchmark_kd.py); a no-op unless a profiler is set
# ---------------------------------------------------------------------------

_PROFILER: Any = None


def set_profiler(profiler: Any) -> Any:
    """Install ``profiler`` (an object with ``section(name) -> context manager``,
    or None) to time the parts of :func:`compute_kd_losses`; returns the previous one.

    Section names: ``ref:teacher`` / ``ref:student`` / ``ref:kd_math`` (PKD on
    the reference), ``sampler``, ``samp:teacher`` (teacher decoder, KD window
    and joiner on the sampled sequences), ``samp:student`` (student decoder and
    joiner on them), ``samp:kd_math`` (node weights and the KL).
    """
    global _PROFILER
    previous, _PROFILER = _PROFILER, profiler
    return previous


def _section(name: str) -> ContextManager[Any]:
    p = _PROFILER
    return nullcontext() if p is None else p.section(name)


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


def _node_kl(
    zs: Tensor, log_pt: Tensor, mask: Tensor, temperature: float, need_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """(kl per node, d kl / d zs or None); see :class:`_NodeKL`."""
    pt = log_pt.exp()
    log_ps = torch.log_softmax(zs / temperature if temperature != 1.0 else zs, dim=-1)
    all_valid = bool(mask.all())  # the usual case: skip full-vocabulary masking passes
    grad = None
    if need_grad:
        grad = log_ps.exp().sub_(pt)
        if temperature != 1.0:
            grad.div_(temperature)
        if not all_valid:
            grad.masked_fill_(~mask.unsqueeze(-1), 0.0)
    diff = torch.sub(log_pt, log_ps, out=log_ps)  # log_pt - log_ps, in place
    kl = diff.mul_(pt).sum(dim=-1)
    return (kl if all_valid else kl.masked_fill_(~mask, 0.0)), grad


class _NodeKL(torch.autograd.Function):
    """``KL(p_T || softmax(zs / tau))`` per node with a hand-written backward.

    Forward: ``log_ps = log_softmax(zs / tau)``, ``kl = sum pt * (log_pt - log_ps)``
    (the same arithmetic as the plain autograd version); the gradient
    ``d kl / d zs = (softmax(zs / tau) - pt) / tau`` is formed here once and is the
    only full-vocabulary tensor kept for backward (autograd would keep
    ``log_ps``, ``pt`` and the difference, and rebuild the softmax). Masked
    nodes get ``kl = 0`` and an exactly-zero gradient whatever their logits hold.
    """

    @staticmethod
    def forward(ctx: Any, zs: Tensor, log_pt: Tensor, mask: Tensor, temperature: float) -> Tensor:
        kl, grad = _node_kl(zs, log_pt, mask, temperature, need_grad=True)
        ctx.save_for_backward(grad)
        return kl

    @staticmethod
    def backward(ctx: Any, grad_kl: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_kl.unsqueeze(-1).to(grad.dtype), None, None, None


def _masked_kl(
    teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float
) -> Tensor:
    """Per-node ``KL(softmax(zT/tau) || softmax(zS/tau))``, 0 at masked nodes.

    Masked nodes' logits are never mixed into unmasked results (row-wise
    softmax), and their KL and student gradient are set to exactly 0, so
    padding holding anything (inf/NaN included) is harmless.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher/student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    zt = _float(teacher_logits.detach())
    zs = _float(student_logits)
    dt = torch.promote_types(zt.dtype, zs.dtype)
    zt, zs = zt.to(dt), zs.to(dt)
    with torch.no_grad():
        log_pt = torch.log_softmax(zt / temperature if temperature != 1.0 else zt, dim=-1)
    mask = mask.to(zs.device)
    if zs.requires_grad and torch.is_grad_enabled():
        return _NodeKL.apply(zs, log_pt, mask, float(temperature))
    with torch.no_grad():
        return _node_kl(zs, log_pt, mask, float(temperature), need_grad=False)[0]


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


def _window_occupancies(
    model: Any,
    enc: Tensor,
    dec: Tensor,
    enc_lens: Tensor,
    y_padded: Tensor,
    y_lens: Tensor,
    params: Any,
) -> Tuple[Tensor, Tensor]:
    """Simple-loss occupancies ``(px_grad, py_grad)`` of ``model`` on ``y``, no grad.

    For the project's Transducer only the smoothed simple loss is run (the
    same ``simple_lm_proj`` / ``simple_am_proj`` / ``_simple_loss`` calls as
    ``transducer_outputs``, on the decoder output ``dec`` already computed),
    skipping the joiner and pruned loss that ``transducer_outputs`` would also
    compute and that the KD window does not need. Other models fall back to
    ``transducer_outputs``.
    """
    am_scale = float(_get(params, "am_scale", 0.0))
    lm_scale = float(_get(params, "lm_scale", 0.0))
    with torch.no_grad():
        simple = getattr(model, "_simple_loss", None)
        if simple is None or not hasattr(model, "simple_am_proj") or not hasattr(model, "boundary"):
            out = model.transducer_outputs(
                enc.detach(),
                enc_lens,
                y_padded,
                y_lens,
                prune_range=int(_get(params, "prune_range", 5)),
                am_scale=am_scale,
                lm_scale=lm_scale,
            )
            return out.px_grad, out.py_grad
        boundary = model.boundary(y_lens, enc_lens)
        has_empty = bool((y_lens == 0).any())
        lm = model.simple_lm_proj(dec.detach())
        am = model.simple_am_proj(enc.detach())
        with torch.autocast(device_type=enc.device.type, enabled=False):
            _, (px_grad, py_grad) = simple(
                lm.float(), am.float(), y_padded, boundary, am_scale, lm_scale, has_empty
            )
    return px_grad, py_grad


def _pad(seqs: Sequence[Sequence[int]], device: torch.device) -> Tuple[Tensor, Tensor]:
    lens = [len(s) for s in seqs]
    y = torch.zeros(len(seqs), max(lens, default=0), dtype=torch.int64)
    for i, s in enumerate(seqs):
        if s:
            y[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return y.to(device), torch.tensor(lens, dtype=torch.int64, device=device)


def _stateless_context_size(model: Any) -> Optional[int]:
    """``context_size`` of the project's stateless decoder (output ``u`` a function of
    that many last tokens), or None for any other decoder."""
    from icefall_spkd.models.decoder import Decoder

    decoder = getattr(model, "decoder", None)
    return int(decoder.context_size) if isinstance(decoder, Decoder) else None


def _shared_node_kd(
    teacher: Any,
    student: Any,
    t_enc: Tensor,
    s_enc: Tensor,
    t_dec: Tensor,
    s_dec: Tensor,
    y_padded: Tensor,
    ranges: Tensor,
    weights: Tensor,
    row_utt: Tensor,
    context_size: int,
    blank_id: int,
    vocab_size: int,
    tau: float,
) -> Tuple[Tensor, int, int]:
    """``sum w * KL * tau^2`` over the window nodes, each distinct node computed once.

    With stateless decoders (output ``u`` a function of the last
    ``context_size`` tokens), a node's logits depend only on (utterance,
    frame, last ``context_size`` tokens), for the teacher and the student
    alike. Sampled sequences of one utterance share most of their tokens, so
    their KD windows repeat many such nodes (about a third of them with N = 4
    on the synthetic corpus). Each distinct node is evaluated once, by both
    joiners, and its KL weighted by the sum of the weights of its copies: the
    same loss, and the same gradient (the student's joiner and decoder have no
    dropout, so the copies' logits are equal), for fewer joiner evaluations.

    Args:
      t_enc, s_enc: ``(B, T, C)`` encoder outputs of the rows (rows of one
        utterance hold the same values).
      t_dec, s_dec: ``(B, U+1, D)`` decoder outputs on ``[blank] + y``.
      y_padded: ``(B, U)`` tokens of each row.
      ranges: ``(B, T, R)`` window; weights: ``(B, T, R)``, zero off the window.
      row_utt: ``(B,)`` utterance of each row.
    Returns:
      ``(loss, distinct nodes, weighted nodes)``.
    """
    B, T, R = ranges.shape
    device = ranges.device
    live = weights != 0
    # the context of node u is tokens u-context_size+1 .. u, i.e. ypad[u .. u+cs-1]
    ypad = F.pad(y_padded, (context_size, 0), value=blank_id)
    top = ypad.shape[1] - context_size
    key = row_utt.view(B, 1, 1) * T + torch.arange(T, device=device).view(1, T, 1)
    for j in range(context_size):
        tok = ypad.gather(1, (ranges.clamp(max=top) + j).reshape(B, -1)).view(B, T, R)
        key = key * vocab_size + tok
    where = live.nonzero()  # (M, 3): (row, t, k)
    keys = key[live]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    M, D = keys.numel(), uniq.numel()
    # one representative (the first copy) of every distinct node
    first = torch.full((D,), M, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(M, device=device), reduce="amin")
    rb, rt, rk = where.index_select(0, first).unbind(1)
    ru = ranges[rb, rt, rk]
    w = torch.zeros(D, dtype=torch.float32, device=device).index_add_(
        0, inverse, weights[live].float()
    )
    # project per frame / per position first (as joiner_on_ranges does), then pick the nodes
    with torch.no_grad():
        tj = teacher.joiner
        zt = tj(tj.encoder_proj(t_enc)[rb, rt], tj.decoder_proj(t_dec)[rb, ru], project_input=False)
    sj = student.joiner
    zs = sj(sj.encoder_proj(s_enc)[rb, rt], sj.decoder_proj(s_dec)[rb, ru], project_input=False)
    ones = torch.ones(1, D, dtype=torch.bool, device=device)
    kl = _masked_kl(zt.unsqueeze(0), zs.unsqueeze(0), ones, tau).squeeze(0)
    return (kl * w.to(kl.dtype)).sum() * (tau**2), D, M


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
    tag: str = "ref",
    row_weights: Optional[Tensor] = None,
    row_utt: Optional[Tensor] = None,
    stats: Optional[Dict[str, float]] = None,
) -> Tensor:
    """KD loss (per --kd-loss) of one label sequence per utterance.

    ``row_weights`` (``(B,)``, optional) multiplies each row's loss (used to
    count a de-duplicated sampled sequence as many times as it was drawn).
    ``row_utt`` (``(B,)``, the utterance of each row) allows
    :func:`_shared_node_kd` (PKD, uniform node weights, stateless decoders,
    ``--kd-share-nodes``); it then records ``distinct_nodes`` / ``nodes`` in
    ``stats``.

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
        with torch.no_grad(), _section(tag + ":teacher"):
            t_dec = _decoder_out(teacher, y_padded, blank_id)
        with _section(tag + ":student"):
            s_dec = _decoder_out(student, y_padded, blank_id)

    if kd_loss in ("full", "collapsed"):
        if row_weights is not None:
            raise ValueError("row_weights is only supported with kd_loss='pkd'")
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
    sec = _section(tag + ":teacher")
    sec.__enter__()
    if U == 0:  # every sequence empty: the lattice is the row u = 0
        ranges = torch.zeros(B, T, 1, dtype=torch.int64, device=device)
    else:
        if use_ref:
            out_for_ranges = teacher_out if which == "teacher" else student_out
            px_grad, py_grad = out_for_ranges.px_grad, out_for_ranges.py_grad
        elif which == "teacher":
            px_grad, py_grad = _window_occupancies(
                teacher, t_enc, t_dec, enc_lens, y_padded, y_lens, params
            )
        else:
            px_grad, py_grad = _window_occupancies(
                student, s_enc, s_dec, enc_lens, y_padded, y_lens, params
            )
        ranges = kd_prune_ranges(px_grad, py_grad, boundary_k2, kd_range)
        if bool(empty.any()):  # an empty sequence's window starts at u = 0
            R = ranges.shape[2]
            start = torch.arange(R, device=device).view(1, 1, R).expand(B, T, R)
            ranges = torch.where(empty.view(B, 1, 1), start, ranges)

    kind = _get(params, "kd_node_weights", "uniform")
    t_cs, s_cs = _stateless_context_size(teacher), _stateless_context_size(student)
    if (
        row_utt is not None
        and kind == "uniform"
        and bool(_get(params, "kd_share_nodes", True))
        and t_cs is not None
        and s_cs is not None
    ):
        sec.__exit__(None, None, None)
        with _section(tag + ":shared_nodes"):
            weights = node_weights_from_lattice(kind, None, None, boundary, ranges)
            if row_weights is not None:
                weights = weights * row_weights.to(weights.dtype).view(-1, 1, 1)
            vocab = int(teacher.joiner.output_linear.out_features)  # token ids are below it
            loss, distinct, nodes = _shared_node_kd(
                teacher, student, t_enc, s_enc, t_dec, s_dec, y_padded, ranges, weights,
                row_utt.to(device), max(t_cs, s_cs), blank_id, vocab, tau,
            )  # fmt: skip
        if stats is not None:
            stats["distinct_nodes"] = float(distinct)
            stats["nodes"] = float(nodes)
        return loss

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
    sec.__exit__(None, None, None)
    with _section(tag + ":student"):
        zs = student.joiner_on_ranges(s_enc, s_dec, ranges)

    sec = _section(tag + ":kd_math")
    sec.__enter__()
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
    if row_weights is not None:
        weights = weights * row_weights.to(weights.dtype).view(-1, 1, 1)
    loss = pruned_kd_loss(zt, zs, ranges, boundary, tau, weights)
    sec.__exit__(None, None, None)
    return loss


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


def _distinct_samples(
    samples: List[List[List[int]]], dedup: bool
) -> Tuple[List[List[int]], List[int], List[int]]:
    """Rows to run for ``samples[n][b]``: ``(sequences, utterance of each, multiplicity)``.

    With ``dedup``, a sequence drawn several times for the same utterance is
    one row whose multiplicity is the number of draws: its KD term is
    identical each time (same encoder outputs, same label sequence, so the
    same window and logits), so weighting one copy by the count gives the
    same loss and gradient for less work. A confident teacher draws the
    same sequence often, so this saves most where training spends longest.
    (With ``--kd-node-weights sampled`` the duplicates would otherwise get
    independent path draws; one draw weighted by the count has the same
    expectation.) Without ``dedup`` rows are ``n * B + b`` in order, each
    with multiplicity 1.
    """
    B = len(samples[0]) if samples else 0
    if not dedup:
        flat = [seq for seqs in samples for seq in seqs]
        return flat, [b for _ in samples for b in range(B)], [1] * len(flat)
    where: Dict[Tuple[int, Tuple[int, ...]], int] = {}
    rows: List[List[int]] = []
    row_utt: List[int] = []
    counts: List[int] = []
    for seqs in samples:
        for b, seq in enumerate(seqs):
            key = (b, tuple(seq))
            i = where.get(key)
            if i is None:
                where[key] = len(rows)
                rows.append(list(seq))
                row_utt.append(b)
                counts.append(1)
            else:
                counts[i] += 1
    return rows, row_utt, counts


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
      (fraction of empty sampled sequences), ``kd_samp_distinct`` (distinct
      (utterance, sequence) rows run / sampled sequences; duplicates are
      run once and counted, see :func:`_distinct_samples`).
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

    with _section("sampler"):
        samples = _sampled_sequences(teacher, t_enc, enc_lens, y_list, params, generator)
    if samples:
        # All N sampled sequences of all B utterances in ONE pass of B*N rows
        # (row n*B + b is samples[n][b]): the encoder outputs are repeated (the
        # student's through autograd, so its gradient sums over the copies),
        # the decoders / KD windows / joiners run once, and sum / N is the
        # average of the N per-sample losses (each a sum over utterances).
        N = len(samples)
        rows, row_utt, counts = _distinct_samples(samples, dedup=kd_loss == "pkd")
        y_s, y_s_lens = _pad(rows, device)
        index = torch.tensor(row_utt, dtype=torch.int64, device=device)
        node_stats: Dict[str, float] = {}
        total = _lattice_kd(
            teacher,
            student,
            t_enc.index_select(0, index),
            s_enc.index_select(0, index),
            enc_lens.index_select(0, index),
            y_s,
            y_s_lens,
            params,
            generator,
            tag="samp",
            row_weights=(
                None if all(c == 1 for c in counts) else torch.tensor(counts, device=device)
            ),
            row_utt=index,
            stats=node_stats,
        )
        out["kd_samp"] = total / N
        lens = torch.tensor([len(s) for seqs in samples for s in seqs], dtype=torch.float32)
        out["kd_samp_tokens"] = lens.mean().to(device)
        out["kd_samp_empty"] = (lens == 0).float().mean().to(device)
        out["kd_samp_distinct"] = torch.tensor(len(rows) / lens.numel(), device=device)
        if node_stats.get("nodes"):
            out["kd_samp_node_share"] = torch.tensor(
                node_stats["distinct_nodes"] / node_stats["nodes"], device=device
            )
    return out
