"""The comparison-table helpers: parsing decode outputs and the derived columns."""

from __future__ import annotations

import math

import pytest

from icefall_spkd.results_table import (
    TABLE_ROWS,
    bootstrap_comparisons,
    parse_errs_file,
    parse_row_scales,
    render_bootstrap,
    render_markdown,
    row_kd_settings,
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


def _run_sdi(seed, sub, dels, ins, ref=200, cer=None):
    """A result on dev with the given counts; WER = (S + D + I) / ref."""
    e = {"wer": 100.0 * (sub + dels + ins) / ref, "errors": sub + dels + ins, "ref_words": ref,
         "ins": ins, "del": dels, "sub": sub}  # fmt: skip
    if cer is not None:
        e["cer"] = cer
    return {"seed": seed, "params": 10, "train_seconds": 60.0 * seed, "num_batches": 1,
            "wer": {"mbs": {"dev": e}}}  # fmt: skip


def test_cer_and_sdi_columns_by_hand():
    # seed 1: S 10 D 6 I 4 of 200 words = 5 / 3 / 2 %; seed 3: S 14 D 2 I 0 = 7 / 1 / 0 %
    results = {"pkd": [_run_sdi(1, 10, 6, 4, cer=6.0), _run_sdi(3, 14, 2, 0, cer=4.0)]}
    row = summarise(results, "mbs", ["dev"])["pkd"]
    assert row["sdi"]["dev"] == pytest.approx((6.0, 2.0, 1.0))
    assert row["wer"]["dev"][0] == pytest.approx(sum(row["sdi"]["dev"]))  # S + D + I = WER
    assert row["cer"]["dev"] == pytest.approx((5.0, math.sqrt(2.0)))
    assert row["train_minutes"] == pytest.approx((2.0, math.sqrt(2.0)))  # 1 and 3 minutes
    line = render_markdown({"pkd": row}, ["pkd"], ["dev"]).splitlines()[2]
    assert "| 5.00 ± 1.41 |" in line and "| 6.0 / 2.0 / 1.0 |" in line and "| 2.0 ± 1.4 |" in line
    # results decoded before CER was written: CER is "-", the rest still there
    old = summarise({"pkd": [_run_sdi(1, 10, 6, 4), _run_sdi(3, 14, 2, 0)]}, "mbs", ["dev"])
    assert math.isnan(old["pkd"]["cer"]["dev"][0])
    assert "| - |" in render_markdown(old, ["pkd"], ["dev"]).splitlines()[2]


KD = {"kd_scale": 0.5, "kd_sampling_scale": 1.0, "kd_temperature": 1.0, "kd_prune_range": 5,
      "kd_sample_temperature": 1.0}  # fmt: skip


def test_pkd_control_gets_the_total_kd_weight_of_spkd():
    assert row_kd_settings("baseline", KD) == {} and row_kd_settings("teacher", KD) == {}
    assert row_kd_settings("pkd", KD)["kd_scale"] == 0.5
    assert row_kd_settings("pkd-eq", KD)["kd_scale"] == 1.0  # 0.5 * (1 + 1)
    # per-row lambdas: PKD its own; the control follows SP-KD (N=2): 2.0 * (1 + 0.5)
    kd = {**KD, "kd_sampling_scale": 0.5}
    scales = "pkd=4.0,spkd-n2=2.0"
    assert row_kd_settings("pkd", kd, scales)["kd_scale"] == 4.0
    assert row_kd_settings("spkd-n2", kd, scales)["kd_scale"] == 2.0
    assert row_kd_settings("pkd-eq", kd, scales)["kd_scale"] == 3.0
    assert row_kd_settings("spkd-n4", kd, scales)["kd_scale"] == 0.5  # no override: the common one
    assert row_kd_settings("pkd-eq", kd, scales)["kd_sampling_scale"] == 0.5
    assert TABLE_ROWS["pkd-eq"].train_flags == TABLE_ROWS["pkd"].train_flags


def test_parse_row_scales_refuses_what_it_cannot_use():
    assert parse_row_scales("pkd=2, spkd-n2=1.5") == {"pkd": 2.0, "spkd-n2": 1.5}
    assert parse_row_scales("") == {} and parse_row_scales({"pkd": 1}) == {"pkd": 1.0}
    with pytest.raises(ValueError, match="baseline"):
        parse_row_scales("baseline=1")
    with pytest.raises(ValueError, match="spkd-n2's"):
        parse_row_scales("pkd-eq=1")
    with pytest.raises(ValueError, match="ROW=VALUE"):
        parse_row_scales("pkd")
    with pytest.raises(ValueError, match="not a number"):
        parse_row_scales("pkd=x")


def test_bootstrap_comparisons_pair_the_common_seeds():
    # 4 utterances of 5 words; SP-KD makes one error fewer than PKD on u1 in each seed
    pkd = {s: {"u1": (2, 5), "u2": (1, 5), "u3": (0, 5), "u4": (1, 5)} for s in (42, 43, 44)}
    spkd = {s: {"u1": (1, 5), "u2": (1, 5), "u3": (0, 5), "u4": (1, 5)} for s in (42, 43)}
    utt = {"pkd": pkd, "pkd-eq": {7: pkd[42]}, "spkd-n2": spkd, "baseline": pkd}
    comps = bootstrap_comparisons(utt, list(TABLE_ROWS), num_resamples=2000)
    assert [(c["a"], c["b"], c["seeds"]) for c in comps] == [
        ("spkd-n2", "pkd", [42, 43]),
        ("spkd-n2", "pkd-eq", []),
    ]
    r = comps[0]["result"]
    assert r.difference == pytest.approx(-100.0 / 20) and r.num_runs == 2
    assert r.low <= -5.0 <= r.high <= 0.0
    text = render_bootstrap(comps, "test-clean")
    lines = text.splitlines()
    assert "| SP-KD (teacher sampler, N=2) | PKD | 42, 43 | 4 | -5.00 |" in lines[2]
    assert "none in common" in lines[3]


def test_bootstrap_comparisons_any_rows_against_any_rows():
    # full-lattice KD makes one error more than PKD at equal weight on u2 (seed 42 only)
    ref = {"u1": (1, 4), "u2": (0, 4)}
    worse = {"u1": (1, 4), "u2": (1, 4)}
    utt = {"pkd-eq": {42: ref}, "full-kd": {42: worse}, "spkd-n2": {42: ref}, "pkd": {42: ref}}
    # by default only the SP-KD rows are compared, with the PKD rows
    default = bootstrap_comparisons(utt, list(TABLE_ROWS), num_resamples=500)
    assert [(c["a"], c["b"]) for c in default] == [("spkd-n2", "pkd"), ("spkd-n2", "pkd-eq")]
    comps = bootstrap_comparisons(
        utt, list(TABLE_ROWS), num_resamples=500, rows=["full-kd", "spkd-n2"], against=["spkd-n2"]
    )
    # table order; a row is not compared with itself
    assert [(c["a"], c["b"]) for c in comps] == [("full-kd", "spkd-n2")]
    assert comps[0]["result"].difference == pytest.approx(100.0 / 8)
    assert "| full-lattice KD | SP-KD (teacher sampler, N=2) | 42 | 2 | +12.50 |" in render_bootstrap(
        comps, "dev"
    )
