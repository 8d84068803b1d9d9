"""The KD teacher's architecture and vocabulary, for this recipe's and icefall's checkpoints.

Used by :func:`icefall_spkd.teacher.load_teacher`. A teacher file is one of

* this recipe's ``epoch-N.pt`` / ``checkpoint-N.pt`` (the architecture under
  ``model_params``; older files: the run's options at the top level) or its
  exported ``pretrained.pt`` (``{"model", "params"}``);
* an icefall Zipformer checkpoint: ``epoch-N.pt`` (weights under ``"model"``,
  icefall's ``params`` -- ``num_encoder_layers``, ``encoder_dim``, ... -- at the
  top level) or ``pretrained.pt`` (``{"model": state_dict}`` only). Such a
  file is recognised by its ``encoder_embed.*`` weights; its module names are
  this package's, so it loads strictly (as
  :func:`icefall_spkd.models.from_icefall` does).

The ``--teacher-*`` model flags (icefall's names with a ``teacher-`` prefix:
``--teacher-num-encoder-layers 2,2,3,4,3,2``, ``--teacher-encoder-dim ...``,
``--teacher-encoder-type``, ``--teacher-model-preset``, ...) give the
architecture of a file that does not record it, and override single values
of one that does. ``--teacher-tokens`` (the teacher's ``tokens.txt``) or
``--teacher-bpe-model`` is checked symbol by symbol against the student's
vocabulary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from icefall_spkd.kd_options import TeacherError

__all__ = [
    "add_teacher_model_arguments",
    "check_teacher_symbols",
    "teacher_architecture",
]

#: Keys of an icefall ``params`` dict (top level of its ``epoch-N.pt``) that
#: describe a Zipformer transducer.
ICEFALL_ZIPFORMER_KEYS = (
    "num_encoder_layers", "downsampling_factor", "feedforward_dim", "num_heads", "encoder_dim",
    "encoder_unmasked_dim", "cnn_module_kernel", "query_head_dim", "value_head_dim",
    "pos_head_dim", "pos_dim", "decoder_dim", "joiner_dim", "context_size", "causal",
    "chunk_size", "left_context_frames", "use_ctc",
)  # fmt: skip


def _model_actions() -> List[argparse.Action]:
    from icefall_spkd.models.presets import add_model_arguments

    p = argparse.ArgumentParser(add_help=False)
    add_model_arguments(p)
    return [a for a in p._actions if a.option_strings]


def add_teacher_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-<model flag>`` for every model flag, plus ``--teacher-tokens`` / ``--teacher-bpe-model``."""
    g = parser.add_argument_group("KD teacher architecture (for files that do not record it)")
    for a in _model_actions():
        flag = "--teacher-" + a.option_strings[0][2:]
        g.add_argument(flag, dest="teacher_" + a.dest, type=a.type, default=None, choices=a.choices,
                       help=f"Teacher: {a.help} Default: from the teacher file.")  # fmt: skip
    g.add_argument("--teacher-use-ctc", type=str, default=None,
                   help="Teacher: has a CTC head (default: when its weights have ctc_output.*).")  # fmt: skip
    g.add_argument("--teacher-tokens", type=str, default=None,
                   help="The teacher's tokens.txt; must list the student's symbols, in order.")  # fmt: skip
    g.add_argument("--teacher-bpe-model", type=str, default=None,
                   help="The teacher's bpe.model; must hold the student's pieces, in order.")  # fmt: skip


def _is_zipformer_state(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("encoder_embed.") for k in state_dict)


def teacher_architecture(
    params: Mapping[str, Any], ckpt: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], filename: str
) -> Dict[str, Any]:
    """The teacher's ``build_model`` params (student's ``vocab_size``/``blank_id``/``feature_dim``).

    Order: what the file records (``model_params``, ``params`` of a
    ``pretrained.pt``, or the top-level options), then every ``--teacher-*``
    model flag given. An icefall Zipformer file (``encoder_embed.*`` weights)
    is a Zipformer whatever its ``params`` say; a CTC head is assumed when the
    weights hold ``ctc_output.*``.
    """
    flags = {
        a.dest: params.get("teacher_" + a.dest)
        for a in _model_actions()
        if params.get("teacher_" + a.dest) is not None
    }
    if params.get("teacher_use_ctc") is not None:
        flags["use_ctc"] = params["teacher_use_ctc"]
    if isinstance(ckpt.get("model_params"), Mapping):
        saved: Dict[str, Any] = dict(ckpt["model_params"])
    elif isinstance(ckpt.get("params"), Mapping):
        saved = dict(ckpt["params"])
    else:
        saved = {k: v for k, v in ckpt.items() if not isinstance(v, (dict, torch.Tensor))}
    zipformer = _is_zipformer_state(state_dict)
    if zipformer:
        if "encoder_type" not in saved:  # an icefall file: keep only its model keys
            saved = {k: saved[k] for k in ICEFALL_ZIPFORMER_KEYS if k in saved}
        saved["encoder_type"] = "zipformer"
        if flags.get("encoder_type") == "conformer":
            raise TeacherError(f"{filename} holds a Zipformer (encoder_embed.*): drop --teacher-encoder-type conformer")
    if not zipformer and "model_preset" in flags:
        saved = {k: v for k, v in saved.items() if k not in ("encoder_dim", "num_encoder_layers", "num_heads",
                                                              "feedforward_dim", "cnn_module_kernel")}  # fmt: skip
    arch = {**saved, **flags}
    if "use_ctc" not in arch or arch["use_ctc"] is None:
        arch["use_ctc"] = any(k.startswith("ctc_output.") for k in state_dict)
    if zipformer and not any(k in arch for k in ("model_preset", "encoder_dim", "num_encoder_layers")):
        raise TeacherError(
            f"{filename} is an icefall Zipformer checkpoint that does not record its architecture; give "
            "it with the --teacher-* flags in icefall's names (--teacher-num-encoder-layers, "
            "--teacher-encoder-dim, --teacher-feedforward-dim, ...) or --teacher-model-preset"
        )
    for key in ("vocab_size", "blank_id", "feature_dim"):
        arch[key] = params[key]
    arch["dropout"] = 0.0
    return arch


def _symbols_of(path: str) -> List[str]:
    """The symbols of a ``tokens.txt`` or the pieces of a ``bpe.model``, by id."""
    if str(path).endswith(".model"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.load(str(path))
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    from icefall_spkd.decoding import TokenTable

    table = TokenTable(path)
    return [table.symbols[i] for i in range(table.vocab_size)]


def check_teacher_symbols(params: Mapping[str, Any], saved: Mapping[str, Any], filename: str) -> None:
    """``--teacher-tokens``/``--teacher-bpe-model`` (or a ``tokens`` file the teacher
    records, when it exists here) against the student's ``--bpe-model``/``--tokens``.

    Raises :class:`TeacherError` naming the first differing id.
    """
    student = params.get("bpe_model") or params.get("tokens")
    teacher: Optional[str] = params.get("teacher_tokens") or params.get("teacher_bpe_model")
    if teacher is None:
        recorded = saved.get("tokens") if isinstance(saved.get("tokens"), str) else None
        teacher = recorded if recorded and Path(recorded).is_file() else None
    if not (teacher and student):
        return
    for path in (teacher, student):
        if not Path(path).is_file():
            raise TeacherError(f"vocabulary file not found: {path} (--teacher-tokens / --tokens / --bpe-model)")
    t, s = _symbols_of(teacher), _symbols_of(student)
    if t == s:
        return
    if len(t) != len(s):
        why = f"{len(t)} symbols against the student's {len(s)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(t, s)) if a != b)
        why = f"id {i} is {t[i]!r} for the teacher and {s[i]!r} for the student"
    raise TeacherError(
        f"The teacher's vocabulary {teacher} (of {filename}) differs from the student's {student}: "
        f"{why}; teacher and student must share one tokens.txt / BPE model"
    )
