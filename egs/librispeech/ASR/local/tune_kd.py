#!/usr/bin/env python3
"""Tune the KD settings of one table row on the dev set, one setting at a time.

Usage (from egs/librispeech/ASR, after a ``local/run_table.py`` run in ``table``)::

    ./local/tune_kd.py --base-root table --tune-root tune --row spkd-n2 \\
        --stage kd_scale=0.25,1.0 --stage kd_sampling_scale=0.5,2.0 \\
        --stage kd_temperature=2,3 --stage kd_prune_range=3,8 --jobs 2

Coordinate search: it starts from the KD settings the base root was made
with, and for each ``--stage`` in order trains the row once per listed value
(the other settings at their current choice), decodes the dev set only with
modified beam search, and moves to the best value if it lowers dev WER by at
least ``--min-gain`` (absolute %) against the current choice; otherwise it
keeps the current value. Test sets are never decoded, so nothing is chosen
on them.

Every point is a ``local/run_table.py`` experiment root under
``--tune-root``, with everything but the KD settings copied from the base
root's ``settings.json`` and the teacher (and the start point itself, when it
is in the base root) linked in with ``--reuse-from``. Rerunning skips the
finished points. The summary goes to ``<tune-root>/TUNING.md``, ending with
the ``run_table.py`` options of the chosen settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from icefall_spkd.results_table import KD_SETTINGS

RECIPE = Path(__file__).resolve().parent.parent
SHORT = {
    "kd_scale": "lambda",
    "kd_sampling_scale": "rho",
    "kd_temperature": "tau",
    "kd_prune_range": "R",
    "kd_sample_temperature": "stau",
}
METHOD = "modified_beam_search"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-root", type=Path, required=True, help="a finished run_table.py root")
    p.add_argument("--tune-root", type=Path, default=Path("tune"))
    p.add_argument("--row", default="spkd-n2", help="the table row to tune")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--stage",
        action="append",
        default=[],
        help=f"SETTING=V1,V2,... (SETTING one of {', '.join(KD_SETTINGS)}); stages run in the order given",
    )
    p.add_argument(
        "--min-gain", type=float, default=0.5, help="dev WER (absolute %%) a new value must win by"
    )
    p.add_argument("--jobs", type=int, default=1, help="points of a stage trained at the same time")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def parse_stage(text: str) -> Tuple[str, List[float]]:
    """``"kd_scale=0.25,1.0"`` -> ``("kd_scale", [0.25, 1.0])``; prune ranges become ints."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in KD_SETTINGS or not values.strip():
        raise SystemExit(
            f"--stage {text!r}: expected SETTING=V1,V2,... with SETTING one of {KD_SETTINGS}"
        )
    cast = int if name == "kd_prune_range" else float
    try:
        return name, [cast(v) for v in values.split(",") if v.strip()]
    except ValueError as err:
        raise SystemExit(f"--stage {text!r}: values of {name} must be {cast.__name__}s") from err


def choose(current: Any, current_wer: float, candidates: Dict[Any, float], min_gain: float) -> Any:
    """The value to keep after a stage: the best candidate if it beats ``current`` by ``min_gain``.

    Args:
      current: the value in use before the stage, with dev WER ``current_wer``.
      candidates: value -> dev WER of the points trained in the stage.
      min_gain: absolute WER (%) the best candidate must improve on ``current_wer`` by.
    """
    if not candidates:
        return current
    best = min(candidates, key=lambda v: candidates[v])
    return best if candidates[best] <= current_wer - min_gain else current


def point_name(settings: Dict[str, Any]) -> str:
    """Directory name of a point, e.g. ``lambda0.5-rho1.0-tau1.0-R5-stau1.0``."""
    return "-".join(f"{SHORT[k]}{settings[k]}" for k in KD_SETTINGS)


def run_table_command(
    base: Dict[str, Any], kd: Dict[str, Any], args, point_root: Path
) -> List[str]:
    """The ``run_table.py`` command that trains and dev-decodes ``args.row`` at settings ``kd``."""
    cmd = [
        sys.executable, str(RECIPE / "local/run_table.py"),
        "--rows", args.row,
        "--exp-root", str(point_root),
        "--reuse-from", str(base_root(args)),
        "--seeds", str(args.seed),
        "--test-sets", "dev",
        "--decoding-methods", METHOD,
        "--title", f"KD tuning point {point_root.name}",
    ]  # fmt: skip
    for k, v in {**base, **kd}.items():
        if k == "seeds" or v is None:
            continue
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def base_root(args) -> Path:
    return args.base_root if args.base_root.is_absolute() else RECIPE / args.base_root


def dev_result(point_root: Path, row: str, seed: int) -> Optional[Dict[str, Any]]:
    f = point_root / row / f"seed-{seed}" / "result.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["wer"][METHOD]["dev"]


def render(
    base_kd: Dict[str, Any], rows: Sequence[Dict[str, Any]], chosen: Dict[str, Any], args
) -> str:
    lines = [
        f"# KD tuning of `{args.row}` on dev (seed {args.seed}, {METHOD}, beam 4)",
        "",
        f"- command (from egs/librispeech/ASR): `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- start point: the settings of `{args.base_root}`: "
        + ", ".join(f"{SHORT[k]} {base_kd[k]}" for k in KD_SETTINGS),
        f"- a value replaces the current one only if it lowers dev WER by at least {args.min_gain} (absolute)",
        "",
        "| stage | setting | value | "
        + " | ".join(SHORT[k] for k in KD_SETTINGS)
        + " | dev WER | ins | del | sub | adopted |",
        "|" + "---|" * (3 + len(KD_SETTINGS) + 5),
    ]
    for r in rows:
        d = r["dev"]
        lines.append(
            f"| {r['stage']} | {SHORT[r['setting']] if r['setting'] else 'start'} | {r['value']} | "
            + " | ".join(str(r["kd"][k]) for k in KD_SETTINGS)
            + f" | {d['wer']:.2f} | {d['ins']} | {d['del']} | {d['sub']} | {'yes' if r['kept'] else ''} |"
        )
    flags = " ".join(f"--{k.replace('_', '-')} {chosen[k]}" for k in KD_SETTINGS)
    lines += ["", f"Chosen: {', '.join(f'{SHORT[k]} {chosen[k]}' for k in KD_SETTINGS)}", "",
              f"run_table.py options: `{flags}`", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    args = get_parser().parse_args()
    stages = [parse_stage(s) for s in args.stage]
    tune_root = args.tune_root if args.tune_root.is_absolute() else RECIPE / args.tune_root
    tune_root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s",
        level=logging.INFO,
        handlers=[logging.StreamHandler(), logging.FileHandler(tune_root / "tune.log")],
    )
    settings_file = base_root(args) / "settings.json"
    if not settings_file.exists():
        raise SystemExit(
            f"{settings_file} not found: --base-root must be a finished run_table.py root"
        )
    base = json.loads(settings_file.read_text())
    missing = [k for k in KD_SETTINGS if k not in base]
    if missing:
        raise SystemExit(
            f"{settings_file} lacks {missing}; re-run run_table.py there to record them"
        )
    base_kd = {k: base[k] for k in KD_SETTINGS}
    env = dict(os.environ)
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))

    def run_point(kd: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        point_root = tune_root / point_name(kd)
        if dev_result(point_root, args.row, args.seed) is None:
            cmd = run_table_command(base, kd, args, point_root)
            logging.info("$ " + " ".join(shlex.quote(c) for c in cmd))
            if not args.dry_run:
                point_root.mkdir(parents=True, exist_ok=True)
                with open(point_root / "run_table.log", "a") as log:
                    proc = subprocess.run(
                        cmd, cwd=RECIPE, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                if proc.returncode != 0:
                    raise SystemExit(
                        f"point {point_root} failed; see {point_root / 'run_table.log'}"
                    )
        return None if args.dry_run else dev_result(point_root, args.row, args.seed)

    current = dict(base_kd)
    current_dev = run_point(current)
    rows: List[Dict[str, Any]] = []
    if current_dev is not None:
        rows.append(
            {
                "stage": 0,
                "setting": None,
                "value": "-",
                "kd": dict(current),
                "dev": current_dev,
                "kept": False,
            }
        )
    for i, (name, values) in enumerate(stages, start=1):
        points = [{**current, name: v} for v in values if v != current[name]]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            devs = list(pool.map(run_point, points))
        if args.dry_run:
            continue
        cands = {p[name]: d["wer"] for p, d in zip(points, devs)}
        keep = choose(current[name], current_dev["wer"], cands, args.min_gain)
        for p, d in zip(points, devs):
            rows.append(
                {
                    "stage": i,
                    "setting": name,
                    "value": p[name],
                    "kd": p,
                    "dev": d,
                    "kept": p[name] == keep,
                }
            )
        if keep != current[name]:
            current = {**current, name: keep}
            current_dev = dict(zip([p[name] for p in points], devs))[keep]
        logging.info(f"stage {i} ({name}): keep {keep}, dev WER {current_dev['wer']:.2f}")
    if args.dry_run:
        return
    text = render(base_kd, rows, current, args)
    (tune_root / "TUNING.md").write_text(text)
    print(text)
    logging.info(f"Wrote {tune_root / 'TUNING.md'}")


if __name__ == "__main__":
    main()
