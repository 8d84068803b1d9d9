"""The KD options: their names, defaults and checks, in one place.

``train.py`` gets them from :func:`add_kd_arguments` (``--kd-*`` and
``--teacher-*``, which become ``params.kd_*`` / ``params.teacher_*``), the table
driver ``local/run_table.py`` and ``local/tune_kd.py`` from
:data:`icefall_spkd.results_table.KD_SETTINGS`, which reads its defaults from
:class:`KDOptions`; ``run_demo.sh`` passes no KD setting, so it uses them too.

Defaults (:class:`KDOptions`):

* ``lambda`` = ``--kd-scale`` 2.0 and ``rho`` = ``--kd-sampling-scale`` 0.5:
  tuned on dev for the SP-KD (N = 2) row by ``local/tune_kd.py``
  (``egs/librispeech/ASR/RESULTS.md``, "Tuning the KD settings"; the
  authors' 0.5 and 1.0 were the starting point).
* ``tau`` = ``--kd-temperature`` 1.0 and ``R_kd`` = ``--kd-prune-range`` 5:
  the specification's values; the same tuning tried tau 2 and 4 and R_kd 3
  and 8, and none beat them.
* ``tau_s`` = ``--kd-sample-temperature`` 1.0 (not tuned), ``N`` =
  ``--kd-num-samples`` 1, node weights ``uniform``, the teacher's ranges.

Every KD term is normalised to one unit of weight per frame per label
sequence (see :mod:`icefall_spkd.kd`), so ``lambda`` means the same for every
``--kd-loss`` and ``--kd-node-weights``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from icefall_spkd.utils import str2bool

__all__ = [
    "KD_LOSSES",
    "KD_SAMPLERS",
    "NODE_WEIGHT_KINDS",
    "KDOptions",
    "TeacherError",
    "add_kd_arguments",
    "validate_kd_params",
]

NODE_WEIGHT_KINDS = ("uniform", "sampled", "posterior", "viterbi")
KD_LOSSES = ("none", "pkd", "full", "collapsed")
KD_SAMPLERS = ("teacher", "nbest", "batch", "none")


class TeacherError(ValueError):
    """A teacher file or KD option that cannot be used (the message says why)."""


@dataclass(frozen=True)
class KDOptions:
    """The KD settings read by :mod:`icefall_spkd.kd` (field names are the ``params`` keys).

    ``kd_scale`` and ``kd_sampling_scale`` are applied by the training loop,
    not by the loss functions; ``am_scale`` / ``lm_scale`` are the transducer's
    simple-loss smoothing, used for the KD windows of sampled sequences.
    """

    kd_loss: str = "none"
    kd_scale: float = 2.0
    kd_sampler: str = "teacher"
    kd_num_samples: int = 1
    kd_sampling_scale: float = 0.5
    kd_sample_temperature: float = 1.0
    kd_temperature: float = 1.0
    kd_prune_range: int = 5
    kd_ranges: str = "teacher"
    kd_node_weights: str = "uniform"
    kd_num_paths: int = 16
    kd_share_nodes: bool = True
    kd_nbest_beam: int = 4
    am_scale: float = 0.0
    lm_scale: float = 0.0

    @classmethod
    def from_params(cls, params: Any) -> KDOptions:
        """From a dict / AttributeDict / Namespace / KDOptions; missing or None keys take the default."""
        if isinstance(params, cls):
            return params
        src = params if isinstance(params, Mapping) else vars(params)
        return cls(**{f.name: src[f.name] for f in fields(cls) if src.get(f.name) is not None})


DEFAULTS = KDOptions()


def add_kd_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-*`` and ``--kd-*`` options (become ``params.teacher_*`` / ``params.kd_*``)."""
    d = DEFAULTS
    g = parser.add_argument_group("Knowledge distillation (SP-KD, docs/SPKD.md)")
    g.add_argument("--teacher-checkpoint", type=str, default=None,
                   help="Teacher weights: an epoch-N.pt / checkpoint-N.pt of this recipe or an "
                   "exported pretrained.pt. It must use the student's --bpe-model.")
    g.add_argument("--teacher-use-averaged-model", type=str2bool, default=False,
                   help="Use the running-average weights (model_avg) of an epoch/checkpoint file.")
    g.add_argument("--kd-loss", type=str, default=d.kd_loss, choices=list(KD_LOSSES),
                   help="none | pkd (pruned KD) | full (full-lattice KD) | collapsed (3-class KD).")
    g.add_argument("--kd-scale", type=float, default=d.kd_scale,
                   help="lambda: scale of the KD terms (one unit of weight per frame per label "
                   "sequence for every --kd-loss; tuned on dev, see icefall_spkd/kd_options.py).")
    g.add_argument("--kd-sampler", type=str, default=None, choices=list(KD_SAMPLERS),
                   help="Sequences for L_samp: teacher (ancestral sampling), nbest, batch "
                   "(other utterances' transcripts), none. Default: teacher when --kd-loss is "
                   "not none, else none.")
    g.add_argument("--kd-num-samples", type=int, default=d.kd_num_samples,
                   help="N: sampled sequences per utterance.")
    g.add_argument("--kd-sampling-scale", type=float, default=d.kd_sampling_scale,
                   help="rho: L_samp is scaled by lambda * rho.")
    g.add_argument("--kd-sample-temperature", type=float, default=d.kd_sample_temperature,
                   help="tau_s of the teacher sampler.")
    g.add_argument("--kd-temperature", type=float, default=d.kd_temperature,
                   help="tau of the KD softmax (KL * tau^2).")
    g.add_argument("--kd-prune-range", type=int, default=d.kd_prune_range,
                   help="R_kd: width of the KD window.")
    g.add_argument("--kd-ranges", type=str, default=d.kd_ranges, choices=["teacher", "student"],
                   help="Whose simple-loss occupancies choose the KD window.")
    g.add_argument("--kd-node-weights", type=str, default=d.kd_node_weights,
                   choices=list(NODE_WEIGHT_KINDS),
                   help="Node weights in the KD window (normalised to T_b per label sequence).")
    g.add_argument("--kd-num-paths", type=int, default=d.kd_num_paths,
                   help="M: alignment paths for 'sampled' weights.")
    g.add_argument("--kd-share-nodes", type=str2bool, default=d.kd_share_nodes,
                   help="Sampled sequences: evaluate each distinct KD window node (utterance, "
                   "frame, decoder context) once and weight it by its copies. Same loss and "
                   "gradient; needs uniform node weights (else ignored).")
    g.add_argument("--kd-nbest-beam", type=int, default=d.kd_nbest_beam,
                   help="Beam of the nbest sampler (at least --kd-num-samples is used).")


def validate_kd_params(params: Any) -> None:
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
        sampler = params.kd_sampler = DEFAULTS.kd_sampler
    if sampler not in KD_SAMPLERS:
        raise TeacherError(f"--kd-sampler {sampler!r}: choose from {list(KD_SAMPLERS)}")
    p = KDOptions.from_params(params)
    checks = [
        (p.kd_scale >= 0, f"--kd-scale must be >= 0, got {p.kd_scale}"),
        (p.kd_sampling_scale >= 0, f"--kd-sampling-scale must be >= 0, got {p.kd_sampling_scale}"),
        (p.kd_temperature > 0, f"--kd-temperature must be > 0, got {p.kd_temperature}"),
        (p.kd_sample_temperature > 0,
         f"--kd-sample-temperature must be > 0, got {p.kd_sample_temperature}"),
        # k2/fast_rnnt widen a regular-topology window of 1 to 2 (with a warning per batch).
        (p.kd_prune_range >= 2, f"--kd-prune-range must be >= 2, got {p.kd_prune_range}"),
        (p.kd_num_paths >= 1, f"--kd-num-paths must be >= 1, got {p.kd_num_paths}"),
        (p.kd_nbest_beam >= 1, f"--kd-nbest-beam must be >= 1, got {p.kd_nbest_beam}"),
        (sampler == "none" or p.kd_num_samples >= 1,
         f"--kd-sampler {sampler} needs --kd-num-samples >= 1, got {p.kd_num_samples}"),
        (kd_loss == "pkd" or p.kd_node_weights == "uniform",
         f"--kd-node-weights {p.kd_node_weights} applies to --kd-loss pkd only "
         f"(--kd-loss {kd_loss} weighs every lattice node alike)"),
        (kd_loss == "pkd" or p.kd_ranges == "teacher",
         f"--kd-ranges {p.kd_ranges} applies to --kd-loss pkd only"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TeacherError(msg)
