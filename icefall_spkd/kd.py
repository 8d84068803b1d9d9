"""SP-KD on one batch: the KD term of the reference and the sampling term.

:func:`compute_kd_losses` implements ``docs/SPKD.md`` on two models'
:class:`~icefall_spkd.models.TransducerOutputs`. For one label sequence per
row (the reference transcripts, or the sampled sequences) the KD term is:

1. both models' decoder outputs on ``[blank] + y`` (:class:`SequenceRows`);
2. PKD: the KD window, ``R_kd`` consecutive ``u`` per frame, from the
   teacher's simple-loss occupancies (``--kd-ranges student``: the
   student's) - :func:`_kd_window`;
3. both joiners on exactly those nodes, and per-node ``KL(p_T || p_S) * tau^2``
   weighted by the node weights of ``--kd-node-weights`` (:func:`_window_kd`);
   full-lattice and collapsed KD use every node of the lattice instead
   (:func:`_lattice_baseline_kd`).

The loss functions on given logits and the node weights are in
:mod:`icefall_spkd.kd_losses`; the options and their defaults in
:mod:`icefall_spkd.kd_options`.

Choices made where the specification is silent:

* One normalisation for every KD term: each label sequence gets one unit of
  weight per frame, a total of ``T_b`` (:func:`~icefall_spkd.kd_losses.
  frame_normalised`). PKD's window nodes and the lattice nodes of full and
  collapsed KD weigh ``T_b / (their number)`` each (``1 / (U_b + 1)`` for the
  whole lattice), and ``posterior`` / ``sampled`` / ``viterbi`` weights are
  scaled to a total of ``T_b``. So ``lambda`` means the same in every row of
  the table, and each sampled sequence weighs as much as the reference.
* Teacher logits are computed under ``no_grad``. When the teacher's own
  transducer loss was evaluated on the KD window (same ranges), its logits
  are reused; the student's never are (its window is its own).
* ``--kd-sampler nbest`` uses beam ``max(N, --kd-nbest-beam)``; an utterance
  with fewer than ``N`` distinct hypotheses repeats its list cyclically, so
  ``L_samp`` is still an average over ``N`` sequences.
* ``--kd-sampler batch`` uses rotations ``n = 1..N``; when ``n % B == 0`` an
  utterance is paired with its own transcript (as in the authors' code).
* Empty sequences (a sampler may produce them; references too) are the lattice
  row ``u = 0``, see :mod:`icefall_spkd.kd_losses`.
* Cost: the ``N`` sampled sequences of all ``B`` utterances go through ONE
  pass of rows (encoder outputs repeated, never recomputed; one decoder run
  and one joiner call per model; the teacher's KD window comes from its
  simple-loss occupancies only). ``L_samp`` is that sum divided by ``N``. A
  sequence drawn several times for one utterance is one row counted as many
  times (:func:`_distinct_samples`), and with uniform node weights each
  distinct window node is evaluated once (:func:`_shared_node_kd`); neither
  changes the loss or its gradient. The window width is common to all rows:
  the backend widens ``R_kd`` only for sequences with more than about
  ``R_kd - 2`` tokens per frame (impossible for the ``teacher`` / ``nbest``
  samplers) and narrows it to ``U_max + 1`` when every sequence is shorter
  (the extra positions of a wider window are masked, so the loss is the same).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from icefall_spkd.kd_losses import (
    collapsed_kd_loss,
    frame_normalised,
    full_ranges,
    kd_prune_ranges,
    masked_kl,
    node_weights_from_lattice,
    pruned_kd_loss,
    pruned_lattice_logprobs,
    window_mask,
)
from icefall_spkd.kd_options import KD_LOSSES, KD_SAMPLERS, NODE_WEIGHT_KINDS, KDOptions
from icefall_spkd.sampling import nbest_sequences, rotate_batch, sample_sequences
from icefall_spkd.utils import pad_token_ids

__all__ = [
    "KD_LOSSES",
    "KD_SAMPLERS",
    "NODE_WEIGHT_KINDS",
    "SequenceRows",
    "compute_kd_losses",
    "profiling",
    "sequence_kd",
]


# ---------------------------------------------------------------------------
# optional section timing (benchmark_kd.py); a no-op unless a profiler is set
# ---------------------------------------------------------------------------

_PROFILER: Any = None


@contextmanager
def profiling(profiler: Any) -> Iterator[None]:
    """Time the parts of :func:`compute_kd_losses` with ``profiler`` inside the ``with`` block.

    ``profiler`` has ``section(name) -> context manager``. Section names:
    ``ref:teacher`` / ``ref:student`` / ``ref:kd_math`` (PKD on the reference),
    ``sampler``, ``samp:teacher`` (teacher decoder, KD window and joiner on the
    sampled sequences), ``samp:student`` (student decoder and joiner),
    ``samp:kd_math`` (node weights and the KL), ``samp:shared_nodes`` (both
    joiners and the KL when nodes are shared).
    """
    global _PROFILER
    previous, _PROFILER = _PROFILER, profiler
    try:
        yield
    finally:
        _PROFILER = previous


def _section(name: str) -> ContextManager[Any]:
    return nullcontext() if _PROFILER is None else _PROFILER.section(name)


# ---------------------------------------------------------------------------
# one label sequence per row
# ---------------------------------------------------------------------------


@dataclass
class SequenceRows:
    """One label sequence per row, with both models' encoder and decoder outputs.

    ``t_*`` are the teacher's (detached), ``s_*`` the student's; encoder
    outputs ``(B, T, C)``, decoder outputs ``(B, U+1, D)`` on ``[blank] + y``.
    """

    t_enc: Tensor
    s_enc: Tensor
    enc_lens: Tensor  # (B,)
    y: Tensor  # (B, U) int64
    y_lens: Tensor  # (B,)
    t_dec: Tensor
    s_dec: Tensor

    @classmethod
    def decode(
        cls, teacher: Any, student: Any, t_enc: Tensor, s_enc: Tensor, enc_lens: Tensor,
        y: Tensor, y_lens: Tensor, tag: str = "samp",
    ) -> SequenceRows:  # fmt: skip
        """Run both decoders on ``y`` (the teacher's under ``no_grad``)."""
        device = s_enc.device
        y, y_lens, enc_lens = y.to(device), y_lens.to(device), enc_lens.to(device)
        with torch.no_grad(), _section(tag + ":teacher"):
            t_dec = teacher.run_decoder(y)
        with _section(tag + ":student"):
            s_dec = student.run_decoder(y)
        return cls(t_enc.detach(), s_enc, enc_lens, y, y_lens, t_dec, s_dec)

    @property
    def boundary(self) -> Tensor:
        """``(B, 4)`` int64 rows ``[0, 0, U_b, T_b]``."""
        zeros = torch.zeros_like(self.enc_lens)
        return torch.stack([zeros, zeros, self.y_lens, self.enc_lens], dim=1)


def _simple_occupancies(
    model: Any, enc: Tensor, dec: Tensor, rows: SequenceRows, opts: KDOptions
) -> Tuple[Tensor, Tensor]:
    """Simple-loss occupancies ``(px_grad, py_grad)`` of ``model`` on the rows, no grad.

    Only the smoothed simple loss is run (as in ``transducer_outputs``, on the
    decoder output already computed), not the joiner and pruned loss that the
    KD window does not need.
    """
    boundary = rows.boundary
    has_empty = bool((rows.y_lens == 0).any())
    with torch.no_grad(), torch.autocast(device_type=enc.device.type, enabled=False):
        lm = model.simple_lm_proj(dec.detach()).float()
        am = model.simple_am_proj(enc.detach()).float()
        _, (px_grad, py_grad) = model._simple_loss(
            lm, am, rows.y, boundary, opts.am_scale, opts.lm_scale, has_empty
        )
    return px_grad, py_grad


def _kd_window(teacher: Any, student: Any, rows: SequenceRows, opts: KDOptions) -> Tensor:
    """``(B, T, R)`` KD window from the teacher's (``--kd-ranges student``: the student's) occupancies."""
    if opts.kd_ranges == "teacher":
        occupancies = _simple_occupancies(teacher, rows.t_enc, rows.t_dec, rows, opts)
    else:
        occupancies = _simple_occupancies(student, rows.s_enc, rows.s_dec, rows, opts)
    return kd_prune_ranges(*occupancies, rows.boundary, opts.kd_prune_range)


def _window_weights(
    zt: Tensor, rows: SequenceRows, ranges: Tensor, opts: KDOptions,
    generator: Optional[torch.Generator], blank_id: int,
) -> Tensor:  # fmt: skip
    """``--kd-node-weights`` on the window, from the teacher's pruned lattice (T_b per row)."""
    px = py = None
    if opts.kd_node_weights != "uniform":
        px, py = pruned_lattice_logprobs(zt, rows.y, ranges, blank_id, rows.boundary)
    return node_weights_from_lattice(
        opts.kd_node_weights, px, py, rows.boundary, ranges, opts.kd_num_paths, generator
    )


def _times_counts(weights: Tensor, counts: Optional[Tensor]) -> Tensor:
    """Each row's weights times its multiplicity (``counts`` ``(B,)``, None: 1)."""
    return weights if counts is None else weights * counts.to(weights).view(-1, 1, 1)


def _window_kd(
    teacher: Any, student: Any, rows: SequenceRows, ranges: Tensor, opts: KDOptions,
    generator: Optional[torch.Generator], tag: str, zt: Optional[Tensor] = None,
    counts: Optional[Tensor] = None,
) -> Tensor:  # fmt: skip
    """PKD on the window ``ranges``: both joiners on its nodes, node weights, weighted KL.

    ``zt``: the teacher's logits on exactly these nodes when already known.
    """
    with torch.no_grad(), _section(tag + ":teacher"):
        if zt is None:
            zt = teacher.joiner_on_ranges(rows.t_enc, rows.t_dec, ranges)
    with _section(tag + ":student"):
        zs = student.joiner_on_ranges(rows.s_enc, rows.s_dec, ranges)
    with _section(tag + ":kd_math"):
        weights = _window_weights(zt, rows, ranges, opts, generator, teacher.blank_id)
        weights = _times_counts(weights, counts)
        return pruned_kd_loss(zt, zs, ranges, rows.boundary, opts.kd_temperature, weights)


def _lattice_baseline_kd(teacher: Any, student: Any, rows: SequenceRows, opts: KDOptions) -> Tensor:
    """Full-lattice or collapsed KD at every lattice node, ``1 / (U_b + 1)`` per node."""
    B, T = rows.s_enc.shape[:2]
    boundary = rows.boundary
    lattice = full_ranges(B, T, rows.y.shape[1] + 1, rows.s_enc.device)
    weights = frame_normalised(window_mask(lattice, boundary), boundary)
    with torch.no_grad():
        zt = teacher.joiner_on_ranges(rows.t_enc, rows.t_dec, lattice)
    zs = student.joiner_on_ranges(rows.s_enc, rows.s_dec, lattice)
    tau = opts.kd_temperature
    if opts.kd_loss == "full":
        return pruned_kd_loss(zt, zs, lattice, boundary, tau, node_weights=weights)
    return collapsed_kd_loss(
        zt, zs, rows.y, boundary, tau, blank_id=teacher.blank_id, node_weights=weights
    )


def sequence_kd(
    teacher: Any, student: Any, rows: SequenceRows, params: Any,
    generator: Optional[torch.Generator] = None, counts: Optional[Tensor] = None,
    utt: Optional[Tensor] = None, stats: Optional[Dict[str, float]] = None,
) -> Tensor:  # fmt: skip
    """The KD term (per ``--kd-loss``) of one label sequence per row, windows computed here.

    Args:
      rows: the sequences and both models' outputs (:meth:`SequenceRows.decode`).
      params: :class:`KDOptions` or anything :meth:`KDOptions.from_params` takes.
      generator: for ``sampled`` node weights.
      counts: ``(B,)`` multiplicity of each row (a de-duplicated sampled
        sequence counts as often as it was drawn); PKD only.
      utt: ``(B,)`` utterance of each row; allows :func:`_shared_node_kd`
        (PKD with uniform node weights and ``kd_share_nodes``), which then
        records ``distinct_nodes`` / ``nodes`` in ``stats``.
    """
    opts = KDOptions.from_params(params)
    if opts.kd_loss in ("full", "collapsed"):
        if counts is not None:
            raise ValueError("row counts are only supported with kd_loss='pkd'")
        return _lattice_baseline_kd(teacher, student, rows, opts)
    if opts.kd_loss != "pkd":
        raise ValueError(f"unknown kd_loss {opts.kd_loss!r}; choose from {KD_LOSSES}")
    with _section("samp:teacher"):
        ranges = _kd_window(teacher, student, rows, opts)
    if utt is not None and opts.kd_share_nodes and opts.kd_node_weights == "uniform":
        with _section("samp:shared_nodes"):
            weights = node_weights_from_lattice("uniform", None, None, rows.boundary, ranges)
            loss, distinct, nodes = _shared_node_kd(
                teacher, student, rows, ranges, _times_counts(weights, counts), utt,
                opts.kd_temperature,
            )  # fmt: skip
        if stats is not None:
            stats.update(distinct_nodes=float(distinct), nodes=float(nodes))
        return loss
    return _window_kd(teacher, student, rows, ranges, opts, generator, "samp", counts=counts)


def window_node_keys(
    y: Tensor, ranges: Tensor, utt: Tensor, context_size: int, vocab_size: int, blank_id: int
) -> Tensor:
    """``(B, T, R)`` int64 key of every window node: equal keys, equal joiner inputs.

    With stateless decoders the output at position ``u`` depends only on the
    last ``context_size`` tokens ``y[u - context_size .. u - 1]`` (blanks
    before the start), so a node is fixed by (utterance, frame, that context).
    Rows of one utterance (``utt``) with the same context at a frame share
    the node, whatever label sequences they come from. Keys off the valid
    lattice (``window_mask``) are meaningless.

    Args:
      y: ``(B, U)`` label sequences (padded); ranges: ``(B, T, R)`` window.
      utt: ``(B,)`` utterance of each row.
    """
    B, T, R = ranges.shape
    device = ranges.device
    # the context of node u is tokens u-context_size+1 .. u, i.e. ypad[u .. u+cs-1]
    ypad = F.pad(y, (context_size, 0), value=blank_id)
    top = ypad.shape[1] - context_size
    key = utt.to(device).view(B, 1, 1) * T + torch.arange(T, device=device).view(1, T, 1)
    for j in range(context_size):
        tok = ypad.gather(1, (ranges.clamp(max=top) + j).reshape(B, -1)).view(B, T, R)
        key = key * vocab_size + tok
    return key


def _shared_node_kd(
    teacher: Any, student: Any, rows: SequenceRows, ranges: Tensor, weights: Tensor,
    utt: Tensor, tau: float,
) -> Tuple[Tensor, int, int]:  # fmt: skip
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
      rows: the rows (rows of one utterance hold the same encoder outputs).
      ranges: ``(B, T, R)`` window; weights: ``(B, T, R)``, zero off the window.
      utt: ``(B,)`` utterance of each row.
    Returns:
      ``(loss, distinct nodes, weighted nodes)``.
    """
    device = ranges.device
    context_size = max(teacher.decoder.context_size, student.decoder.context_size)
    live = weights != 0
    key = window_node_keys(rows.y, ranges, utt, context_size, teacher.vocab_size, teacher.blank_id)
    where = live.nonzero()  # (M, 3): (row, t, k)
    uniq, inverse = torch.unique(key[live], return_inverse=True)
    M, D = int(live.sum()), uniq.numel()
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
        zt = tj(tj.encoder_proj(rows.t_enc)[rb, rt], tj.decoder_proj(rows.t_dec)[rb, ru],
                project_input=False)  # fmt: skip
    sj = student.joiner
    zs = sj(sj.encoder_proj(rows.s_enc)[rb, rt], sj.decoder_proj(rows.s_dec)[rb, ru],
            project_input=False)  # fmt: skip
    ones = torch.ones(1, D, dtype=torch.bool, device=device)
    kl = masked_kl(zt.unsqueeze(0), zs.unsqueeze(0), ones, tau).squeeze(0)
    return (kl * w.to(kl.dtype)).sum() * (tau**2), D, M


# ---------------------------------------------------------------------------
# the reference and the sampled sequences
# ---------------------------------------------------------------------------


def _reference_kd(
    teacher: Any, student: Any, rows: SequenceRows, teacher_out: Any, student_out: Any,
    opts: KDOptions, generator: Optional[torch.Generator],
) -> Tensor:  # fmt: skip
    """The KD term of the reference transcripts, reusing what the transducer losses computed.

    ``rows`` holds the decoder outputs of ``teacher_out`` / ``student_out``;
    the KD window comes from their simple-loss occupancies, and the teacher's
    logits are reused when its own loss was evaluated on that same window.
    """
    if opts.kd_loss != "pkd":
        return _lattice_baseline_kd(teacher, student, rows, opts)
    own = teacher_out if opts.kd_ranges == "teacher" else student_out
    with _section("ref:teacher"):
        ranges = kd_prune_ranges(own.px_grad, own.py_grad, rows.boundary, opts.kd_prune_range)
    zt = None
    if teacher_out.ranges.shape == ranges.shape and torch.equal(teacher_out.ranges, ranges):
        zt = teacher_out.logits.detach()
    return _window_kd(teacher, student, rows, ranges, opts, generator, "ref", zt=zt)


def _sampled_sequences(
    teacher: Any, t_enc: Tensor, enc_lens: Tensor, y_list: List[List[int]], opts: KDOptions,
    generator: Optional[torch.Generator],
) -> List[List[List[int]]]:  # fmt: skip
    """``out[n][b]``: the n-th sampled sequence of utterance b (n < N); [] without a sampler."""
    N, B = opts.kd_num_samples, len(y_list)
    if opts.kd_sampler == "none" or N <= 0:
        return []
    if opts.kd_sampler == "batch":
        return [rotate_batch(y_list, n) for n in range(1, N + 1)]
    if opts.kd_sampler == "teacher":
        per_utt = sample_sequences(
            teacher, t_enc, enc_lens, N, opts.kd_sample_temperature, generator=generator
        )
    elif opts.kd_sampler == "nbest":
        nbest = nbest_sequences(teacher, t_enc, enc_lens, num=N, beam=max(N, opts.kd_nbest_beam))
        per_utt = [[(hyps or [[]])[n % max(len(hyps), 1)] for n in range(N)] for hyps in nbest]
    else:
        raise ValueError(f"unknown kd_sampler {opts.kd_sampler!r}; choose from {KD_SAMPLERS}")
    return [[per_utt[b][n] for b in range(B)] for n in range(N)]


def _distinct_samples(
    samples: List[List[List[int]]], dedup: bool
) -> Tuple[List[List[int]], List[int], List[int]]:
    """Rows to run for ``samples[n][b]``: ``(sequences, utterance of each, multiplicity)``.

    With ``dedup``, a sequence drawn several times for the same utterance is
    one row whose multiplicity is the number of draws: its KD term is
    identical each time (same encoder outputs, same label sequence, so the
    same window and logits), so weighting one copy by the count gives the
    same loss and gradient for less work. (With ``--kd-node-weights sampled``
    the duplicates would otherwise get independent path draws; one draw
    weighted by the count has the same expectation.) Without ``dedup`` rows
    are ``n * B + b`` in order, each with multiplicity 1.
    """
    where: Dict[Tuple[int, Tuple[int, ...]], int] = {}
    rows: List[List[int]] = []
    row_utt: List[int] = []
    counts: List[int] = []
    for seqs in samples:
        for b, seq in enumerate(seqs):
            i = where.get((b, tuple(seq))) if dedup else None
            if i is None:
                where[(b, tuple(seq))] = len(rows)
                rows.append(list(seq))
                row_utt.append(b)
                counts.append(1)
            else:
                counts[i] += 1
    return rows, row_utt, counts


def _samples_kd(
    teacher: Any, student: Any, t_enc: Tensor, s_enc: Tensor, enc_lens: Tensor,
    samples: List[List[List[int]]], opts: KDOptions, generator: Optional[torch.Generator],
) -> Dict[str, Tensor]:  # fmt: skip
    """``kd_samp`` = ``(1/N) sum_n`` KD term of the n-th sampled sequences, and its statistics.

    All ``N * B`` sampled sequences go through ONE pass of rows: the encoder
    outputs are repeated (the student's through autograd, so its gradient sums
    over the copies) and the decoders, KD windows and joiners run once.
    """
    device = s_enc.device
    seqs, row_utt, counts = _distinct_samples(samples, dedup=opts.kd_loss == "pkd")
    y, y_lens = pad_token_ids(seqs, pad_id=teacher.blank_id, device=device)
    utt = torch.tensor(row_utt, dtype=torch.int64, device=device)
    rows = SequenceRows.decode(
        teacher, student, t_enc.index_select(0, utt), s_enc.index_select(0, utt),
        enc_lens.index_select(0, utt), y, y_lens,
    )  # fmt: skip
    stats: Dict[str, float] = {}
    repeated = None if all(c == 1 for c in counts) else torch.tensor(counts, device=device)
    total = sequence_kd(teacher, student, rows, opts, generator, repeated, utt, stats)
    lens = torch.tensor([len(s) for seqs_n in samples for s in seqs_n], dtype=torch.float32)
    out = {
        "kd_samp": total / len(samples),
        "kd_samp_tokens": lens.mean().to(device),
        "kd_samp_empty": (lens == 0).float().mean().to(device),
        "kd_samp_distinct": torch.tensor(len(seqs) / lens.numel(), device=device),
    }
    if stats.get("nodes"):
        out["kd_samp_node_share"] = torch.tensor(stats["distinct_nodes"] / stats["nodes"], device=device)
    return out


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
      params: the ``kd_*`` options (:class:`~icefall_spkd.kd_options.KDOptions`,
        or a dict / AttributeDict / Namespace holding its fields).
        ``kd_scale`` / ``kd_sampling_scale`` are NOT applied here.
      generator: for the sampler and ``sampled`` node weights.
    Returns:
      ``kd`` (L_PKD or the baseline's loss on the reference, a sum),
      ``kd_samp`` (``(1/N) sum_n`` of the same on sampled sequences; 0 if no
      sampler), ``kd_frames`` (sum of ``T_b``), and detached statistics
      ``kd_samp_tokens`` (sampled tokens per sequence), ``kd_samp_empty``
      (fraction of empty sampled sequences), ``kd_samp_distinct`` (distinct
      (utterance, sequence) rows run / sampled sequences) and, with shared
      nodes, ``kd_samp_node_share`` (distinct window nodes / all of them).
    """
    opts = KDOptions.from_params(params)
    s_enc = student_out.encoder_out
    device = s_enc.device
    enc_lens = student_out.encoder_out_lens.to(device)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    out = {"kd": zero, "kd_samp": zero, "kd_frames": enc_lens.sum().to(torch.float32)}
    if opts.kd_loss == "none":
        return out
    if opts.kd_loss not in KD_LOSSES:
        raise ValueError(f"unknown kd_loss {opts.kd_loss!r}; choose from {KD_LOSSES}")
    t_enc = teacher_out.encoder_out.detach()
    if t_enc.shape[:2] != s_enc.shape[:2] or not torch.equal(
        teacher_out.encoder_out_lens.to(device), enc_lens
    ):
        raise ValueError(
            "teacher and student must have the same encoder frame rate: got "
            f"{tuple(t_enc.shape[:2])} / {tuple(s_enc.shape[:2])}"
        )
    rows = SequenceRows(
        t_enc, s_enc, enc_lens, y_padded.to(device), y_lens.to(device),
        teacher_out.decoder_out, student_out.decoder_out,
    )  # fmt: skip
    out["kd"] = _reference_kd(teacher, student, rows, teacher_out, student_out, opts, generator)
    y_list = [y_padded[b, :n].tolist() for b, n in enumerate(y_lens.tolist())]
    with _section("sampler"):
        samples = _sampled_sequences(teacher, t_enc, enc_lens, y_list, opts, generator)
    if samples:
        out.update(_samples_kd(teacher, student, t_enc, s_enc, enc_lens, samples, opts, generator))
    return out
