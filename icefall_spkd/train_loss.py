"""The loss of one training or validation batch (``compute_loss``) and its helpers.

Loss-scale warm-up (icefall's rule, restated): the total loss is
``simple_scale * simple_loss + pruned_scale * pruned_loss`` (plus
``--ctc-loss-scale`` times the CTC loss with ``--use-ctc``, as icefall). During the first
``--warm-step`` batches both scales move linearly with the global batch index
``b``: the simple-loss scale starts at 1.0 and falls to ``--simple-loss-scale``,
and the pruned-loss scale starts at 0.1 and rises to 1.0; from batch
``warm_step`` on they stay at ``--simple-loss-scale`` and 1.0. The simple
(trivial-joiner) loss thus dominates early, while its occupancies, which pick
the pruning ranges, are still poor; the pruned loss takes over once they are
meaningful. Validation always uses the final scales.

With a KD teacher the student's forward returns its ``TransducerOutputs``
(through the DDP wrapper, which keeps gradient synchronisation intact), and
``compute_loss`` adds ``kd_scale * (L_PKD + kd_sampling_scale * L_samp)``
(see :mod:`icefall_spkd.teacher`).

Teacher input (``--kd-teacher-input``): by default SpecAugment runs in the
data loader, so teacher and student see the same augmented features. With
``clean`` the loader returns clean features, ``params.student_spec_augment``
holds the SpecAugment module, and :func:`compute_loss` gives the teacher the
clean features and the student an augmented copy (training batches only).
``--spec-aug-start-batch N`` (N > 0) also moves SpecAugment into the step,
which then applies it from update N on; the teacher sees the student's input
unless ``--kd-teacher-input clean``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.teacher import compute_kd_terms, kd_loss_and_metrics
from icefall_spkd.utils import AttributeDict, pad_token_ids


def loss_scales(params: AttributeDict, batch_idx_train: int, is_training: bool) -> Tuple[float, float]:
    """``(simple_loss_scale, pruned_loss_scale)`` at a global batch index (see module doc)."""
    s = float(params.simple_loss_scale)
    warm = float(params.warm_step)
    if not is_training or warm <= 0 or batch_idx_train >= warm:
        return s, 1.0
    frac = batch_idx_train / warm
    return 1.0 - frac * (1.0 - s), 0.1 + 0.9 * frac


def _cut_ids(batch: Dict[str, Any]) -> List[str]:
    cuts = batch.get("supervisions", {}).get("cut")
    if cuts is None:
        return []
    return [getattr(c, "id", str(c)) for c in cuts]


def _feature_lens(batch: Dict[str, Any], device: torch.device) -> torch.Tensor:
    """Per-utterance feature lengths of a K2SpeechRecognitionDataset batch.

    Assumes one supervision per cut covering the whole cut (as in LibriSpeech).
    """
    sup = batch["supervisions"]
    x = batch["inputs"]
    lens = sup.get("num_frames")
    if lens is None:
        return torch.full((x.size(0),), x.size(1), dtype=torch.int64, device=device)
    lens = torch.as_tensor(lens, dtype=torch.int64)
    idx = torch.as_tensor(sup.get("sequence_idx", torch.arange(x.size(0))), dtype=torch.int64)
    out = torch.zeros(x.size(0), dtype=torch.int64)
    out[idx] = lens
    return out.to(device)


def _supervision_segments(batch: Dict[str, Any]) -> Optional[torch.Tensor]:
    """``(S, 3)`` int32 rows ``(sequence_idx, start_frame, num_frames)``, as lhotse's dataset makes them."""
    sup = batch["supervisions"]
    if any(sup.get(k) is None for k in ("sequence_idx", "start_frame", "num_frames")):
        return None
    cols = [torch.as_tensor(sup[k]) for k in ("sequence_idx", "start_frame", "num_frames")]
    return torch.stack(cols, dim=1).to(torch.int32)


def _texts_in_input_order(batch: Dict[str, Any]) -> List[str]:
    """Supervision texts in the order of ``batch['inputs']`` rows."""
    sup = batch["supervisions"]
    texts = list(sup["text"])
    idx = sup.get("sequence_idx")
    if idx is None:
        return texts
    out = [""] * batch["inputs"].size(0)
    for i, t in zip(torch.as_tensor(idx).tolist(), texts):
        out[i] = t
    return out


def autocast_context(params: AttributeDict, device: torch.device):
    """The autocast context for the forward pass (fp16/bf16 on GPU only)."""
    if device.type != "cuda" or not (params.use_fp16 or params.use_bf16):
        return nullcontext()
    dtype = torch.bfloat16 if params.use_bf16 else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def compute_loss(
    params: AttributeDict,
    model: nn.Module,
    batch: Dict[str, Any],
    is_training: bool,
    teacher: Optional[nn.Module] = None,
    kd_generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, MetricsTracker]:
    """Transducer loss of one batch, plus the KD terms when a teacher is given.

    Args:
      params: needs ``sp`` (a SentencePieceProcessor), ``prune_range``,
        ``am_scale``, ``lm_scale``, ``simple_loss_scale``, ``warm_step``,
        ``batch_idx_train``, ``use_fp16``/``use_bf16``.
      model: the Transducer, possibly wrapped in DDP.
      batch: a K2SpeechRecognitionDataset batch.
      is_training: enables gradients and the loss-scale warm-up.
      teacher: the frozen KD teacher (None: plain training); needs the
        ``kd_*`` params (see :mod:`icefall_spkd.teacher`).
      kd_generator: random generator of the KD samplers / sampled node weights.

    ``params.student_spec_augment`` (optional): a SpecAugment applied, in
    training only and from update ``params.spec_aug_start_batch`` on, to the
    student's copy of the features; the teacher gets the batch's features as
    they are with ``kd_teacher_input == "clean"``, else the student's copy
    (see the module docstring).

    Returns:
      ``(loss, info)``: ``loss`` is summed over the utterances; ``info`` holds
      summed ``loss``, ``simple_loss``, ``pruned_loss`` and the count ``frames``
      (encoder frames), plus ``utterances``; with ``params.use_ctc`` (and a
      CTC head) ``ctc_loss``, added to ``loss`` times ``params.ctc_loss_scale``;
      with a teacher also ``kd_loss``
      and, with a sampler, ``kd_samp_loss``, ``kd_samp_tokens``,
      ``kd_samp_empty``, ``kd_ref_tokens`` (see :func:`kd_loss_and_metrics`).
    """
    device = next(model.parameters()).device
    x = batch["inputs"].to(device)
    if x.ndim != 3:
        raise ValueError(f"batch['inputs'] must be (N, T, F), got shape {tuple(x.shape)}")
    x_lens = _feature_lens(batch, device)
    x_student = x
    augment = params.get("student_spec_augment") if is_training else None
    if augment is not None and params.batch_idx_train >= int(params.get("spec_aug_start_batch", 0)):
        x_student = augment(x, supervision_segments=_supervision_segments(batch))
    # --kd-teacher-input augmented: the teacher sees what the student sees.
    x_teacher = x if params.get("kd_teacher_input", "augmented") == "clean" else x_student
    texts = _texts_in_input_order(batch)
    y = params.sp.encode(texts, out_type=int)

    sf = int(params.get("subsampling_factor", 4))
    frames = float((x_lens // sf).sum().item())
    kd_metrics: Dict[str, float] = {}
    with torch.set_grad_enabled(is_training):
        fwd_kwargs = dict(prune_range=params.prune_range, am_scale=params.am_scale, lm_scale=params.lm_scale)
        student = model.module if hasattr(model, "module") else model
        use_ctc = bool(params.get("use_ctc")) and getattr(student, "ctc_output", None) is not None
        if teacher is None and not use_ctc:
            with autocast_context(params, device):
                simple_loss, pruned_loss = model(x_student, x_lens, y, **fwd_kwargs)
        else:
            # Through model(...) so that a DDP wrapper sees the forward.
            with autocast_context(params, device):
                student_out = model(x_student, x_lens, y, return_outputs=True, **fwd_kwargs)
            simple_loss, pruned_loss = student_out.simple_loss, student_out.pruned_loss
        s_scale, p_scale = loss_scales(params, params.batch_idx_train, is_training)
        loss = s_scale * simple_loss + p_scale * pruned_loss
        if use_ctc:  # icefall: loss += ctc_loss_scale * ctc_loss (no warm-up on it)
            y_padded, y_lens = pad_token_ids(y, pad_id=int(student.blank_id), device=device)
            ctc_loss = student.ctc_loss(
                student_out.encoder_out, student_out.encoder_out_lens, y_padded, y_lens
            )
            loss = loss + float(params.ctc_loss_scale) * ctc_loss

        if teacher is not None:
            y_padded, y_lens = pad_token_ids(y, pad_id=int(params.blank_id), device=device)
            terms = compute_kd_terms(
                params, teacher, student, student_out, x_teacher, x_lens, y_padded, y_lens, kd_generator
            )
            kd_loss, kd_metrics = kd_loss_and_metrics(params, terms, y_lens, frames)
            loss = loss + kd_loss

    info = MetricsTracker()
    info["frames"] = frames
    info["utterances"] = float(x.size(0))
    info["loss"] = loss.detach().float().item()
    info["simple_loss"] = simple_loss.detach().float().item()
    info["pruned_loss"] = pruned_loss.detach().float().item()
    if use_ctc:
        info["ctc_loss"] = ctc_loss.detach().float().item()
    for k, v in kd_metrics.items():
        info[k] = v
    return loss, info
