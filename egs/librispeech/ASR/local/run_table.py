#!/usr/bin/env python3
"""Train and decode every row of the SP-KD comparison table, then write RESULTS.md.

Usage (from egs/librispeech/ASR, after ./prepare.sh)::

    # the full table (rows of ../shared/docs/SPKD.md), one seed
    ./local/run_table.py --exp-root table --num-epochs 6

    # a reduced table (what `make demo` runs)
    ./local/run_table.py --rows teacher,baseline,pkd,spkd-n2 --exp-root demo_exp \
        --results demo_exp/RESULTS.md

    # extra seeds for the rows whose spread matters (default: baseline, both
    # PKD rows and SP-KD N=2)
    ./local/run_table.py --seeds 42 --extra-seeds 43,44

    # the fair comparison: lambda per method as tuned on dev by local/tune_kd.py,
    # the PKD control at SP-KD's total KD weight, three seeds, paired bootstrap
    ./local/run_table.py --rows teacher,baseline,pkd,pkd-eq,spkd-n2 --exp-root fair \
        --kd-sampling-scale 0.5 --kd-scales-from tune_lambda/lambdas.json --extra-seeds 43,44

    # KD rows with other KD settings, reusing the teacher and baseline of a table
    ./local/run_table.py --rows baseline,pkd,spkd-n2 --exp-root table_lam1 \
        --reuse-from table --kd-scale 1.0

Every run lives in ``<exp-root>/<row>/seed-<seed>/``. The teacher is trained
once (first seed) and every student row distils from its final epoch. The
driver is resumable: a run with a ``result.json`` is skipped, a training run
that stopped part-way resumes from its newest ``epoch-N.pt`` or
``checkpoint-<batch>.pt``, and decoding is redone only where its ``errs-*``
file is missing. Wall-clock training time is accumulated across resumptions
in ``train_time.json``. A finished run that lacks a requested test set or
decoding method is decoded for it and its ``result.json`` extended.

``--reuse-from ROOT`` links finished runs of another experiment root into this
one instead of training them again: ``<exp-root>/<row>/seed-<s>`` becomes a
link to ``ROOT/<row>/seed-<s>`` when ROOT made that run with the settings the
row depends on (the teacher and the baseline do not depend on the KD settings;
the KD rows depend on all of them; a run is reused when the KD settings it
was made with equal the ones its row gets now).

KD weights: every KD row gets ``--kd-scale`` (lambda) unless
``--row-kd-scale ROW=VALUE`` or ``--kd-scales-from FILE`` (the
``lambdas.json`` of ``local/tune_kd.py --rows``) gives it its own. The row
``pkd-eq`` is PKD at SP-KD (N=2)'s total KD weight: its lambda is
``lambda_spkd-n2 * (1 + rho)``, computed, never set. The table prints each KD
row's lambda (and the total ``lambda (1 + rho)`` of SP-KD rows).

Columns: WER and CER (icefall's convention: characters of the words, spaces
excluded) per test set, the substitution/deletion/insertion split on
test-clean, relative WER reduction against the baseline, share of the
teacher-student gap closed, training time; mean ± sample std over seeds.
Below each table, a paired bootstrap over the ``--bootstrap-set`` utterances
(default test-clean) gives the interval of the WER difference of every SP-KD
row (or of the ``--bootstrap-rows``) against each PKD row (or each of the
``--bootstrap-against``); seeds both rows have are paired and pooled by
resampling utterances (``icefall_spkd/bootstrap.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from icefall_spkd import table_runs
from icefall_spkd.decoding import decoding_plan
from icefall_spkd.results_table import (
    KD_SETTINGS,
    PKD_ROWS,
    TABLE_ROWS,
    bootstrap_comparisons,
    compared_rows,
    load_results,
    parse_errs_file,
    plot_chart,
    render_bootstrap,
    render_markdown,
    row_kd_settings,
    summarise,
)
from icefall_spkd.table_runs import (
    check_settings,
    count_params,
    num_batches,
    provenance,
    wers_by_decoding,
)
from icefall_spkd.table_runs import row_settings as row_settings  # tests reach it here
from icefall_spkd.utils import AttributeDict
from icefall_spkd.wer import read_recogs, utterance_errors

RECIPE = Path(__file__).resolve().parent.parent
TEST_SETS = ["dev", "test-clean", "test-other"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", default=",".join(TABLE_ROWS), help="comma-separated row keys")
    p.add_argument("--exp-root", type=Path, default=Path("table"))
    p.add_argument("--results", type=Path, default=None, help="default: <exp-root>/RESULTS.md")
    p.add_argument("--chart", type=Path, default=None, help="default: next to --results, .png")
    p.add_argument("--seeds", default="42", help="seeds for every row (the teacher uses the first)")
    p.add_argument("--extra-seeds", default="", help="more seeds, only for --extra-seed-rows")
    p.add_argument(
        "--extra-seed-rows",
        default="baseline,pkd,pkd-eq,spkd-n2",
        help="rows that also get --extra-seeds",
    )
    p.add_argument("--teacher-preset", default="small")
    p.add_argument("--student-preset", default="tiny")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: --num-epochs")
    p.add_argument("--num-epochs", type=int, default=6)
    p.add_argument("--avg", type=int, default=2, help="decode: average the last N epochs")
    p.add_argument("--max-duration", type=float, default=200.0)
    p.add_argument("--bpe-model", default="data/lang_bpe_500/bpe.model")
    # defaults: train.py's (icefall_spkd/kd_options.py, through KD_SETTINGS)
    p.add_argument("--kd-scale", type=float, default=KD_SETTINGS["kd_scale"], help="lambda")
    p.add_argument("--kd-sampling-scale", type=float, default=KD_SETTINGS["kd_sampling_scale"], help="rho")
    p.add_argument("--kd-temperature", type=float, default=KD_SETTINGS["kd_temperature"])
    p.add_argument("--kd-prune-range", type=int, default=KD_SETTINGS["kd_prune_range"])
    p.add_argument("--kd-sample-temperature", type=float, default=KD_SETTINGS["kd_sample_temperature"])
    p.add_argument(
        "--row-kd-scale",
        default="",
        help="per-row lambda, ROW=VALUE,... (e.g. pkd=2.0,spkd-n2=1.0); other KD rows use "
        "--kd-scale; pkd-eq always gets spkd-n2's lambda * (1 + rho)",
    )
    p.add_argument(
        "--kd-scales-from",
        type=Path,
        default=None,
        help="a lambdas.json of local/tune_kd.py --rows (per-row lambdas tuned on dev); "
        "--row-kd-scale entries override it",
    )
    p.add_argument(
        "--kd-teacher-input",
        choices=["augmented", "clean"],
        default="augmented",
        help="train.py --kd-teacher-input of the KD rows: the teacher sees the SpecAugment-ed "
        "batch (augmented) or the clean features (clean)",
    )
    p.add_argument("--bootstrap-set", default="test-clean", help="test set of the paired bootstrap")
    p.add_argument(
        "--bootstrap-rows", default="", help="rows compared in the bootstrap (default: the SP-KD rows)"
    )
    p.add_argument(
        "--bootstrap-against", default=",".join(PKD_ROWS), help="rows they are compared with"
    )
    p.add_argument("--bootstrap-resamples", type=int, default=10000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument(
        "--decoding-methods",
        default="modified_beam_search,greedy_search",
        help="comma-separated; modified_beam_search_lm is modified_beam_search with shallow "
        "fusion of --lm-path at --lm-scale and --lm-token-bonus",
    )
    p.add_argument(
        "--lm-path",
        default=None,
        help="token or word n-gram LM (local/train_token_lm.py, local/train_word_lm.py) of "
        "modified_beam_search_lm",
    )
    p.add_argument("--lm-scale", type=float, default=0.3, help="its weight")
    p.add_argument(
        "--lm-token-bonus", type=float, default=0.0, help="decode.py --lm-token-bonus with the LM"
    )
    p.add_argument(
        "--ilm-scale", type=float, default=0.0, help="decode.py --ilm-scale with the LM"
    )
    p.add_argument("--lm-lexicon", default=None, help="decode.py --lm-lexicon with the LM")
    p.add_argument("--beam-size", type=int, default=4, help="of the beam searches")
    p.add_argument("--test-sets", default=",".join(TEST_SETS))
    p.add_argument("--train-args", default="", help="extra train.py arguments for every row")
    p.add_argument(
        "--teacher-train-args",
        default=None,
        help="extra train.py arguments for the teacher instead of --train-args (default: the same)",
    )
    p.add_argument("--title", default="SP-KD comparison")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="student runs trained/decoded at the same time (after the teacher); each gets "
        "cores // jobs threads (OMP_NUM_THREADS). On a small CPU, 2 one-thread jobs get more "
        "done than 1 two-thread job.",
    )
    p.add_argument(
        "--reuse-from",
        type=Path,
        action="append",
        default=[],
        help="another experiment root whose finished runs are linked in, not retrained, when "
        "they were made with the settings their row depends on (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def _python() -> str:
    return sys.executable


def _latest(exp_dir: Path, pattern: str, regex: str) -> int:
    best = 0
    for f in exp_dir.glob(pattern):
        m = re.fullmatch(regex, f.name)
        if m:
            best = max(best, int(m.group(1)))
    return best


_THREADS: Dict[str, str] = {}  # extra environment of every command (OMP_NUM_THREADS)


def _run(cmd: List[str], dry_run: bool, log_file: Optional[Path] = None) -> None:
    logging.info("$ " + " ".join(shlex.quote(c) for c in cmd))
    if dry_run:
        return
    env = {**os.environ, **_THREADS}
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            proc = subprocess.run(cmd, cwd=RECIPE, stdout=f, stderr=subprocess.STDOUT, env=env)
    else:
        proc = subprocess.run(cmd, cwd=RECIPE, env=env)
    if proc.returncode != 0:
        where = f"; see {log_file}" if log_file else ""
        raise SystemExit(f"command failed with exit code {proc.returncode}{where}: {' '.join(cmd)}")


def train(args, key: str, seed: int, exp_dir: Path, teacher_ckpt: Optional[Path]) -> None:
    """Train (or resume) one row; accumulate its wall time in train_time.json."""
    row = TABLE_ROWS[key]
    epochs = (args.teacher_epochs or args.num_epochs) if row.is_teacher else args.num_epochs
    done_epoch = _latest(exp_dir, "epoch-*.pt", r"epoch-(\d+)\.pt")
    if done_epoch >= epochs:
        return
    cmd = [
        _python(), "spkd_transducer/train.py",
        "--exp-dir", str(exp_dir),
        "--num-epochs", str(epochs),
        "--seed", str(seed),
        "--max-duration", str(args.max_duration),
        "--bpe-model", args.bpe_model,
        "--model-preset", args.teacher_preset if row.is_teacher else args.student_preset,
    ]  # fmt: skip
    # Resume from the newest state: a mid-epoch checkpoint newer than the last epoch, or the epoch.
    last_batch = _latest(exp_dir, "checkpoint-*.pt", r"checkpoint-(\d+)\.pt")
    epoch_file = exp_dir / f"epoch-{done_epoch}.pt"
    batch_file = exp_dir / f"checkpoint-{last_batch}.pt"
    if last_batch and (
        not epoch_file.exists() or batch_file.stat().st_mtime > epoch_file.stat().st_mtime
    ):
        cmd += ["--start-batch", str(last_batch)]
    elif done_epoch:
        cmd += ["--start-epoch", str(done_epoch + 1)]
    if row.uses_teacher:
        assert teacher_ckpt is not None
        cmd += ["--teacher-checkpoint", str(teacher_ckpt)]
        for k, v in row_kd_settings(key, vars(args), args.row_kd_scale).items():
            if v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        cmd += ["--kd-teacher-input", args.kd_teacher_input, *row.train_flags]
    extra = args.teacher_train_args if row.is_teacher and args.teacher_train_args is not None else args.train_args
    cmd += shlex.split(extra)
    t0 = time.time()
    _run(cmd, args.dry_run, exp_dir / "driver-train.log")
    if args.dry_run:
        return
    tfile = exp_dir / "train_time.json"
    spent = json.loads(tfile.read_text())["seconds"] if tfile.exists() else 0.0
    tfile.write_text(json.dumps({"seconds": spent + time.time() - t0}))


def averaging(args, epochs: int) -> tuple[int, bool]:
    """``(--avg, --use-averaged-model)`` for a run of ``epochs`` epochs.

    The running-average model averages the ``--avg`` epochs ending at the last
    one, which needs ``epochs > avg`` (epoch-0 is the start point); a run too
    short for that uses its last epoch as it is.
    """
    avg = min(args.avg, epochs - 1)
    return (avg, True) if avg >= 1 else (1, False)


LM_METHOD = "modified_beam_search_lm"


def search_method(method: str) -> str:
    """decode.py's ``--decoding-method`` (and result folder) for a table method."""
    return "modified_beam_search" if method == LM_METHOD else method


def decode_suffix(args, key: str, method: str) -> str:
    """The ``<suffix>`` of the ``errs-<set>-<suffix>.txt`` files decode() makes for ``key``.

    Named by decode.py's own rule (:func:`icefall_spkd.decoding.decoding_plan`).
    """
    row = TABLE_ROWS[key]
    epochs = (args.teacher_epochs or args.num_epochs) if row.is_teacher else args.num_epochs
    avg, use_avg = averaging(args, epochs)
    params = AttributeDict(
        test_sets=[], max_sym_per_frame=1, decoding_method=search_method(method),
        beam_size=args.beam_size, epoch=epochs, iter=0, avg=avg, use_averaged_model=use_avg,
    )  # fmt: skip
    if method == LM_METHOD:
        params.update(
            lm_path=args.lm_path, lm_scale=args.lm_scale,
            lm_token_bonus=args.lm_token_bonus, lm_lexicon=args.lm_lexicon,
            ilm_scale=args.ilm_scale,
        )  # fmt: skip
    return decoding_plan(params, ())[1]


def decode(args, key: str, exp_dir: Path, method: str, test_sets: List[str]) -> Dict[str, Any]:
    """Decode one row with one method (skipped when its errs files exist); parse them."""
    row = TABLE_ROWS[key]
    epochs = (args.teacher_epochs or args.num_epochs) if row.is_teacher else args.num_epochs
    avg, use_avg = averaging(args, epochs)
    suffix = decode_suffix(args, key, method)
    out = exp_dir / search_method(method)
    wanted = {s: out / f"errs-{s}-{suffix}.txt" for s in test_sets}
    missing = [s for s, f in wanted.items() if not f.exists()]
    if missing:
        cmd = [
            _python(), "spkd_transducer/decode.py",
            "--exp-dir", str(exp_dir),
            "--epoch", str(epochs),
            "--avg", str(avg),
            "--use-averaged-model", str(use_avg).lower(),
            "--decoding-method", search_method(method),
            "--beam-size", str(args.beam_size),
            "--max-duration", str(args.max_duration),
            "--bpe-model", args.bpe_model,
            "--model-preset", args.teacher_preset if row.is_teacher else args.student_preset,
        ]  # fmt: skip
        if method == LM_METHOD:
            cmd += ["--lm-path", str(args.lm_path), "--lm-scale", str(args.lm_scale)]
            cmd += ["--lm-token-bonus", str(args.lm_token_bonus)]
            if args.ilm_scale:
                cmd += ["--ilm-scale", str(args.ilm_scale)]
            if args.lm_lexicon:
                cmd += ["--lm-lexicon", str(args.lm_lexicon)]
        cmd += ["--test-sets", *missing]
        _run(cmd, args.dry_run, exp_dir / "driver-decode.log")
    if args.dry_run:
        return {}
    return {s: parse_errs_file(f) for s, f in wanted.items()}


def export_teacher(args, exp_dir: Path) -> None:
    """Average the teacher's last --avg epochs into pretrained.pt (skipped if present)."""
    if (exp_dir / "pretrained.pt").exists():
        return
    epochs = args.teacher_epochs or args.num_epochs
    avg, use_avg = averaging(args, epochs)
    cmd = [
        _python(), "spkd_transducer/export.py",
        "--exp-dir", str(exp_dir),
        "--epoch", str(epochs),
        "--avg", str(avg),
        "--use-averaged-model", str(use_avg).lower(),
        "--model-preset", args.teacher_preset,
        "--bpe-model", args.bpe_model,
    ]  # fmt: skip
    _run(cmd, args.dry_run, exp_dir / "driver-export.log")


def link_reusable_runs(
    args: argparse.Namespace, exp_root: Path, tasks: List[tuple], sources: List[Path]
) -> None:
    """:func:`icefall_spkd.table_runs.link_reusable_runs` under RECIPE, with our defaults."""
    defaults = vars(get_parser().parse_args([]))
    table_runs.link_reusable_runs(args, exp_root, tasks, sources, RECIPE, defaults)


def resolve_row_scales(args: argparse.Namespace) -> Dict[str, float]:
    """Per-row lambdas (:func:`icefall_spkd.table_runs.resolve_row_scales`) under RECIPE."""
    return table_runs.resolve_row_scales(args, RECIPE)


def bootstrap_section(
    args: argparse.Namespace,
    exp_root: Path,
    results: Dict[str, List[Dict[str, Any]]],
    order: List[str],
    method: str,
) -> str:
    """The paired-bootstrap table of the SP-KD rows (or ``--bootstrap-rows``) against the
    PKD rows (or ``--bootstrap-against``) for one decoding method.

    Per-utterance errors come from each run's ``recogs-<set>-<suffix>.txt``; a run
    without that file (or a table without the set) is left out, with a note.
    """
    test_set = args.bootstrap_set
    rows = [r for r in args.bootstrap_rows.split(",") if r] or None
    against = [r for r in args.bootstrap_against.split(",") if r]
    compared = compared_rows(order, rows)
    wanted = [k for k in order if k in results and (k in compared or k in against)]
    if not any(k in compared for k in wanted) or not any(k in against for k in wanted):
        return ""
    utt: Dict[str, Dict[int, Dict[str, tuple]]] = {}
    missing = []
    for key in wanted:
        for run in results[key]:
            f = (
                exp_root / key / f"seed-{run['seed']}" / search_method(method)
                / f"recogs-{test_set}-{decode_suffix(args, key, method)}.txt"
            )  # fmt: skip
            if not f.exists():
                missing.append(str(f))
                continue
            try:
                utt.setdefault(key, {})[run["seed"]] = utterance_errors(read_recogs(f))
            except ValueError as err:
                raise SystemExit(f"{f}: {err}") from err
    comps = bootstrap_comparisons(
        utt, order, args.bootstrap_resamples, 0.95, args.bootstrap_seed, rows, against
    )
    text = (
        f"Paired bootstrap over the {test_set} utterances ({args.bootstrap_resamples} "
        f"resamples, seed {args.bootstrap_seed}; the seeds both rows have are paired and pooled "
        "by resampling utterances, so the difference is that of the seed-averaged WERs):\n\n"
    )
    text += render_bootstrap(comps, test_set)
    if missing:
        text += "\nLeft out (no recogs file): " + ", ".join(missing) + "\n"
    return text


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args.row_kd_scale = resolve_row_scales(args)
    rows = [r for r in args.rows.split(",") if r]
    named = rows + args.bootstrap_rows.split(",") + args.bootstrap_against.split(",")
    unknown = [r for r in named if r and r not in TABLE_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(TABLE_ROWS)}")
    test_sets = [s for s in args.test_sets.split(",") if s]
    methods = [m for m in args.decoding_methods.split(",") if m]
    for name in ("lm_path", "lm_lexicon"):
        value = getattr(args, name)
        if value and not Path(value).is_absolute():
            setattr(args, name, str(RECIPE / value))
    if LM_METHOD in methods and not (args.lm_path and Path(args.lm_path).is_file()):
        raise SystemExit(
            f"{LM_METHOD} needs --lm-path to an LM file (got {args.lm_path}); "
            "make one with local/train_token_lm.py"
        )
    if LM_METHOD in methods and args.lm_lexicon and not Path(args.lm_lexicon).is_file():
        raise SystemExit(f"--lm-lexicon {args.lm_lexicon}: no such file (a word list, e.g. the training text)")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [int(s) for s in args.extra_seeds.split(",") if s]
    extra_rows = set(args.extra_seed_rows.split(","))
    exp_root = args.exp_root if args.exp_root.is_absolute() else RECIPE / args.exp_root

    teacher_dir = exp_root / "teacher" / f"seed-{seeds[0]}"
    teacher_epochs = args.teacher_epochs or args.num_epochs
    # Students distil from the teacher's exported averaged model, the same
    # weights its WER is measured with (see export_teacher).
    teacher_ckpt = teacher_dir / "pretrained.pt"
    needs_teacher = any(TABLE_ROWS[r].uses_teacher for r in rows)
    if needs_teacher and "teacher" not in rows:
        rows = ["teacher"] + rows
    order = ["teacher"] + [r for r in rows if r != "teacher"] if "teacher" in rows else rows

    check_settings(args, exp_root)

    def run_one(key: str, seed: int) -> None:
        exp_dir = exp_root / key / f"seed-{seed}"
        result_file = exp_dir / "result.json"
        old = json.loads(result_file.read_text()) if result_file.exists() else None
        # WERs are kept per decoding setting: those of another beam size or LM
        # setting (e.g. made by a root that links this run) are not ours, and
        # ours do not replace theirs.
        suffixes = {m: decode_suffix(args, key, m) for m in methods}
        cache = wers_by_decoding(old)
        if old is not None and all(s in cache.get(suffixes[m], {}) for m in methods for s in test_sets):
            logging.info(f"{key} seed {seed}: done already ({result_file})")
            return
        logging.info(f"=== {key} seed {seed}")
        train(args, key, seed, exp_dir, teacher_ckpt)
        if key == "teacher":
            export_teacher(args, exp_dir)
        wer = {m: decode(args, key, exp_dir, m, test_sets) for m in methods}
        if args.dry_run:
            return
        # a run decoded before, for other sets or settings (by another root meanwhile too): keep them
        if result_file.exists():
            cache = {**wers_by_decoding(json.loads(result_file.read_text())), **cache}
        for m in methods:
            cache[suffixes[m]] = {**cache.get(suffixes[m], {}), **wer[m]}
        epochs = teacher_epochs if key == "teacher" else args.num_epochs
        result = {
            "row": key,
            "seed": seed,
            "kd": row_kd_settings(key, vars(args), args.row_kd_scale) or None,
            "params": count_params(exp_dir, epochs),
            "num_batches": num_batches(exp_dir, epochs),
            "train_seconds": json.loads((exp_dir / "train_time.json").read_text())["seconds"],
            "wer": {m: cache[suffixes[m]] for m in methods},
            "decode_suffix": suffixes,
            "wer_by_suffix": cache,
        }
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(result_file)
        logging.info(f"{key} seed {seed}: finished ({result_file})")

    tasks = [
        (key, seed)
        for key in order
        for seed in (
            seeds[:1] if key == "teacher" else seeds + (extra if key in extra_rows else [])
        )
    ]
    link_reusable_runs(args, exp_root, tasks, args.reuse_from)
    cores = os.cpu_count() or 1
    if tasks and tasks[0][0] == "teacher":  # every student needs it: alone, all cores
        run_one(*tasks.pop(0))
    if args.jobs > 1 and not args.dry_run:
        _THREADS["OMP_NUM_THREADS"] = str(max(1, cores // args.jobs))
        logging.info(
            f"{len(tasks)} runs, {args.jobs} at a time, {_THREADS['OMP_NUM_THREADS']} thread(s) each"
        )
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for fut in [pool.submit(run_one, *t) for t in tasks]:
                fut.result()  # re-raise the first failure
    else:
        for t in tasks:
            run_one(*t)

    if args.dry_run:
        return
    results = load_results(exp_root, order)
    for key, runs in results.items():
        suffixes = {m: decode_suffix(args, key, m) for m in methods}
        for run in runs:
            # this root's decoding settings, whichever root (of a linked run) wrote last
            by_decoding = wers_by_decoding(run)
            run["wer"] = {m: by_decoding.get(suffixes[m], {}) for m in methods}
            # results made before "kd" was recorded (or reused ones): settings.json and
            # the reuse check guarantee these settings
            run.setdefault("kd", row_kd_settings(key, vars(args), args.row_kd_scale) or None)
    results_md = args.results or exp_root / "RESULTS.md"
    results_md = results_md if results_md.is_absolute() else RECIPE / results_md
    chart = args.chart or results_md.with_suffix(".png")
    chart = chart if chart.is_absolute() else RECIPE / chart
    parts = []
    for m in methods:
        summary = summarise(results, m, test_sets)
        detail = "test-clean" if "test-clean" in test_sets else test_sets[0]
        part = f"### {m}\n\n" + render_markdown(summary, order, test_sets, detail)
        boot = (
            bootstrap_section(args, exp_root, results, order, m)
            if args.bootstrap_set in test_sets
            else ""
        )
        parts.append(part + ("\n" + boot if boot else ""))
        if m == methods[0]:
            plot_chart(summary, order, test_sets, chart, f"{args.title}\n({m})")
    table = "\n".join(parts)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    kd_line = (
        f"- KD rows: rho {args.kd_sampling_scale}, tau {args.kd_temperature}, "
        f"R {args.kd_prune_range}, teacher input {args.kd_teacher_input}; lambda per row in "
        "the table (`pkd-eq`: SP-KD N=2's lambda * (1 + rho))\n"
        if any(TABLE_ROWS[k].uses_teacher for k in order)
        else ""
    )
    results_md.write_text(f"# {args.title}\n\n{provenance(RECIPE)}{kd_line}\n{table}\n")
    print(table)
    logging.info(f"Wrote {results_md} and {chart}")


if __name__ == "__main__":
    main()
