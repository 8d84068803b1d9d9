"""The KD side of training: the frozen teacher, the KD generator and the per-batch KD terms.

Used by :mod:`icefall_spkd.training` (``load_teacher``, ``compute_loss``). The
KD options are defined in :mod:`icefall_spkd.kd_options` (re-exported here:
``add_kd_arguments``, ``validate_kd_params``, ``TeacherError``); the losses are
:func:`icefall_spkd.kd.compute_kd_losses`; see ``docs/SPKD.md``.

Total loss (``lambda`` = ``--kd-scale``, ``rho`` = ``--kd-sampling-scale``)::

    L = s_simple * L_simple + s_pruned * L_pruned + lambda * L_PKD + lambda * rho * L_samp

Choices made here (where the specification is silent):

* Teacher file: an ``epoch-N.pt`` / ``checkpoint-N.pt`` of this recipe (its
  ``model`` entry, or ``model_avg`` with ``--teacher-use-averaged-model true``)
  or an exported ``pretrained.pt`` (``{"model", "params"}``; already averaged,
  so ``--teacher-use-averaged-model`` does not apply to it). The architecture
  is the one the file records (training checkpoints store the run's options at
  the top level, ``pretrained.pt`` under ``params``); ``vocab_size``,
  ``blank_id`` and ``feature_dim`` come from the student's run. Loading is
  strict: missing or unexpected keys are an error naming the keys and the file.
* BPE check: the teacher's output layer and a recorded ``vocab_size`` must
  match the student's vocabulary; a recorded ``bpe_model`` that exists here
  must hold the same pieces as the student's ``--bpe-model`` (if it does not
  exist, only the vocabulary size is checked, with a warning).
* Frozen teacher: ``requires_grad`` False, eval mode, and a ``train()`` that
  keeps eval mode. It is never a submodule of the student, so it is in no
  optimizer and no DDP wrapper (each rank holds its own copy).
* Precision: the teacher's forward and all KD arithmetic run in float32
  outside autocast; with ``--use-fp16/--use-bf16`` the student's encoder and
  decoder outputs are cast to float32 (differentiably) before the KD losses.
* Random numbers: the KD code (samplers, ``sampled`` node weights) uses its
  own CPU ``torch.Generator``, seeded from ``--seed + epoch - 1`` and the rank
  at the start of every epoch; its state is stored in every checkpoint
  (``kd_generator_state``) so that a mid-epoch resume is exact.
* Logged metrics (summed, shown per frame by the MetricsTracker): ``kd_loss``,
  ``kd_samp_loss`` (with a sampler), ``kd_samp_tokens`` next to
  ``kd_ref_tokens``, and the fractions ``kd_samp_empty``,
  ``kd_samp_distinct`` and ``kd_samp_node_share`` stored as
  ``fraction * frames`` so that the per-frame display is the frame-weighted
  fraction.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from icefall_spkd.checkpoint import CheckpointError, _torch_load, load_state_dict_strict
from icefall_spkd.kd import compute_kd_losses
from icefall_spkd.kd_options import TeacherError, add_kd_arguments, validate_kd_params
from icefall_spkd.models import build_model
from icefall_spkd.teacher_arch import check_teacher_symbols, teacher_architecture

__all__ = [
    "TeacherError",
    "add_kd_arguments",
    "compute_kd_terms",
    "freeze_teacher",
    "generator_state_from_str",
    "generator_state_to_str",
    "kd_loss_and_metrics",
    "kd_seed",
    "load_teacher",
    "make_kd_generator",
    "validate_kd_params",
]

LOG = logging.getLogger(__name__)

_OUTPUT_LAYER_KEY = "joiner.output_linear.weight"


# --------------------------------------------------------------------------- #
# Teacher
# --------------------------------------------------------------------------- #
def _bpe_pieces(path: str) -> list:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.load(str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def check_teacher_vocab(
    params: Any, saved: Dict[str, Any], state_dict: Dict[str, torch.Tensor], filename: str
) -> None:
    """The teacher must use the student's BPE model (see module doc); raise :class:`TeacherError`."""
    vocab, bpe = int(params["vocab_size"]), params.get("bpe_model")
    share = "teacher and student must share one BPE model"
    w = state_dict.get(_OUTPUT_LAYER_KEY)
    if w is not None and int(w.shape[0]) != vocab:
        raise TeacherError(
            f"The teacher in {filename} has an output vocabulary of {int(w.shape[0])} "
            f"({_OUTPUT_LAYER_KEY}), the student's BPE model {bpe} has {vocab}: {share}"
        )
    if saved.get("vocab_size") is not None and int(saved["vocab_size"]) != vocab:
        raise TeacherError(
            f"{filename} records vocab_size={saved['vocab_size']}, the student's BPE model "
            f"{bpe} has {vocab}: {share}"
        )
    saved_bpe = saved.get("bpe_model")
    if not (saved_bpe and bpe):
        return
    if not Path(saved_bpe).is_file():
        LOG.warning(
            f"{filename} records bpe_model={saved_bpe}, which is not here; only the "
            f"vocabulary size ({vocab}) was checked against {bpe}"
        )
    elif not os.path.samefile(saved_bpe, bpe) and _bpe_pieces(saved_bpe) != _bpe_pieces(bpe):
        raise TeacherError(
            f"{filename} was trained with the BPE model {saved_bpe}, whose pieces differ from "
            f"the student's {bpe}: {share}"
        )


def _train_keeps_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``nn.Module.train`` replacement for the teacher: always eval mode."""
    return nn.Module.train(self, False)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """No gradients, eval mode, and a ``train()`` that keeps eval mode; returns ``teacher``."""
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.train = types.MethodType(_train_keeps_eval, teacher)
    return teacher


def _build_teacher(params: Any, saved: Dict[str, Any], filename: str) -> nn.Module:
    """The architecture recorded in the file, with the student's vocabulary and features."""
    shared = {k: params[k] for k in ("vocab_size", "blank_id", "feature_dim")}
    try:
        return build_model({**saved, **shared, "dropout": 0.0})
    except ValueError as e:
        raise TeacherError(
            f"{filename} does not record the teacher's architecture ({e}); use a checkpoint "
            "written by this recipe's train.py or export.py, or give it with the --teacher-* "
            "model flags (icefall's names: --teacher-num-encoder-layers, --teacher-encoder-dim, ...)"
        ) from e


def load_teacher(params: Any, device: torch.device) -> Optional[nn.Module]:
    """Build, load (strictly), freeze and move the teacher; None when ``--kd-loss none``.

    Needs ``params.vocab_size`` / ``blank_id`` (set by ``load_bpe``),
    ``bpe_model``, ``feature_dim`` and the ``--teacher-*`` options.
    """
    if params.get("kd_loss") in (None, "none"):
        return None
    filename = str(params["teacher_checkpoint"])
    try:
        ckpt = _torch_load(filename)
    except CheckpointError as e:
        raise TeacherError(f"--teacher-checkpoint: {e}") from e
    exported = isinstance(ckpt.get("params"), dict)
    saved = dict(ckpt["params"]) if exported else ckpt
    key = "model"
    if params.get("teacher_use_averaged_model"):
        if exported and "optimizer" not in ckpt:
            LOG.info(f"{filename} is an exported model; --teacher-use-averaged-model does not apply")
        else:
            key = "model_avg"
    state_dict = ckpt.get(key)
    if state_dict is None:
        hint = " (use --teacher-use-averaged-model false)" if key == "model_avg" else ""
        raise TeacherError(f"{filename} has no '{key}' entry{hint}")
    check_teacher_vocab(params, saved, state_dict, filename)
    check_teacher_symbols(params, saved, filename)
    # Architecture: this recipe's stored model_params / pretrained.pt params, an
    # icefall Zipformer file's params, and the --teacher-* model flags.
    teacher = _build_teacher(params, teacher_architecture(params, ckpt, state_dict, filename), filename)
    load_state_dict_strict(teacher, state_dict, strict=True, what=f"{filename}['{key}']")
    teacher.to(device=device, dtype=torch.float32)
    freeze_teacher(teacher)
    n = sum(p.numel() for p in teacher.parameters())
    LOG.info(f"Teacher: {filename}['{key}'], {n} parameters, config {getattr(teacher, 'model_config', None)}")
    return teacher


# --------------------------------------------------------------------------- #
# Random numbers
# --------------------------------------------------------------------------- #
def kd_seed(seed: int, rank: int) -> int:
    """Seed of the KD generator for a run seed (``--seed + epoch - 1``) and a DDP rank."""
    return (int(seed) * 1_000_003 + 7919 * (int(rank) + 1)) % (2**63)


def make_kd_generator(seed: int, rank: int) -> torch.Generator:
    """A CPU generator for the KD samplers (usable with CUDA tensors, see sampling.py)."""
    return torch.Generator().manual_seed(kd_seed(seed, rank))


def generator_state_to_str(g: torch.Generator) -> str:
    """Generator state as a hex string (a plain value, so it is stored with the params)."""
    return bytes(g.get_state().tolist()).hex()


def generator_state_from_str(g: torch.Generator, state: str) -> None:
    """Restore what :func:`generator_state_to_str` returned."""
    g.set_state(torch.tensor(list(bytes.fromhex(state)), dtype=torch.uint8))


# --------------------------------------------------------------------------- #
# Per batch
# --------------------------------------------------------------------------- #
def compute_kd_terms(
    params: Any,
    teacher: nn.Module,
    student: nn.Module,
    student_out: Any,
    x: torch.Tensor,
    x_lens: torch.Tensor,
    y_padded: torch.Tensor,
    y_lens: torch.Tensor,
    generator: Optional[torch.Generator],
) -> Dict[str, torch.Tensor]:
    """The KD terms of one batch, in float32 outside autocast.

    Args:
      params: the run's params (``kd_*``, ``am_scale``, ``lm_scale``).
      teacher: the frozen teacher.
      student: the student Transducer (unwrapped from DDP).
      student_out: the student's ``TransducerOutputs`` on ``(x, y)``.
      x, x_lens: features and their lengths.
      y_padded, y_lens: reference tokens.
      generator: the KD generator.
    Returns:
      :func:`~icefall_spkd.kd.compute_kd_losses`'s dict.
    """
    device = x.device
    with torch.autocast(device_type=device.type, enabled=False):
        with torch.no_grad():
            t_enc, t_lens = teacher.forward_encoder(x.float(), x_lens)
            teacher_out = teacher.transducer_outputs(
                t_enc, t_lens, y_padded, y_lens,
                prune_range=int(params.kd_prune_range),
                am_scale=float(params.am_scale),
                lm_scale=float(params.lm_scale),
            )  # fmt: skip
        s_out = dataclasses.replace(
            student_out,
            encoder_out=student_out.encoder_out.float(),
            decoder_out=student_out.decoder_out.float(),
        )
        return compute_kd_losses(teacher, student, teacher_out, s_out, y_padded, y_lens, params, generator)


def kd_loss_and_metrics(
    params: Any, terms: Dict[str, torch.Tensor], y_lens: torch.Tensor, frames: float
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``lambda * L_PKD + lambda * rho * L_samp`` and the summed values to log (see module doc)."""
    lam = float(params.kd_scale)
    loss = lam * terms["kd"]
    metrics = {"kd_loss": terms["kd"].detach().float().item()}
    if params.kd_sampler == "none":
        return loss, metrics
    loss = loss + lam * float(params.kd_sampling_scale) * terms["kd_samp"]
    metrics["kd_samp_loss"] = terms["kd_samp"].detach().float().item()
    if "kd_samp_tokens" in terms:
        metrics["kd_samp_tokens"] = float(terms["kd_samp_tokens"]) * int(y_lens.numel())
    for key in ("kd_samp_empty", "kd_samp_distinct", "kd_samp_node_share"):
        if key in terms:
            metrics[key] = float(terms[key]) * frames
    metrics["kd_ref_tokens"] = float(y_lens.sum())
    return loss, metrics
