"""The comparison table of ``../shared/docs/SPKD.md``: rows, result files, rendering.

``egs/librispeech/ASR/local/run_table.py`` drives the runs; this module holds
what is worth testing on its own:

- :data:`TABLE_ROWS`: every row of the table as the ``train.py`` flags that
  make it, so the driver and the documentation cannot disagree, and
  :func:`row_kd_settings`: the KD settings each row trains with (per-row
  lambdas, and the PKD control at SP-KD's total KD weight);
- :func:`parse_errs_file`: the WER and its insertion/deletion/substitution
  split from an ``errs-*`` file written by :mod:`icefall_spkd.wer`;
- :func:`summarise` and :func:`render_markdown`: one line per row, means and
  spreads over seeds of WER, CER and the substitution/deletion/insertion
  split, relative WER reduction versus the baseline student, the share of
  the teacher-student gap closed and the training time;
- :func:`bootstrap_comparisons` and :func:`render_bootstrap`: paired
  bootstrap intervals of the WER difference of each SP-KD row (or any rows)
  against each PKD row (or any others; :mod:`icefall_spkd.bootstrap`);
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from icefall_spkd.kd_options import DEFAULTS as KD_DEFAULTS


@dataclass(frozen=True)
class TableRow:
    """One method of the table.

    Attributes:
      key: short identifier, also the experiment sub-directory.
      label: what the table prints.
      is_teacher: the teacher row (trained first; the others learn from it).
      train_flags: extra ``train.py`` flags (KD flags) on top of the common ones.
      total_weight_of: for a control row, the SP-KD row whose total KD weight
        ``lambda * (1 + rho)`` becomes this row's ``lambda`` (see
        :func:`row_kd_settings`).
    """

    key: str
    label: str
    is_teacher: bool = False
    train_flags: tuple = field(default_factory=tuple)
    total_weight_of: Optional[str] = None

    @property
    def uses_teacher(self) -> bool:
        return "--kd-loss" in self.train_flags

    @property
    def uses_sampler(self) -> bool:
        """SP-KD rows: a sampler adds ``lambda * rho * L_samp`` to PKD's ``lambda * L_PKD``."""
        flags = dict(zip(self.train_flags[::2], self.train_flags[1::2]))
        return flags.get("--kd-sampler", "none") != "none"


def _kd(*flags: str) -> tuple:
    return tuple(flags)


#: The driver's KD settings (``run_table.py`` option dests) and their defaults,
#: which are train.py's (:class:`icefall_spkd.kd_options.KDOptions`, where the
#: tuned values are documented): the KD rows depend on them, the teacher and
#: the baseline do not; ``tune_kd.py`` tunes them.
KD_SETTINGS: Dict[str, Any] = {
    k: getattr(KD_DEFAULTS, k)
    for k in ("kd_scale", "kd_sampling_scale", "kd_temperature", "kd_prune_range",
              "kd_sample_temperature")
}  # fmt: skip

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
        TableRow(
            "pkd-eq",
            "PKD at SP-KD's total KD weight",
            train_flags=_kd("--kd-loss", "pkd", "--kd-sampler", "none"),
            total_weight_of="spkd-n2",
        ),
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

#: The PKD rows (reference sequence only) every SP-KD row is compared with by
#: the paired bootstrap.
PKD_ROWS = ("pkd", "pkd-eq")


def parse_row_scales(text: Any) -> Dict[str, float]:
    """``"pkd=2,spkd-n2=1.5"`` (or a dict) -> ``{"pkd": 2.0, "spkd-n2": 1.5}``.

    Raises ValueError for an unknown row, a row without KD, a control row
    whose lambda is derived (``pkd-eq``) or a value that is not a number.
    """
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in str(text or "").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"per-row lambda {part!r}: expected ROW=VALUE, e.g. pkd=2.0")
            items.append((key.strip(), value.strip()))
    out: Dict[str, float] = {}
    for key, value in items:
        row = TABLE_ROWS.get(key)
        if row is None or not row.uses_teacher:
            kd_rows = [k for k, r in TABLE_ROWS.items() if r.uses_teacher]
            raise ValueError(f"per-row lambda for {key!r}: not a KD row; choose from {kd_rows}")
        if row.total_weight_of:
            raise ValueError(
                f"per-row lambda for {key!r}: its lambda is {row.total_weight_of}'s "
                f"lambda * (1 + rho); set {row.total_weight_of}'s instead"
            )
        try:
            out[key] = float(value)
        except ValueError as err:
            raise ValueError(f"per-row lambda {key}={value!r}: not a number") from err
    return out


def row_kd_settings(key: str, settings: Dict[str, Any], row_scales: Any = None) -> Dict[str, Any]:
    """The KD settings (:data:`KD_SETTINGS`) row ``key`` trains with; ``{}`` for rows without KD.

    Args:
      key: a row of :data:`TABLE_ROWS`.
      settings: the driver's settings (``kd_scale``, ``kd_sampling_scale``, ...).
      row_scales: per-row lambdas (``parse_row_scales`` input); a row without
        one uses ``settings["kd_scale"]``.
    Returns:
      ``{setting: value}``. A row with ``total_weight_of`` (the PKD control)
      gets ``kd_scale = lambda_S * (1 + rho)`` with ``lambda_S`` the lambda of
      that SP-KD row: the same total KD weight, since SP-KD's loss is
      ``lambda * L_PKD + lambda * rho * L_samp`` with ``L_samp`` averaged over
      the ``N`` samples and every term normalised per frame.
    """
    row = TABLE_ROWS[key]
    if not row.uses_teacher:
        return {}
    scales = parse_row_scales(row_scales)
    out = {k: settings.get(k) for k in KD_SETTINGS}
    if row.total_weight_of:
        lam = scales.get(row.total_weight_of, settings["kd_scale"])
        out["kd_scale"] = lam * (1.0 + float(settings["kd_sampling_scale"]))
    else:
        out["kd_scale"] = scales.get(key, settings["kd_scale"])
    return out


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
    """Mean and sample standard deviation (0 for a single value); NaN if any value is NaN."""
    if not values or any(math.isnan(v) for v in values):
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
      row key -> {"wer": {set: (mean, std)}, "cer": {set: (mean, std)},
      "sdi": {set: (S, D, I)}, "seeds": n, "params": int,
      "rel_reduction": {set: percent or None}, "gap_closed": {set: percent or None},
      "train_minutes": (mean, std), "step_seconds": mean, "del_share": {set: percent},
      "kd": the run's KD settings or None}.
      ``S``, ``D``, ``I`` are substitutions, deletions and insertions in
      percent of the reference words, each the mean over seeds (they add up
      to the mean WER). CER is NaN for results decoded before CER was
      written. Relative reduction is ``(base - row) / base``; gap closed is
      ``(base - row) / (base - teacher)``, both on the means, and only where
      the baseline (and, for the gap, the teacher) exists and the gap is positive.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for key, runs in results.items():
        wer: Dict[str, tuple] = {}
        cer: Dict[str, tuple] = {}
        sdi: Dict[str, tuple] = {}
        del_share: Dict[str, float] = {}
        for s in test_sets:
            errs = [r["wer"][method][s] for r in runs if s in r["wer"].get(method, {})]
            wer[s] = mean_std([e["wer"] for e in errs])
            cer[s] = mean_std([e.get("cer", math.nan) for e in errs])
            sdi[s] = tuple(
                statistics.fmean(100.0 * e[k] / e["ref_words"] for e in errs)
                if errs and all(e.get("ref_words") for e in errs)
                else math.nan
                for k in ("sub", "del", "ins")
            )
            tot = sum(e.get("errors", 0) for e in errs)
            del_share[s] = 100.0 * sum(e["del"] for e in errs) / tot if tot else math.nan
        out[key] = {
            "wer": wer,
            "cer": cer,
            "sdi": sdi,
            "kd": runs[0].get("kd"),
            "del_share": del_share,
            "seeds": len(runs),
            "seed_list": [r["seed"] for r in runs],
            "params": runs[0]["params"],
            "train_minutes": mean_std([r["train_seconds"] / 60.0 for r in runs]),
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


def _label(key: str) -> str:
    return TABLE_ROWS[key].label if key in TABLE_ROWS else key


def _fmt_sdi(v: tuple) -> str:
    return "-" if any(math.isnan(x) for x in v) else " / ".join(f"{x:.1f}" for x in v)


def _fmt_kd(kd: Optional[Dict[str, Any]], key: str) -> str:
    """``lambda`` of a KD row, and its total KD weight ``lambda (1 + rho)`` for sampling rows."""
    if not kd or kd.get("kd_scale") is None:
        return "-"
    lam = float(kd["kd_scale"])
    row = TABLE_ROWS.get(key)
    if row is not None and row.uses_sampler:
        return f"{lam:g} ({lam * (1 + float(kd['kd_sampling_scale'])):g})"
    return f"{lam:g}"


def render_markdown(
    summary: Dict[str, Dict[str, Any]],
    row_order: Sequence[str],
    test_sets: Sequence[str],
    detail_set: Optional[str] = None,
) -> str:
    """A markdown table, one line per row in ``row_order`` present in ``summary``.

    Columns: method; parameters (M); seeds; lambda, with the total KD weight
    ``lambda (1 + rho)`` in brackets for SP-KD rows; WER and CER per test set
    (mean ± sample std over seeds); substitutions / deletions / insertions in
    percent of the words on ``detail_set`` (default: the first test set);
    relative WER reduction versus the baseline and share of the
    teacher-student gap closed, per test set; training minutes (mean ± std)
    and seconds per training batch.
    """
    detail_set = detail_set or test_sets[0]
    head = (
        ["method", "params (M)", "seeds", "λ (total KD weight)"]
        + [f"WER {s}" for s in test_sets]
        + [f"CER {s}" for s in test_sets]
        + [f"S / D / I {detail_set}"]
        + [f"rel. red. {s} (%)" for s in test_sets]
        + [f"gap closed {s} (%)" for s in test_sets]
        + ["train (min)", "s / batch"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in row_order:
        if key not in summary:
            continue
        row = summary[key]
        n = row["seeds"]
        label = TABLE_ROWS[key].label if key in TABLE_ROWS else key
        cells = [label, f"{row['params'] / 1e6:.2f}", str(n), _fmt_kd(row.get("kd"), key)]
        cells += [_fmt_wer(*row["wer"][s], n) for s in test_sets]
        cells += [_fmt_wer(*row["cer"][s], n) for s in test_sets]
        cells += [_fmt_sdi(row["sdi"][detail_set])]
        cells += [_fmt_pct(row["rel_reduction"][s]) for s in test_sets]
        cells += [_fmt_pct(row["gap_closed"][s]) for s in test_sets]
        tm, ts = row["train_minutes"]
        cells += [f"{tm:.1f} ± {ts:.1f}" if n > 1 else f"{tm:.1f}", f"{row['step_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compared_rows(row_order: Sequence[str], rows: Optional[Sequence[str]] = None) -> List[str]:
    """The rows a bootstrap compares, in ``row_order``'s order: ``rows``, or by
    default the SP-KD rows (those with a sampler)."""
    if rows is not None:
        return [k for k in row_order if k in rows]
    return [k for k in row_order if k in TABLE_ROWS and TABLE_ROWS[k].uses_sampler]


def bootstrap_comparisons(
    utt_errors: Dict[str, Dict[int, Dict[str, Tuple[int, int]]]],
    row_order: Sequence[str],
    num_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    rows: Optional[Sequence[str]] = None,
    against: Sequence[str] = PKD_ROWS,
) -> List[Dict[str, Any]]:
    """Paired bootstrap of every SP-KD row (or of ``rows``) against every PKD row
    (or every row of ``against``).

    Args:
      utt_errors: row -> seed -> cut id -> ``(word errors, reference words)``
        on one test set (:func:`icefall_spkd.wer.utterance_errors`).
      row_order: rows in table order; SP-KD rows are those with a sampler.
      num_resamples, confidence, seed: of :func:`icefall_spkd.bootstrap.paired_bootstrap`.
      rows: the rows compared (default: the SP-KD rows), in ``row_order``'s order.
      against: the rows each is compared with (default :data:`PKD_ROWS`); a
        row is never compared with itself.
    Returns:
      one dict per (row, against-row) pair present: ``{"a", "b", "seeds",
      "result"}``. The runs of the seeds both rows have are paired seed by
      seed and pooled by resampling utterances (see :mod:`icefall_spkd.bootstrap`);
      ``result`` is None when they share no seed.
    """
    from icefall_spkd.bootstrap import paired_arrays, paired_bootstrap

    out: List[Dict[str, Any]] = []
    for a in compared_rows(row_order, rows):
        if a not in utt_errors or a not in TABLE_ROWS:
            continue
        for b in against:
            if b not in utt_errors or b == a:
                continue
            seeds = sorted(set(utt_errors[a]) & set(utt_errors[b]))
            result = None
            if seeds:
                ref, ea, eb = paired_arrays(
                    [utt_errors[a][s] for s in seeds], [utt_errors[b][s] for s in seeds], (a, b)
                )
                result = paired_bootstrap(ref, ea, eb, num_resamples, confidence, seed)
            out.append({"a": a, "b": b, "seeds": seeds, "result": result})
    return out


def render_bootstrap(comparisons: Sequence[Dict[str, Any]], test_set: str) -> str:
    """Markdown table of :func:`bootstrap_comparisons` (difference = row minus the row
    it is compared with, WER %)."""
    if not comparisons:
        return ""
    conf = next((c["result"].confidence for c in comparisons if c["result"]), 0.95)
    head = [
        "row",
        "against",
        "seeds (paired)",
        "utterances",
        f"WER difference {test_set} (row − against)",
        f"{100 * conf:g} % interval",
        "resamples with the row better (%)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        r = c["result"]
        if r is None:
            cells = [_label(c["a"]), _label(c["b"]), "none in common", "-", "-", "-", "-"]
        else:
            cells = [
                _label(c["a"]),
                _label(c["b"]),
                ", ".join(str(s) for s in c["seeds"]),
                str(r.num_utts),
                f"{r.difference:+.2f}",
                f"[{r.low:+.2f}, {r.high:+.2f}]",
                f"{100 * r.share_a_better:.1f}",
            ]
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
    # outside the axes, on the right: with many rows no corner is free of bars
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)


def load_results(exp_root: Path, row_keys: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Collect ``<exp_root>/<row>/seed-*/result.json`` for the given rows."""
    results: Dict[str, List[Dict[str, Any]]] = {}
    for key in row_keys:
        files = sorted((exp_root / key).glob("seed-*/result.json"))
        if files:
            results[key] = [json.loads(f.read_text()) for f in files]
    return results
