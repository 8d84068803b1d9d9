"""The comparison-table helpers: parsing decode outputs and the derived columns."""

from __future__ import annotations

import math

import pytest

from icefall_spkd.results_table import (
    TABLE_ROWS,
    parse_errs_file,
    render_markdown,
    summarise,
)
from icefall_spkd.wer import write_error_stats


def test_parse_errs_file_reads_what_wer_writes(tmp_path):
    # ref "A B C D", hyp "A X C" : 1 substitution (B->X), 1 deletion (D);
    # ref "E F", hyp "E F G"   : 1 insertion (G). 3 errors over 6 words = 50%.
    results = [("u1", "A B C D".split(), "A X C".split()), ("u2", "E F".split(), "E F G".split())]
    path = tmp_path / "errs.txt"
    wer = write_error_stats(path, "test", results)
    got = parse_errs_file(path)
    # characters: ABCD vs AXC (B->X, D deleted), EF vs EFG (G inserted): 3 of 6
    assert got == {"wer": 50.0, "errors": 3, "ref_words": 6, "ins": 1, "del": 1, "sub": 1,
                   "cer": 50.0, "char_errors": 3, "ref_chars": 6, "char_ins": 1,
                   "char_del": 1, "char_sub": 1}  # fmt: skip
    assert got["wer"] == pytest.approx(wer)
    # a file from before CER was written: the WER part only
    old = tmp_path / "errs-old.txt"
    old.write_text("\n".join(ln for ln in path.read_text().splitlines() if "%CER" not in ln))
    assert parse_errs_file(old) == {"wer": 50.0, "errors": 3, "ref_words": 6, "ins": 1,
                                    "del": 1, "sub": 1}  # fmt: skip


def test_parse_errs_file_refuses_a_file_without_totals(tmp_path):
    path = tmp_path / "errs-truncated.txt"
    path.write_text("PER-UTT DETAILS\n")
    with pytest.raises(ValueError, match="errs-truncated.txt"):
        parse_errs_file(path)


def _run(seed, wers, params=1_000_000, secs=600.0, batches=300, dels=1):
    return {
        "seed": seed,
        "params": params,
        "train_seconds": secs,
        "num_batches": batches,
        "wer": {
            "mbs": {
                s: {"wer": w, "errors": 10, "ref_words": 100, "ins": 0, "del": dels, "sub": 10 - dels}
                for s, w in wers.items()
            }
        },
    }


def test_summary_columns_follow_their_definitions():
    results = {
        "teacher": [_run(42, {"dev": 10.0})],
        "baseline": [_run(42, {"dev": 20.0}), _run(43, {"dev": 22.0})],
        "spkd-n2": [_run(42, {"dev": 14.0}), _run(43, {"dev": 16.0}, dels=5)],
    }
    summary = summarise(results, "mbs", ["dev"])
    base_mean, base_std = summary["baseline"]["wer"]["dev"]
    assert base_mean == pytest.approx(21.0)
    assert base_std == pytest.approx(math.sqrt(2.0))  # sample std of {20, 22}
    spkd = summary["spkd-n2"]
    # relative reduction (21 - 15) / 21; gap closed (21 - 15) / (21 - 10)
    assert spkd["rel_reduction"]["dev"] == pytest.approx(100 * 6 / 21)
    assert spkd["gap_closed"]["dev"] == pytest.approx(100 * 6 / 11)
    # deletions: (1 + 5) of 20 errors
    assert spkd["del_share"]["dev"] == pytest.approx(30.0)
    assert spkd["step_seconds"] == pytest.approx(2.0)
    assert summary["baseline"]["rel_reduction"]["dev"] is None
    assert summary["teacher"]["gap_closed"]["dev"] is None

    table = render_markdown(summary, list(TABLE_ROWS), ["dev"])
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3  # header, rule, three rows in table order
    assert lines[2].startswith("| teacher |")
    assert "| 15.00 ± 1.41 |" in lines[4] and "+28.6" in lines[4] and "+54.5" in lines[4]


def test_every_row_names_valid_kd_flags():
    # The rows must not rely on defaults that would silently change the method:
    # any row without a sampler in its name says --kd-sampler none explicitly.
    for key, row in TABLE_ROWS.items():
        flags = dict(zip(row.train_flags[::2], row.train_flags[1::2]))
        if row.is_teacher or key == "baseline":
            assert flags == {}
        elif key.startswith("spkd"):
            assert flags["--kd-sampler"] in ("teacher", "batch")
        else:
            assert flags["--kd-sampler"] == "none"
