"""The KD side of training: options, the frozen teacher, and the per-batch KD terms.

Used by :mod:`icefall_spkd.training` (``load_teacher``, ``compute_loss``) and by
``spkd_transducer/train.py`` (``add_kd_arguments``). The KD losses themselves
are :func:`icefall_spkd.kd.compute_kd_losses`; see ``docs/SPKD.md``.

Total loss (``lambda`` = ``--kd-scale``, ``rho`` = ``--kd-sampling-scale``)::

    L = s_simple * L_simple + s_pruned * L_pruned + lambda * L_PKD + lambda * rho * L_samp

Choices made here (where the specification is silent):

* Teacher file: an ``epoch-N.pt`` / ``checkpoint-N.pt`` of this recipe (its
  ``model`` entry, or ``model_avg`` with ``--teacher-use-averaged-model true``)
  or an exported ``pretrained.pt`` (``{"model", "params"}``; already averaged,
  so ``--teacher-use-averaged-model`` does not apply to it and is ignored with
  a log line). Loading is strict: missing or unexpected keys are an error that
  names the keys and the file.
* Teacher architecture: the hyper-parameters saved in the file win when present
  (training checkpoints store the run's options at the top level,
  ``pretrained.pt`` under ``params``); ``--teacher-model-preset`` and the
  ``--teacher-*`` dimension flags are then only checked against them, and a
  difference is an error. Without saved hyper-parameters the flags define the
  teacher (preset, explicit flags overriding it). ``vocab_size``, ``blank_id``
  and ``feature_dim`` always come from the student's run (shared BPE model).
* BPE check: the teacher's output layer must have the student's vocabulary
  size; a saved ``vocab_size`` must match too; a saved ``bpe_model`` path that
  exists on this machine must hold the same pieces as the student's
  ``--bpe-model`` (if it does not exist, only the vocabulary size is checked,
  with a warning).
* Frozen teacher: ``requires_grad`` False everywhere, eval mode, and its
  ``train()`` is replaced by one that keeps it in eval mode, so no
  ``model.train()`` anywhere can turn its dropout on. It is never a submodule
  of the student, so it is in no optimizer and no DDP wrapper (each rank holds
  its own copy on its device).
* Precision: the teacher's forward and all KD arithmetic run in float32
  outside autocast under ``torch.no_grad()`` for the teacher; with
  ``--use-fp16/--use-bf16`` the student's encoder/decoder outputs are cast to
  float32 before they enter the KD losses (the cast is differentiable).
* ``--kd-sampler`` defaults to ``teacher`` when ``--kd-loss`` is not ``none``
  (the specification's default) and to ``none`` otherwise; PKD alone is
  ``--kd-sampler none``.
* Random numbers: the KD code (samplers, ``sampled`` node weights) uses its
  own CPU ``torch.Generator``, seeded from ``--seed + epoch - 1`` and the rank
  at the start of every epoch (like the global generators), and its state is
  stored in every checkpoint (``kd_generator_state``) so a mid-epoch resume is
  exact. Validation uses a fresh generator with a fixed seed each time, so
  its KD values are comparable across validations and it leaves the training
  stream alone.
* Logged metrics (summed, shown per frame by the MetricsTracker):
  ``kd_loss`` (``L_PKD``, or the full/collapsed baseline), ``kd_samp_loss``
  (``L_samp``, only with a sampler), ``kd_samp_tokens`` (sampled tokens per
  frame, averaged over the ``N`` samples) next to ``kd_ref_tokens``
  (reference tokens per frame), and ``kd_samp_empty`` (fraction of empty
  sampled sequences) and ``kd_samp_distinct`` (distinct (utterance,
  sequence) pairs among the sampled ones, i.e. the share of the sampled KD
  work actually run; duplicates are run once and counted), both stored as
  ``fraction * frames`` so that the per-frame display is the frame-weighted
  fraction; likewise ``kd_samp_node_share`` (distinct KD window nodes among
  all those of the sampled sequences, see ``--kd-share-nodes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from icefall_spkd.checkpoint import CheckpointError, _torch_load, load_state_dict_strict
from icefall_spkd.kd import KD_LOSSES, KD_SAMPLERS, NODE_WEIGHT_KINDS, compute_kd_losses
from icefall_spkd.models.presets import (
    DIM_KEYS,
    PRESETS,
    ModelConfig,
    build_model,
    resolve_model_config,
)
from icefall_spkd.utils import AttributeDict, str2bool

LOG = logging.getLogger(__name__)

#: Architecture keys that may be given as ``--teacher-<key>`` and are checked against the file.
TEACHER_ARCH_KEYS: Tuple[str, ...] = (*DIM_KEYS, "context_size")

_OUTPUT_LAYER_KEY = "joiner.output_linear.weight"


class TeacherError(ValueError):
    """A teacher file or KD option that cannot be used (the message says why)."""


# --------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------- #
def add_kd_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-*`` and ``--kd-*`` options (become ``params.teacher_*`` / ``params.kd_*``)."""
    g = parser.add_argument_group("Knowledge distillation (SP-KD, docs/SPKD.md)")
    g.add_argument(
        "--teacher-checkpoint",
        type=str,
        default=None,
        help="Teacher weights: an epoch-N.pt / checkpoint-N.pt of this recipe or an exported "
        "pretrained.pt. It must use the student's --bpe-model.",
    )
    g.add_argument(
        "--teacher-use-averaged-model",
        type=str2bool,
        default=False,
        help="Use the running-average weights (model_avg) of an epoch/checkpoint file.",
    )
    g.add_argument(
        "--teacher-model-preset",
        type=str,
        default=None,
        choices=sorted(PRESETS),
        help="Teacher size when the file does not record it (else only checked against it).",
    )
    for key in TEACHER_ARCH_KEYS:
        g.add_argument(
            f"--teacher-{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"Teacher {key} (overrides --teacher-model-preset; checked against the file).",
        )
    g.add_argument("--kd-loss", type=str, default="none", choices=list(KD_LOSSES),
                   help="none | pkd (pruned KD) | full (full-lattice KD) | collapsed (3-class KD).")
    g.add_argument("--kd-scale", type=float, default=0.5,
                   help="lambda: scale of the KD terms (losses are sums; tune on dev).")
    g.add_argument("--kd-sampler", type=str, default=None, choices=list(KD_SAMPLERS),
                   help="Sequences for L_samp: teacher (ancestral sampling), nbest, batch "
                   "(other utterances' transcripts), none. Default: teacher when --kd-loss is "
                   "not none, else none.")
    g.add_argument("--kd-num-samples", type=int, default=1, help="N: sampled sequences per utterance.")
    g.add_argument("--kd-sampling-scale", type=float, default=1.0,
                   help="rho: L_samp is scaled by lambda * rho.")
    g.add_argument("--kd-sample-temperature", type=float, default=1.0,
                   help="tau_s of the teacher sampler.")
    g.add_argument("--kd-temperature", type=float, default=1.0, help="tau of the KD softmax (KL * tau^2).")
    g.add_argument("--kd-prune-range", type=int, default=5, help="R_kd: width of the KD window.")
    g.add_argument("--kd-ranges", type=str, default="teacher", choices=["teacher", "student"],
                   help="Whose simple-loss occupancies choose the KD window.")
    g.add_argument("--kd-node-weights", type=str, default="uniform", choices=list(NODE_WEIGHT_KINDS),
                   help="Node weights in the KD window (normalised to T_b per utterance).")
    g.add_argument("--kd-num-paths", type=int, default=16, help="M: alignment paths for 'sampled' weights.")
    g.add_argument("--kd-share-nodes", type=str2bool, default=True,
                   help="Sampled sequences: evaluate each distinct KD window node (utterance, "
                   "frame, decoder context) once and weight it by its copies. Same loss and "
                   "gradient; needs stateless decoders and uniform node weights (else ignored).")
    g.add_argument("--kd-nbest-beam", type=int, default=4,
                   help="Beam of the nbest sampler (at least --kd-num-samples is used).")


def kd_enabled(params: Any) -> bool:
    """True when ``--kd-loss`` is not ``none``."""
    return _get(params, "kd_loss", "none") not in (None, "none")


def validate_kd_params(params: AttributeDict) -> None:
    """Check the KD option combination, fill ``params.kd_sampler``'s default; raise :class:`TeacherError`."""
    kd_loss = params.get("kd_loss") or "none"
    params.kd_loss = kd_loss
    sampler = params.get("kd_sampler")
    teacher = params.get("teacher_checkpoint")
    if kd_loss not in KD_LOSSES:
        raise TeacherError(f"--kd-loss {kd_loss!r}: choose from {list(KD_LOSSES)}")
    if kd_loss == "none":
        if sampler not in (None, "none"):
            raise TeacherError(f"--kd-sampler {sampler} needs a KD loss: set --kd-loss pkd|full|collapsed")
        if teacher:
            raise TeacherError(
                f"--teacher-checkpoint {teacher} is given but --kd-loss is none: set "
                "--kd-loss pkd|full|collapsed, or drop --teacher-checkpoint"
            )
        params.kd_sampler = "none"
        return
    if not teacher:
        raise TeacherError(f"--kd-loss {kd_loss} needs a teacher: give --teacher-checkpoint")
    if sampler is None:
        sampler = params.kd_sampler = "teacher"
    if sampler not in KD_SAMPLERS:
        raise TeacherError(f"--kd-sampler {sampler!r}: choose from {list(KD_SAMPLERS)}")
    checks = [
        (params.kd_scale >= 0, f"--kd-scale must be >= 0, got {params.kd_scale}"),
        (params.kd_sampling_scale >= 0, f"--kd-sampling-scale must be >= 0, got {params.kd_sampling_scale}"),
        (params.kd_temperature > 0, f"--kd-temperature must be > 0, got {params.kd_temperature}"),
        (params.kd_sample_temperature > 0,
         f"--kd-sample-temperature must be > 0, got {params.kd_sample_temperature}"),
        # k2/fast_rnnt widen a regular-topology window of 1 to 2 (with a warning per batch).
        (params.kd_prune_range >= 2, f"--kd-prune-range must be >= 2, got {params.kd_prune_range}"),
        (params.kd_num_paths >= 1, f"--kd-num-paths must be >= 1, got {params.kd_num_paths}"),
        (params.kd_nbest_beam >= 1, f"--kd-nbest-beam must be >= 1, got {params.kd_nbest_beam}"),
        (sampler == "none" or params.kd_num_samples >= 1,
         f"--kd-sampler {sampler} needs --kd-num-samples >= 1, got {params.kd_num_samples}"),
        (kd_loss == "pkd" or params.kd_node_weights == "uniform",
         f"--kd-node-weights {params.kd_node_weights} applies to --kd-loss pkd only "
         f"(--kd-loss {kd_loss} weighs every lattice node 1)"),
        (kd_loss == "pkd" or params.kd_ranges == "teacher",
         f"--kd-ranges {params.kd_ranges} applies to --kd-loss pkd only"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TeacherError(msg)


# --------------------------------------------------------------------------- #
# Teacher
# --------------------------------------------------------------------------- #
def _get(params: Any, key: str, default: Any = None) -> Any:
    if isinstance(params, dict):
        return params.get(key, default)
    return getattr(params, key, default)


def _saved_hparams(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """Hyper-parameters recorded in a checkpoint (``params`` of pretrained.pt, else the top level)."""
    saved = ckpt.get("params")
    return dict(saved) if isinstance(saved, dict) else ckpt


def _saved_config(saved: Dict[str, Any]) -> Optional[ModelConfig]:
    """The architecture recorded in a file, or None when it records none (or too little)."""
    keys = {f.name for f in dataclasses.fields(ModelConfig)} | {"model_preset"}
    values = {k: saved[k] for k in keys if saved.get(k) is not None}
    if values.get("model_preset") not in PRESETS:
        values.pop("model_preset", None)
        if not all(k in values for k in DIM_KEYS):
            return None
    return resolve_model_config(values)


def _cli_config_values(params: Any) -> Dict[str, int]:
    """Architecture values asked for by ``--teacher-model-preset`` / ``--teacher-*`` (maybe partial)."""
    out: Dict[str, int] = {}
    preset = _get(params, "teacher_model_preset")
    if preset is not None:
        if preset not in PRESETS:
            raise TeacherError(f"--teacher-model-preset {preset!r}: choose from {sorted(PRESETS)}")
        out.update(PRESETS[preset])
    for key in TEACHER_ARCH_KEYS:
        v = _get(params, f"teacher_{key}")
        if v is not None:
            out[key] = int(v)
    return out


def resolve_teacher_config(params: Any, saved: Dict[str, Any], filename: str) -> ModelConfig:
    """The teacher's :class:`ModelConfig`: the file's record, checked against the flags (see module doc)."""
    asked = _cli_config_values(params)
    cfg = _saved_config(saved)
    if cfg is not None:
        conflicts = [
            f"--teacher-{k.replace('_', '-')} {v} (file: {getattr(cfg, k)})"
            for k, v in asked.items()
            if getattr(cfg, k) != v
        ]
        if conflicts:
            raise TeacherError(
                f"The teacher options conflict with the architecture recorded in {filename}: "
                + ", ".join(conflicts)
                + ". Drop the --teacher-* flags (the file's values are used) or fix them."
            )
        values = dataclasses.asdict(cfg)
    else:
        missing = [k for k in DIM_KEYS if k not in asked]
        if missing:
            raise TeacherError(
                f"{filename} does not record the teacher's architecture: give "
                f"--teacher-model-preset ({'/'.join(PRESETS)}) or all of "
                + ", ".join(f"--teacher-{k.replace('_', '-')}" for k in missing)
            )
        values = {**dataclasses.asdict(resolve_model_config({**asked})), **asked}
    for key in ("vocab_size", "blank_id", "feature_dim"):
        values[key] = int(_get(params, key, values.get(key)))
    values["dropout"] = 0.0  # eval mode anyway
    return ModelConfig(**values)


def _bpe_pieces(path: str) -> list:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.load(str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def check_teacher_vocab(
    params: Any, saved: Dict[str, Any], state_dict: Dict[str, torch.Tensor], filename: str
) -> None:
    """The teacher must use the student's BPE model (see module doc); raise :class:`TeacherError`."""
    vocab = int(_get(params, "vocab_size"))
    bpe = _get(params, "bpe_model")
    w = state_dict.get(_OUTPUT_LAYER_KEY)
    if w is None:
        w = state_dict.get("module." + _OUTPUT_LAYER_KEY)
    if w is not None and int(w.shape[0]) != vocab:
        raise TeacherError(
            f"The teacher in {filename} has an output vocabulary of {int(w.shape[0])} "
            f"({_OUTPUT_LAYER_KEY}), the student's BPE model {bpe} has {vocab}: teacher and "
            "student must share one BPE model"
        )
    saved_vocab = saved.get("vocab_size")
    if saved_vocab is not None and int(saved_vocab) != vocab:
        raise TeacherError(
            f"{filename} records vocab_size={saved_vocab}, the student's BPE model {bpe} has "
            f"{vocab}: teacher and student must share one BPE model"
        )
    saved_bpe = saved.get("bpe_model")
    if saved_bpe and bpe:
        if not Path(saved_bpe).is_file():
            LOG.warning(
                f"{filename} records bpe_model={saved_bpe}, which is not here; only the "
                f"vocabulary size ({vocab}) was checked against {bpe}"
            )
        elif not os.path.samefile(saved_bpe, bpe) and _bpe_pieces(saved_bpe) != _bpe_pieces(bpe):
            raise TeacherError(
                f"{filename} was trained with the BPE model {saved_bpe}, whose pieces differ from "
                f"the student's {bpe}: teacher and student must share one BPE model"
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


def load_teacher(params: AttributeDict, device: torch.device) -> Optional[nn.Module]:
    """Build, load (strictly), freeze and move the teacher; None when ``--kd-loss none``.

    Needs ``params.vocab_size``/``blank_id`` (set by ``load_bpe``), ``bpe_model``,
    ``feature_dim`` and the ``--teacher-*`` options. See the module docstring.
    """
    if not kd_enabled(params):
        return None
    filename = str(params.teacher_checkpoint)
    try:
        ckpt = _torch_load(filename)
    except CheckpointError as e:
        raise TeacherError(f"--teacher-checkpoint: {e}") from e
    saved = _saved_hparams(ckpt)
    is_pretrained = isinstance(ckpt.get("params"), dict) and "optimizer" not in ckpt
    key = "model"
    if params.get("teacher_use_averaged_model"):
        if is_pretrained:
            LOG.info(f"{filename} is an exported model; --teacher-use-averaged-model does not apply")
        else:
            key = "model_avg"
    state_dict = ckpt.get(key)
    if state_dict is None:
        raise TeacherError(
            f"{filename} has no '{key}' entry"
            + (" (use --teacher-use-averaged-model false)" if key == "model_avg" else "")
        )
    check_teacher_vocab(params, saved, state_dict, filename)
    cfg = resolve_teacher_config(params, saved, filename)
    teacher = build_model(cfg)
    load_state_dict_strict(teacher, state_dict, strict=True, what=f"{filename}['{key}']")
    teacher.to(device=device, dtype=torch.float32)
    freeze_teacher(teacher)
    n = sum(p.numel() for p in teacher.parameters())
    LOG.info(f"Teacher: {filename}['{key}'], {n} parameters, config {dataclasses.asdict(cfg)}")
    return teacher


# --------------------------------------------------------------------------- #
# Random numbers
# --------------------------------------------------------------------------- #
def kd_seed(seed: int, rank: int) -> int:
    """Seed of the KD generator for a run seed (``--seed + epoch - 1``) and a DDP rank."""
    return (int(seed) * 1_000_003 + 7919 * (int(rank) + 1)) % (2**63)


def make_kd_generator(seed: int, rank: int) -> torch.Generator:
    """A CPU generator for the KD samplers (usable with CUDA tensors, see sampling.py)."""
    g = torch.Generator()
    g.manual_seed(kd_seed(seed, rank))
    return g


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
      params: the run's params (``kd_*``, ``prune_range``, ``am_scale``, ``lm_scale``).
      teacher: the frozen teacher.
      student: the student Transducer (unwrapped from DDP).
      student_out: the student's ``TransducerOutputs`` on ``(x, y)``.
      x, x_lens: features and their lengths.
      y_padded, y_lens: reference tokens.
      generator: the KD generator.
    Returns:
      :func:`~icefall_spkd.kd.compute_kd_losses`'s dict (``kd``, ``kd_samp``,
      ``kd_frames``, maybe ``kd_samp_tokens``/``kd_samp_empty``).
    """
    device = x.device
    with torch.autocast(device_type=device.type, enabled=False):
        with torch.no_grad():
            t_enc, t_lens = teacher.forward_encoder(x.float(), x_lens)
            teacher_out = teacher.transducer_outputs(
                t_enc,
                t_lens,
                y_padded,
                y_lens,
                prune_range=int(params.kd_prune_range),
                am_scale=float(params.am_scale),
                lm_scale=float(params.lm_scale),
            )
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
    if params.kd_sampler != "none":
        loss = loss + lam * float(params.kd_sampling_scale) * terms["kd_samp"]
        metrics["kd_samp_loss"] = terms["kd_samp"].detach().float().item()
        B = int(y_lens.numel())
        if "kd_samp_tokens" in terms:
            metrics["kd_samp_tokens"] = float(terms["kd_samp_tokens"]) * B
            metrics["kd_samp_empty"] = float(terms["kd_samp_empty"]) * frames
        if "kd_samp_distinct" in terms:
            metrics["kd_samp_distinct"] = float(terms["kd_samp_distinct"]) * frames
        if "kd_samp_node_share" in terms:
            metrics["kd_samp_node_share"] = float(terms["kd_samp_node_share"]) * frames
        metrics["kd_ref_tokens"] = float(y_lens.sum())
    return loss, metrics
