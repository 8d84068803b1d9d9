"""The KD loss functions on given logits, and the node weights of a KD window.

* :func:`pruned_kd_loss` - per-node forward ``KL(p_T || p_S) * tau^2`` over the
  full vocabulary on the nodes of a ``(B, T, R)`` window, masked, weighted,
  summed.
* the baselines of Panchapagesan et al. (ICASSP 2021) at every valid lattice
  node: full-lattice KD is :func:`pruned_kd_loss` on the window
  :func:`full_ranges` (every ``u``), and :func:`collapsed_kd_loss` is the KL
  between the 3-class ``{y_(u+1), blank, rest}`` distributions.
* :func:`node_weights_from_lattice` - ``uniform | sampled | posterior | viterbi``
  node weights on a window, normalised to one unit per frame.
* :func:`kd_prune_ranges` / :func:`pruned_lattice_logprobs` - the backend's
  window and pruned lattice, also for empty label sequences.

Choices made where the specification is silent:

* Teacher logits are always ``detach()``-ed; all KD arithmetic is in float32
  (float64 if given float64), whatever autocast produced. The losses are sums.
* Masked nodes (``t >= T_b`` or ``u > U_b``) have their KL set to exactly 0,
  so padding holding anything (even inf/NaN) changes neither the loss nor any
  gradient, and the student's padded nodes get an exactly-zero gradient.
* With ``node_weights=None`` each loss is the raw paper form, weight 1 per
  unmasked node. :mod:`icefall_spkd.kd` always passes weights normalised to
  one unit per frame (a total of ``T_b`` per label sequence, see
  :func:`frame_normalised`), so that ``lambda`` means the same for every
  loss and node weighting. An utterance whose weights sum to 0 (no finite
  path in its lattice) gets weight 0.
* ``sampled`` / ``posterior`` / ``viterbi`` weights are node tensors over the
  teacher's pruned lattice (``get_rnnt_logprobs_pruned`` on the KD window:
  ``-inf`` outside it, so the posterior lives on the window). Mass on nodes
  outside the window (possible only if the lattice and the window differ) is
  lost by construction, before normalisation.
* Empty label sequences: the lattice is the single row ``u = 0``. The backend
  gets ``S_b`` raised to 1 (:func:`icefall_spkd.pruned_rnnt.backend_boundary`),
  the window of an empty sequence is forced to start at ``u = 0`` (all-empty
  batch: a width-1 window of zeros), and the true boundary (``U_b = 0``)
  masks every window position but ``u = 0``. So an empty sequence contributes
  the KL at ``(t, 0)`` for every ``t < T_b``, which is exactly its lattice.
* Collapsed KD at ``u = U_b`` (no next reference token) uses 2 classes
  ``{blank, rest}``; the temperature applies to the full softmax before
  collapsing, and the ``tau^2`` factor is kept for symmetry with PKD.
* The KL's backward is hand-written (:class:`_NodeKL`): one full-vocabulary
  tensor is kept instead of three.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from icefall_spkd import pruned_rnnt
from icefall_spkd.kd_options import NODE_WEIGHT_KINDS
from icefall_spkd.sampling import node_occupancy, sample_alignments, viterbi_alignment

__all__ = [
    "collapsed_kd_loss",
    "frame_normalised",
    "full_ranges",
    "kd_prune_ranges",
    "masked_kl",
    "node_weights_from_lattice",
    "pruned_kd_loss",
    "pruned_lattice_logprobs",
    "window_mask",
]


def _float(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def window_mask(ranges: Tensor, boundary: Tensor) -> Tensor:
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


def masked_kl(
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


def _weighted_sum(kl: Tensor, mask: Tensor, node_weights: Optional[Tensor], tau: float) -> Tensor:
    """``sum w * kl * tau^2`` (``w`` = 1 per unmasked node when ``node_weights`` is None)."""
    if node_weights is not None:
        if node_weights.shape != kl.shape:
            raise ValueError(f"node_weights {tuple(node_weights.shape)} != {tuple(kl.shape)}")
        kl = kl * torch.where(mask, node_weights.detach().to(kl.dtype), 0.0)
    return kl.sum() * (tau**2)


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
    mask = window_mask(ranges, boundary)
    kl = masked_kl(teacher_logits, student_logits, mask, temperature)
    return _weighted_sum(kl, mask, node_weights, temperature)


def full_ranges(B: int, T: int, U1: int, device: torch.device) -> Tensor:
    """``(B, T, U1)`` window holding every ``u`` of the lattice: ``ranges[b, t, u] = u``."""
    return torch.arange(U1, device=device).view(1, 1, U1).expand(B, T, U1).contiguous()


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
    teacher_logits_full: Tensor, student_logits_full: Tensor, y_padded: Tensor, boundary: Tensor,
    temperature: float = 1.0, *, blank_id: int = 0, node_weights: Optional[Tensor] = None,
) -> Tensor:  # fmt: skip
    """Collapsed ("efficient") KD: ``w * KL`` of ``{y_(u+1), blank, rest}`` at every valid node.

    Args:
      teacher_logits_full, student_logits_full: ``(B, T, U+1, V)``.
      y_padded: ``(B, U)`` int64 reference tokens (padding arbitrary).
      boundary: ``(B, 4)`` ``[0, 0, U_b, T_b]``.
      temperature: ``tau`` (softmax of ``z / tau`` before collapsing; ``* tau^2``).
      blank_id: blank's id.
      node_weights: optional ``(B, T, U+1)``; default 1 per valid node.
    At ``u = U_b`` there is no next token and the distribution is 2-class
    ``{blank, rest}``.
    """
    B, T, U1, V = teacher_logits_full.shape
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = teacher_logits_full.device
    boundary = boundary.to(device)
    ranges = full_ranges(B, T, U1, device)
    mask = window_mask(ranges, boundary)
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
    return _weighted_sum(kl, mask, node_weights, temperature)


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
    with :func:`~icefall_spkd.pruned_rnnt.backend_boundary`, and the rows of an empty sequence are ignored
    downstream anyway (the true boundary has ``S_b = 0``).
    """
    B, S = symbols.shape
    sym = symbols
    if S == 0:
        sym = torch.full((B, 1), blank_id, dtype=torch.int64, device=symbols.device)
    px, py = pruned_rnnt.get_rnnt_logprobs_pruned(
        logits=_float(logits.detach()),
        symbols=sym,
        ranges=ranges,
        termination_symbol=blank_id,
        boundary=pruned_rnnt.backend_boundary(boundary),
        rnnt_type="regular",
    )
    if S == 0:
        px, py = px[:, :0, :], py[:, :1, :]
    return px, py


def frame_normalised(weights: Tensor, boundary: Tensor) -> Tensor:
    """``weights`` ``(B, ...)`` scaled to a total of ``T_b`` per row (one unit per frame).

    A row whose weights sum to 0 stays 0. With ``weights`` the 0/1 mask of a
    window, every unmasked node weighs ``T_b / (its number of nodes)``; with
    the full-lattice mask that is ``1 / (U_b + 1)``.
    """
    B = weights.shape[0]
    w = weights.float() if weights.dtype == torch.bool else weights
    total = w.reshape(B, -1).sum(dim=1)
    t_b = boundary[:, 3].to(device=w.device, dtype=w.dtype)
    scale = torch.where(total > 0, t_b / total.clamp(min=1e-30), 0.0)
    return w * scale.view(B, *([1] * (w.dim() - 1)))


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
    mask = window_mask(ranges, boundary)
    if kind == "uniform":
        w = mask
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
    return frame_normalised(w, boundary)


def kd_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    """KD window ``(B, T, R)`` from simple-loss occupancies (``get_rnnt_prune_ranges``).

    Accepts empty sequences (see the module docstring): all empty gives a
    width-1 window of zeros, and an empty sequence's window starts at ``u = 0``.
    """
    B, S, T1 = px_grad.shape
    if S == 0:
        return torch.zeros(B, T1 - 1, 1, dtype=torch.int64, device=px_grad.device)
    ranges = pruned_rnnt.get_rnnt_prune_ranges(
        px_grad=px_grad.detach().float(),
        py_grad=py_grad.detach().float(),
        boundary=pruned_rnnt.backend_boundary(boundary),
        s_range=s_range,
    )
    empty = (boundary[:, 2] == 0).to(ranges.device)
    if bool(empty.any()):
        start = torch.arange(ranges.shape[2], device=ranges.device).expand_as(ranges)
        ranges = torch.where(empty.view(B, 1, 1), start, ranges)
    return ranges
