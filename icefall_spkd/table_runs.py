"""Bookkeeping of a ``local/run_table.py`` experiment root.

``egs/librispeech/ASR/local/run_table.py`` trains and decodes every row of the
comparison table (:mod:`icefall_spkd.results_table`) under
``<exp-root>/<row>/seed-<seed>/``. This module holds what decides which runs
of such a root may be kept or reused, and what is written at the top of its
``RESULTS.md``:

- :data:`RESULT_SETTINGS`: the driver settings that change what a run
  produces, and :func:`row_settings` / :func:`row_fingerprint`: the part of
  them a run of one row depends on;
- :func:`check_settings`: records the settings in ``<exp-root>/settings.json``
  and refuses to mix runs made with other ones;
- :func:`link_reusable_runs`: links finished runs of other roots
  (``--reuse-from``) made with the settings their row depends on;
- :func:`resolve_row_scales`: the per-row lambdas of ``--kd-scales-from`` and
  ``--row-kd-scale``;
- :func:`wers_by_decoding`: the WERs a run's ``result.json`` holds, per
  decoding setting (a run linked into several roots is decoded with each
  root's beam size and LM, and keeps them all);
- :func:`count_params` and :func:`num_batches`: what a finished run's last
  ``epoch-N.pt`` tells its ``result.json``;
- :func:`provenance`: command, date, machine and git revision.

The driver's option parser and its recipe directory stay in the script: the
functions that need them take them as arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from icefall_spkd.benchmarking import cpu_model
from icefall_spkd.results_table import KD_SETTINGS, TABLE_ROWS, parse_row_scales, row_kd_settings

# Settings that change what a run produces; a finished row is reused only
# when they are the same as when it was made.
RESULT_SETTINGS = (
    "seeds", "teacher_preset", "student_preset", "teacher_epochs", "num_epochs", "avg",
    "max_duration", "bpe_model", *KD_SETTINGS, "row_kd_scale", "kd_teacher_input", "train_args",
    "teacher_train_args",
)  # fmt: skip
#: Settings that only set the KD rows' weights: a row compares the KD settings
#: it gets from them (row_kd_settings), not their raw values.
KD_WEIGHT_SETTINGS = (*KD_SETTINGS, "row_kd_scale")


def row_settings(key: str) -> Tuple[str, ...]:
    """The entries of ``RESULT_SETTINGS`` that a run of row ``key`` depends on.

    The seed is not among them (it names the run's directory); the teacher
    does not depend on the student's preset or epochs, the baseline not on the
    teacher or the KD settings.
    """
    row = TABLE_ROWS[key]
    skip = {"seeds"}
    if row.is_teacher:
        skip |= {"student_preset", "num_epochs", "kd_teacher_input", *KD_WEIGHT_SETTINGS}
    elif not row.uses_teacher:
        skip |= {"teacher_preset", "teacher_epochs", "teacher_train_args", "kd_teacher_input",
                 *KD_WEIGHT_SETTINGS}  # fmt: skip
    return tuple(k for k in RESULT_SETTINGS if k not in skip)


def row_fingerprint(settings: Dict[str, Any], key: str) -> Dict[str, Any]:
    """What a run of row ``key`` made with ``settings`` depends on: ``row_settings(key)``,
    with the KD weight settings replaced by the KD settings the row actually trains with
    (so a PKD run made with ``--kd-scale 2`` is the run ``--row-kd-scale pkd=2`` asks for)."""
    fp = {k: settings.get(k) for k in row_settings(key) if k not in KD_WEIGHT_SETTINGS}
    fp.update(row_kd_settings(key, settings, settings.get("row_kd_scale")))
    return fp


def check_settings(args: argparse.Namespace, exp_root: Path) -> None:
    """Record the settings in ``<exp-root>/settings.json``; refuse to mix runs made with others.

    Args:
      args: the driver's parsed options (``--dry-run`` writes nothing).
      exp_root: the experiment root.
    Raises:
      SystemExit: the experiment root holds runs made with different settings
        (names each one); use another ``--exp-root`` or delete the old one.
    """
    wanted = {k: getattr(args, k, None) for k in RESULT_SETTINGS}
    path = exp_root / "settings.json"
    if path.exists():
        found = json.loads(path.read_text())
        diff = [k for k in RESULT_SETTINGS if k in found and found[k] != wanted[k]]
        if diff:
            lines = "\n".join(f"  {k}: {found[k]!r} there, {wanted[k]!r} now" for k in diff)
            raise SystemExit(
                f"{exp_root} holds runs made with other settings:\n{lines}\n"
                "Use another --exp-root, or delete that directory to start again."
            )
    if not args.dry_run:
        exp_root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2))


def link_reusable_runs(
    args: argparse.Namespace,
    exp_root: Path,
    tasks: Sequence[Tuple[str, int]],
    sources: Sequence[Path],
    recipe: Path,
    defaults: Mapping[str, Any],
) -> None:
    """Link finished runs of other experiment roots into ``exp_root`` (see ``--reuse-from``).

    A run ``(row, seed)`` is linked from the first source whose
    ``settings.json`` agrees with ours on ``row_settings(row)`` and that holds
    ``<row>/seed-<seed>/result.json``. Runs already present in ``exp_root``
    are left alone.

    Args:
      args: the driver's parsed options (``--dry-run`` links nothing).
      exp_root: the experiment root the runs are linked into.
      tasks: the ``(row, seed)`` runs wanted.
      sources: the other experiment roots, relative ones under ``recipe``.
      recipe: the recipe directory (``egs/librispeech/ASR``).
      defaults: the driver's option defaults, for the settings a source's
        ``settings.json`` does not record.
    Raises:
      SystemExit: a source without ``settings.json``.
    """
    wanted = {k: getattr(args, k, None) for k in RESULT_SETTINGS}
    for src in sources:
        src = (src if src.is_absolute() else recipe / src).resolve()
        settings_file = src / "settings.json"
        if not settings_file.exists():
            raise SystemExit(
                f"--reuse-from {src}: no settings.json there; is it a run_table.py root?"
            )
        found = json.loads(settings_file.read_text())
        # settings the source does not record were at their defaults when it was made
        found = {**defaults, **found}
        for key, seed in tasks:
            here = exp_root / key / f"seed-{seed}"
            there = src / key / f"seed-{seed}"
            if here.exists() or here.is_symlink() or not (there / "result.json").exists():
                continue
            if row_fingerprint(found, key) != row_fingerprint(wanted, key):
                continue
            if not args.dry_run:
                here.parent.mkdir(parents=True, exist_ok=True)
                here.symlink_to(there, target_is_directory=True)
            logging.info(f"{key} seed {seed}: reusing {there}")


def resolve_row_scales(args: argparse.Namespace, recipe: Path) -> Dict[str, float]:
    """Per-row lambdas: ``--kd-scales-from``'s, then ``--row-kd-scale``'s on top (one dict).

    Args:
      args: the driver's parsed options (``kd_scales_from``, ``row_kd_scale``
        and the KD settings the lambdas were tuned with).
      recipe: the directory a relative ``--kd-scales-from`` is under.
    Raises:
      SystemExit: an unreadable lambdas file, one tuned with other KD
        settings, or a bad ``--row-kd-scale``.
    """
    scales: Dict[str, float] = {}
    if args.kd_scales_from is not None:
        f = args.kd_scales_from if args.kd_scales_from.is_absolute() else recipe / args.kd_scales_from
        try:
            data = json.loads(f.read_text())
            scales.update(parse_row_scales(data.get("row_kd_scale", data)))
        except (OSError, ValueError, AttributeError) as err:
            raise SystemExit(
                f"--kd-scales-from {f}: {err}; expected the lambdas.json of local/tune_kd.py --rows"
            ) from err
        # lambdas tuned with other KD settings (rho, tau, ...) mean something else here
        tuned_with = data.get("kd_settings", {}) if isinstance(data, dict) else {}
        diff = [k for k, v in tuned_with.items() if hasattr(args, k) and getattr(args, k) != v]
        if diff:
            raise SystemExit(
                f"--kd-scales-from {f}: tuned with "
                + ", ".join(f"{k} {tuned_with[k]}" for k in diff)
                + ", not " + ", ".join(f"{k} {getattr(args, k)}" for k in diff)
                + "; pass those settings or tune again"
            )
    try:
        scales.update(parse_row_scales(args.row_kd_scale))
    except ValueError as err:
        raise SystemExit(f"--row-kd-scale: {err}") from err
    return dict(sorted(scales.items()))


def wers_by_decoding(result: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``{decoding suffix: {test set: WER stats}}`` recorded in a run's ``result.json``.

    The suffix is decode.py's result-file suffix (beam size, LM settings, ...),
    so WERs of one decoding setting are never taken for another's. The file's
    ``wer_by_suffix`` holds every setting it was decoded with; its ``wer``
    (the last writer's view, ``{method: {set: stats}}``) is added under that
    writer's ``decode_suffix``. A file without ``decode_suffix`` (written
    before it was recorded) gives nothing: its settings are unknown.
    """
    if not result:
        return {}
    out = {k: dict(v) for k, v in result.get("wer_by_suffix", {}).items()}
    for method, suffix in result.get("decode_suffix", {}).items():
        if method in result.get("wer", {}):
            out[suffix] = {**result["wer"][method], **out.get(suffix, {})}
    return out


def count_params(exp_dir: Path, epoch: int) -> int:
    """The number of model parameters in ``exp_dir/epoch-<epoch>.pt``."""
    ckpt = torch.load(exp_dir / f"epoch-{epoch}.pt", map_location="cpu", weights_only=False)
    return sum(v.numel() for v in ckpt["model"].values())


def num_batches(exp_dir: Path, epoch: int) -> int:
    """The global batch count (``batch_idx_train``) at the end of epoch ``epoch``; 0 if absent."""
    ckpt = torch.load(exp_dir / f"epoch-{epoch}.pt", map_location="cpu", weights_only=False)
    return int(ckpt.get("batch_idx_train", 0))


def provenance(repo_dir: Path) -> str:
    """Command, date, machine and git revision, for the top of RESULTS.md.

    Args:
      repo_dir: a directory of the git checkout whose revision is reported.
    Returns:
      Markdown list lines, each ending in a newline.
    """
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
        ).stdout.strip()
        rev = rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        rev = "unknown"
    cpu = cpu_model()
    if torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        machine = f"{cpu}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}"
    cmd = " ".join(shlex.quote(a) for a in sys.argv)
    return (
        f"- command (from egs/librispeech/ASR): `{cmd}`\n"
        f"- finished: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
        f"- machine: {machine}\n"
        f"- git revision: {rev}\n"
    )
