#!/usr/bin/env python3
"""Tune KD settings on the dev set: lambda per method on one grid, or one row's settings in turn.

Usage (from egs/librispeech/ASR, after a ``local/run_table.py`` run in ``table``)::

    # lambda per method, the same grid for every method, widened at its edges
    ./local/tune_kd.py --base-root table --tune-root tune_lambda \\
        --rows pkd,spkd-n2,full-kd,collapsed-kd --lambda-grid 0.25,0.5,1,2,4 --jobs 2
    ./local/run_table.py ... --kd-scales-from tune_lambda/lambdas.json

    # one row's settings, one after the other (coordinate search)
    ./local/tune_kd.py --base-root table --tune-root tune --row spkd-n2 \\
        --stage kd_scale=0.25,1.0 --stage kd_sampling_scale=0.5,2.0 \\
        --stage kd_temperature=2,3 --stage kd_prune_range=3,8 --jobs 2

Per-method lambda (``--rows``): every listed KD row is trained at every
value of ``--lambda-grid`` (the other KD settings those of the base root),
decoded on dev only, and gets the lambda of its lowest dev WER. Whenever that
lambda sits at the edge of the values tried for the row, the grid is
extended past that edge by ``--widen-factor`` (divided at the low edge,
multiplied at the high one) and the new point trained, up to
``--max-widen`` times per row; a row still at an edge then is marked so in
the table. The chosen lambdas go to ``<tune-root>/lambdas.json`` (read by
``run_table.py --kd-scales-from``) and the table of dev WERs to
``<tune-root>/TUNING.md``. ``pkd-eq`` is not tuned: its lambda is SP-KD
(N=2)'s ``lambda * (1 + rho)`` by definition.

Coordinate search (``--row`` with ``--stage``): it starts from the KD
settings the base root was made with, and for each ``--stage`` in order trains the row once per listed value
(the other settings at their current choice), decodes the dev set only with
modified beam search, and moves to the best value if it lowers dev WER by at
least ``--min-gain`` (absolute %) against the current choice; otherwise it
keeps the current value. Test sets are never decoded, so nothing is chosen
on them.

Every point is a ``local/run_table.py`` experiment root under
``--tune-root``, with everything but the KD settings copied from the base
root's ``settings.json`` and the teacher (and the start point itself, when it
is in the base root) linked in with ``--reuse-from``; every point goes through
``run_table.py``, which decodes it at beam 4 when it holds WERs of another
beam (a run linked from the base root). Rerunning skips the
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

from icefall_spkd.results_table import KD_SETTINGS, TABLE_ROWS

RECIPE = Path(__file__).resolve().parent.parent
SHORT = {
    "kd_scale": "lambda",
    "kd_sampling_scale": "rho",
    "kd_temperature": "tau",
    "kd_prune_range": "R",
    "kd_sample_temperature": "stau",
}
METHOD = "modified_beam_search"
TUNE_BEAM_SIZE = 4  # of METHOD on dev, for every point


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-root", type=Path, required=True, help="a finished run_table.py root")
    p.add_argument("--tune-root", type=Path, default=Path("tune"))
    p.add_argument("--row", default="spkd-n2", help="the table row to tune (with --stage)")
    p.add_argument(
        "--rows",
        default="",
        help="per-method lambda tuning: comma-separated KD rows, each tuned on --lambda-grid",
    )
    p.add_argument("--lambda-grid", default="0.25,0.5,1,2,4", help="lambda values of every row")
    p.add_argument(
        "--widen-factor",
        type=float,
        default=2.0,
        help="a best lambda at the grid's edge adds edge/factor (low) or edge*factor (high)",
    )
    p.add_argument("--max-widen", type=int, default=3, help="grid extensions per row, at most")
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
    return "-".join(f"{SHORT.get(k, k)}{settings[k]}" for k in KD_SETTINGS)


def run_table_command(
    base: Dict[str, Any], kd: Dict[str, Any], args, point_root: Path, row: Optional[str] = None
) -> List[str]:
    """The ``run_table.py`` command that trains and dev-decodes ``row`` (default ``args.row``)
    at settings ``kd``."""
    cmd = [
        sys.executable, str(RECIPE / "local/run_table.py"),
        "--rows", row or args.row,
        "--exp-root", str(point_root),
        "--reuse-from", str(base_root(args)),
        "--seeds", str(args.seed),
        "--test-sets", "dev",
        "--decoding-methods", METHOD,
        "--beam-size", str(TUNE_BEAM_SIZE),
        "--title", f"KD tuning point {point_root.name}",
    ]  # fmt: skip
    for k, v in {**base, **kd}.items():
        # row_kd_scale: a point sets the row's lambda with --kd-scale, never per row
        if k in ("seeds", "row_kd_scale") or v is None:
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
        f"# KD tuning of `{args.row}` on dev (seed {args.seed}, {METHOD}, beam {TUNE_BEAM_SIZE})",
        "",
        f"- command (from egs/librispeech/ASR): `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- start point: the settings of `{args.base_root}`: "
        + ", ".join(f"{SHORT.get(k, k)} {base_kd[k]}" for k in KD_SETTINGS),
        f"- a value replaces the current one only if it lowers dev WER by at least {args.min_gain} (absolute)",
        "",
        "| stage | setting | value | "
        + " | ".join(SHORT.get(k, k) for k in KD_SETTINGS)
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
    lines += ["", f"Chosen: {', '.join(f'{SHORT.get(k, k)} {chosen[k]}' for k in KD_SETTINGS)}", "",
              f"run_table.py options: `{flags}`", ""]  # fmt: skip
    return "\n".join(lines)


def parse_grid(text: str) -> List[float]:
    """``"0.25,0.5,1"`` -> ``[0.25, 0.5, 1.0]`` (sorted, distinct, positive)."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as err:
        raise SystemExit(f"--lambda-grid {text!r}: expected numbers, e.g. 0.25,0.5,1,2,4") from err
    if len(values) < 2 or values[0] <= 0:
        raise SystemExit(f"--lambda-grid {text!r}: give at least two positive values")
    return values


def widen(tried: Sequence[float], best: float, factor: float) -> Optional[float]:
    """The lambda to try next when ``best`` sits at an edge of ``tried``; None when it is inside.

    At the low edge the next value is ``min / factor``, at the high edge ``max * factor``.
    """
    if best == min(tried):
        return min(tried) / factor
    if best == max(tried):
        return max(tried) * factor
    return None


def best_lambda(devs: Dict[float, float]) -> float:
    """The lambda of the lowest dev WER (ties: the smaller lambda)."""
    return min(devs, key=lambda v: (devs[v], v))


def tunable_rows(text: str) -> List[str]:
    """The rows of ``--rows``, checked: KD rows whose lambda is their own."""
    rows = [r for r in text.split(",") if r]
    for r in rows:
        row = TABLE_ROWS.get(r)
        if row is None or not row.uses_teacher:
            kd_rows = [k for k, t in TABLE_ROWS.items() if t.uses_teacher and not t.total_weight_of]
            raise SystemExit(f"--rows: {r!r} is not a KD row; choose from {kd_rows}")
        if row.total_weight_of:
            raise SystemExit(
                f"--rows: {r} is not tuned; its lambda is {row.total_weight_of}'s lambda * (1 + rho)"
            )
    return rows


def render_lambdas(
    base_kd: Dict[str, Any],
    devs: Dict[str, Dict[float, Dict[str, Any]]],
    chosen: Dict[str, float],
    at_edge: Sequence[str],
    args,
) -> str:
    """TUNING.md of the per-method lambda search: dev WER of each row at each lambda."""
    grid = sorted({v for d in devs.values() for v in d})
    lines = [
        f"# lambda per method on dev (seed {args.seed}, {METHOD}, beam {TUNE_BEAM_SIZE})",
        "",
        f"- command (from egs/librispeech/ASR): `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- grid: {args.lambda_grid} for every row, widened by x{args.widen_factor:g} past an "
        f"edge holding the best value (at most {args.max_widen} times per row)",
        "- other KD settings, from `" + str(args.base_root) + "`: "
        + ", ".join(f"{SHORT.get(k, k)} {base_kd[k]}" for k in KD_SETTINGS if k != "kd_scale"),
        "- dev only: no test set is decoded",
        "",
        "| method | " + " | ".join(f"λ {v:g}" for v in grid) + " | chosen λ | dev WER | S / D / I |",
        "|" + "---|" * (len(grid) + 4),
    ]
    for row, d in devs.items():
        cells = [f"{d[v]['wer']:.2f}" if v in d else "" for v in grid]
        best = d[chosen[row]]
        n = best.get("ref_words") or 0
        sdi = (
            " / ".join(f"{100.0 * best[k] / n:.1f}" for k in ("sub", "del", "ins")) if n else "-"
        )
        mark = " (grid edge)" if row in at_edge else ""
        label = TABLE_ROWS[row].label
        lines.append(
            f"| {label} | " + " | ".join(cells)
            + f" | {chosen[row]:g}{mark} | {best['wer']:.2f} | {sdi} |"
        )
    scales = ",".join(f"{r}={chosen[r]:g}" for r in chosen)
    lines += ["", f"Chosen: {', '.join(f'{r} {chosen[r]:g}' for r in chosen)}.", ""]
    if "spkd-n2" in chosen:
        rho = float(base_kd["kd_sampling_scale"])
        lines += [
            f"The PKD control `pkd-eq` trains at SP-KD (N=2)'s total KD weight "
            f"{chosen['spkd-n2']:g} x (1 + {rho:g}) = {chosen['spkd-n2'] * (1 + rho):g}.",
            "",
        ]
    if at_edge:
        lines += [f"Still at a grid edge after {args.max_widen} widenings: {', '.join(at_edge)}.", ""]
    lines += [
        "run_table.py options: `--kd-scales-from "
        + str(args.tune_root / "lambdas.json") + f"` (or `--row-kd-scale {scales}`), with "
        + " ".join(f"--{k.replace('_', '-')} {base_kd[k]}" for k in KD_SETTINGS if k != "kd_scale"),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def tune_lambdas(args, base: Dict[str, Any], tune_root: Path, run_point) -> None:
    """The per-method lambda search (``--rows``); writes TUNING.md and lambdas.json."""
    rows = tunable_rows(args.rows)
    grid = parse_grid(args.lambda_grid)
    base_kd = {k: base.get(k) for k in KD_SETTINGS}
    tried: Dict[str, List[float]] = {r: list(grid) for r in rows}
    devs: Dict[str, Dict[float, Dict[str, Any]]] = {r: {} for r in rows}
    widened = {r: 0 for r in rows}
    pending = [(r, v) for r in rows for v in grid]
    at_edge: List[str] = []
    while pending:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            got = list(pool.map(lambda rv: run_point({**base_kd, "kd_scale": rv[1]}, rv[0]), pending))
        if args.dry_run:
            return
        for (r, v), d in zip(pending, got):
            devs[r][v] = d
        pending = []
        at_edge = []
        for r in rows:
            best = best_lambda({v: d["wer"] for v, d in devs[r].items()})
            nxt = widen(tried[r], best, args.widen_factor)
            if nxt is None:
                continue
            if widened[r] >= args.max_widen:
                at_edge.append(r)
                continue
            widened[r] += 1
            tried[r].append(nxt)
            pending.append((r, nxt))
            logging.info(f"{r}: best lambda {best:g} at the grid's edge; trying {nxt:g}")
    chosen = {r: best_lambda({v: d["wer"] for v, d in devs[r].items()}) for r in rows}
    devs = {r: dict(sorted(d.items())) for r, d in devs.items()}
    text = render_lambdas(base_kd, devs, chosen, at_edge, args)
    (tune_root / "TUNING.md").write_text(text)
    record = {
        "row_kd_scale": chosen,
        # what the lambdas hold for: run_table.py --kd-scales-from refuses other values
        "kd_settings": {
            **{k: v for k, v in base_kd.items() if k != "kd_scale"},
            "kd_teacher_input": base.get("kd_teacher_input", "augmented"),
        },
        "dev_wer": {r: {f"{v:g}": d["wer"] for v, d in devs[r].items()} for r in rows},
        "at_grid_edge": at_edge,
        "seed": args.seed,
    }
    (tune_root / "lambdas.json").write_text(json.dumps(record, indent=2))
    print(text)
    logging.info(f"Wrote {tune_root / 'TUNING.md'} and {tune_root / 'lambdas.json'}")


def main() -> None:
    args = get_parser().parse_args()
    if args.rows and args.stage:
        raise SystemExit("--rows (lambda per method) and --stage (one row's settings) are separate runs")
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

    def run_point(kd: Dict[str, Any], row: Optional[str] = None) -> Optional[Dict[str, Any]]:
        row = row or args.row
        # per-method points: <tune-root>/<row>/<settings>; the coordinate search: <tune-root>/<settings>
        point_root = tune_root / row / point_name(kd) if args.rows else tune_root / point_name(kd)
        # Always through run_table.py, even for a point with a result.json: the
        # driver alone knows whether the WERs there were decoded as a tuning point
        # decodes (a run linked from the base root holds the base's beam size), and
        # it skips what is done in seconds.
        cmd = run_table_command(base, kd, args, point_root, row)
        logging.info("$ " + " ".join(shlex.quote(c) for c in cmd))
        if args.dry_run:
            return None
        point_root.mkdir(parents=True, exist_ok=True)
        with open(point_root / "run_table.log", "a") as log:
            proc = subprocess.run(cmd, cwd=RECIPE, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"point {point_root} failed; see {point_root / 'run_table.log'}")
        return dev_result(point_root, row, args.seed)

    if args.rows:
        tune_lambdas(args, base, tune_root, run_point)
        return
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
