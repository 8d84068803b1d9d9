"""The comparison table of ``../shared/docs/SPKD.md``: rows, result files, rendering.

``egs/librispeech/ASR/local/run_table.py`` drives the runs; this module holds
what is worth testing on its own:

- :data:`TABLE_ROWS`: every row of the table as the ``train.py`` flags that
  make it, so the driver and the documentation cannot disagree;
- :func:`parse_errs_file`: the WER and its insertion/deletion/substitution
  split from an ``errs-*`` file written by :mod:`icefall_spkd.wer`;
- :func:`summarise` and :func:`render_markdown`: one line per row, means and
  spreads over seeds, relative WER reduction versus the baseline student and
  the share of the teacher-student gap closed;
- :func:`plot_chart`: the same numbers as a PNG bar chart.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


@dataclass(frozen=True)
class TableRow:
    """One method of the table.

    Attributes:
      key: short identifier, also the experiment sub-directory.
      label: what the table prints.
      is_teacher: the teacher row (trained first; the others learn from it).
      train_flags: extra ``train.py`` flags (KD flags) on top of the common ones.
    """

    key: str
    label: str
    is_teacher: bool = False
    train_flags: tuple = field(default_factory=tuple)

    @property
    def uses_teacher(self) -> bool:
        return "--kd-loss" in self.train_flags


def _kd(*flags: str) -> tuple:
    return tuple(flags)


#: The driver's KD settings (``run_table.py`` option dests): the KD rows depend
#: on them, the teacher and the baseline do not; ``tune_kd.py`` tunes them.
KD_SETTINGS = (
    "kd_scale",
    "kd_sampling_scale",
    "kd_temperature",
    "kd_prune_range",
    "kd_sample_temperature",
)

TABLE_ROWS: Dict[str, TableRow] = {
    r.key: r
    for r in [
        TableRow("teacher", "teacher", is_teacher=True),
        TableRow("baseline", "student baseline"),
        TableRow("full-kd", "full-lattice KD", train_flags=_kd("--kd-loss", "full", "--kd-sampler", "none")),
        TableRow(
            "collapsed-kd",
            "collapsed KD",
            train_flags=_kd("--kd-loss", "collapsed", "--kd-sampler", "none"),
        ),
        TableRow(
            "1best-kd",
            "1-best KD (viterbi)",
            train_flags=_kd("--kd-loss", "pkd", "--kd-node-weights", "viterbi", "--kd-sampler", "none"),
        ),
        TableRow("pkd", "PKD", train_flags=_kd("--kd-loss", "pkd", "--kd-sampler", "none")),
        *[
            TableRow(
                f"spkd-n{n}",
                f"SP-KD (teacher sampler, N={n})",
                train_flags=_kd(
                    "--kd-loss", "pkd", "--kd-sampler", "teacher", "--kd-num-samples", str(n)
                ),
            )
            for n in (1, 2, 4)
        ],
        TableRow(
            "spkd-batch",
            "SP-KD (batch sampler)",
            train_flags=_kd("--kd-loss", "pkd", "--kd-sampler", "batch", "--kd-num-samples", "1"),
        ),
        TableRow(
            "spkd-posterior",
            "SP-KD posterior weights (N=2)",
            train_flags=_kd(
                "--kd-loss",
                "pkd",
                "--kd-node-weights",
                "posterior",
                "--kd-sampler",
                "teacher",
                "--kd-num-samples",
                "2",
            ),
        ),
    ]
}

_ERRS_HEADER = re.compile(
    r"%WER\s*=\s*([0-9.]+)\s*\[\s*(\d+)\s*/\s*(\d+),\s*(\d+)\s*ins,\s*(\d+)\s*del,\s*(\d+)\s*sub\s*\]"
)
_CER_HEADER = re.compile(
    r"%CER\s*=\s*([0-9.]+)\s*\[\s*(\d+)\s*/\s*(\d+),\s*(\d+)\s*ins,\s*(\d+)\s*del,\s*(\d+)\s*sub\s*\]"
)


def parse_errs_file(path: Path) -> Dict[str, float]:
    """Read ``%WER = x [ e / n, i ins, d del, s sub ]`` from an ``errs-*`` file.

    Returns a dict with ``wer`` (percent), ``errors``, ``ref_words``, ``ins``,
    ``del`` and ``sub``, and, when the file has the ``%CER`` line (files
    written before CER was added do not), ``cer`` (percent), ``char_errors``,
    ``ref_chars``, ``char_ins``, ``char_del`` and ``char_sub``. Raises
    ValueError naming the file when the WER header is missing, so a truncated
    decode is never read as a result.
    """
    text = Path(path).read_text()
    m = _ERRS_HEADER.search(text)
    if m is None:
        raise ValueError(f"{path}: no '%WER = ... [ e / n, i ins, d del, s sub ]' line; re-run decoding")
    wer, errors, ref_words, ins, dels, subs = m.groups()
    out: Dict[str, float] = {
        "wer": float(wer),
        "errors": int(errors),
        "ref_words": int(ref_words),
        "ins": int(ins),
        "del": int(dels),
        "sub": int(subs),
    }
    c = _CER_HEADER.search(text)
    if c is not None:
        cer, errors, ref_chars, ins, dels, subs = c.groups()
        out.update(
            cer=float(cer),
            char_errors=int(errors),
            ref_chars=int(ref_chars),
            char_ins=int(ins),
            char_del=int(dels),
            char_sub=int(subs),
        )
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarise(
    results: Dict[str, List[Dict[str, Any]]], method: str, test_sets: Sequence[str]
) -> Dict[str, Dict[str, Any]]:
    """Per row: mean/std WER per test set over seeds, plus derived columns.

    Args:
      results: row key -> list of per-seed result dicts as written by the
        driver (``{"seed", "params", "train_seconds", "num_batches",
        "wer": {method: {test_set: parse_errs_file(...)}}}``).
      method: decoding method whose WERs are summarised.
      test_sets: columns, in order.
    Returns:
      row key -> {"wer": {set: (mean, std)}, "seeds": n, "params": int,
      "rel_reduction": {set: percent or None}, "gap_closed": {set: percent or None},
      "train_minutes": mean, "step_seconds": mean, "del_share": {set: percent}}.
      Relative reduction is ``(base - row) / base``; gap closed is
      ``(base - row) / (base - teacher)``, both on the means, and only where
      the baseline (and, for the gap, the teacher) exists and the gap is positive.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for key, runs in results.items():
        wer: Dict[str, tuple] = {}
        del_share: Dict[str, float] = {}
        for s in test_sets:
            vals = [r["wer"][method][s]["wer"] for r in runs if s in r["wer"].get(method, {})]
            wer[s] = mean_std(vals)
            errs = [r["wer"][method][s] for r in runs if s in r["wer"].get(method, {})]
            tot = sum(e["errors"] for e in errs)
            del_share[s] = 100.0 * sum(e["del"] for e in errs) / tot if tot else math.nan
        out[key] = {
            "wer": wer,
            "del_share": del_share,
            "seeds": len(runs),
            "seed_list": [r["seed"] for r in runs],
            "params": runs[0]["params"],
            "train_minutes": statistics.fmean(r["train_seconds"] for r in runs) / 60.0,
            "step_seconds": statistics.fmean(
                r["train_seconds"] / max(r["num_batches"], 1) for r in runs
            ),
        }
    base = out.get("baseline")
    teacher = out.get("teacher")
    for key, row in out.items():
        row["rel_reduction"] = {}
        row["gap_closed"] = {}
        for s in test_sets:
            r = row["wer"][s][0]
            b = base["wer"][s][0] if base else math.nan
            t = teacher["wer"][s][0] if teacher else math.nan
            row["rel_reduction"][s] = (
                100.0 * (b - r) / b if base and key != "baseline" and b > 0 else None
            )
            gap = b - t
            row["gap_closed"][s] = (
                100.0 * (b - r) / gap
                if base and teacher and key not in ("baseline", "teacher") and gap > 0
                else None
            )
    return out


def _fmt_wer(m: float, s: float, n: int) -> str:
    if math.isnan(m):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def _fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:+.1f}"


def render_markdown(
    summary: Dict[str, Dict[str, Any]],
    row_order: Sequence[str],
    test_sets: Sequence[str],
    gap_set: Optional[str] = None,
) -> str:
    """A markdown table, one line per row in ``row_order`` present in ``summary``.

    Columns: method, parameters (M), seeds, WER per test set (mean ± std over
    seeds), relative WER reduction versus the baseline on each set, share of
    the teacher-student gap closed on ``gap_set`` (default: the first test
    set), the share of errors that are deletions on ``gap_set``, training
    minutes and seconds per training batch.
    """
    gap_set = gap_set or test_sets[0]
    head = (
        ["method", "params (M)", "seeds"]
        + [f"WER {s}" for s in test_sets]
        + [f"rel. red. {s} (%)" for s in test_sets]
        + [f"gap closed {gap_set} (%)", f"deletions {gap_set} (% of errors)"]
        + ["train (min)", "s / batch"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in row_order:
        if key not in summary:
            continue
        row = summary[key]
        label = TABLE_ROWS[key].label if key in TABLE_ROWS else key
        cells = [label, f"{row['params'] / 1e6:.2f}", str(row["seeds"])]
        cells += [_fmt_wer(*row["wer"][s], row["seeds"]) for s in test_sets]
        cells += [_fmt_pct(row["rel_reduction"][s]) for s in test_sets]
        cells += [_fmt_pct(row["gap_closed"][gap_set])]
        ds = row["del_share"][gap_set]
        cells += ["-" if math.isnan(ds) else f"{ds:.0f}"]
        cells += [f"{row['train_minutes']:.1f}", f"{row['step_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_chart(
    summary: Dict[str, Dict[str, Any]],
    row_order: Sequence[str],
    test_sets: Sequence[str],
    out_png: Path,
    title: str,
) -> None:
    """Grouped bar chart of mean WER (error bars: std over seeds) per row and test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in row_order if k in summary]
    width = 0.8 / max(len(test_sets), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(keys) + 2), 4.5))
    for i, s in enumerate(test_sets):
        means = [summary[k]["wer"][s][0] for k in keys]
        stds = [summary[k]["wer"][s][1] for k in keys]
        xs = [j + (i - (len(test_sets) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=s)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(
        [TABLE_ROWS[k].label if k in TABLE_ROWS else k for k in keys], rotation=30, ha="right"
    )
    ax.set_ylabel("WER (%)")
    # wrap each line of a long title so that it stays inside the figure
    ax.set_title("\n".join(textwrap.fill(line, 60) for line in title.split("\n")), fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def load_results(exp_root: Path, row_keys: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Collect ``<exp_root>/<row>/seed-*/result.json`` for the given rows."""
    results: Dict[str, List[Dict[str, Any]]] = {}
    for key in row_keys:
        files = sorted((exp_root / key).glob("seed-*/result.json"))
        if files:
            results[key] = [json.loads(f.read_text()) for f in files]
    return results
