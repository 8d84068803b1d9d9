"""A tiny LibriSpeech-shaped tree carried through prepare.sh stages 1-5."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import sentencepiece as spm
from lhotse import load_manifest
from prep_fixtures import PREPARE, RECIPE, Prepared

SPLITS = ["train", "dev", "test-clean", "test-other"]


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_manifests_have_librispeech_names(tiny_librispeech: Prepared) -> None:
    md = tiny_librispeech.workdir / "data" / "manifests"
    for part in tiny_librispeech.good:
        for kind in ("recordings", "supervisions"):
            assert (md / f"librispeech_{kind}_{part}.jsonl.gz").is_file()


def test_fbank_cuts_for_each_split(tiny_librispeech: Prepared) -> None:
    fb = tiny_librispeech.workdir / "data" / "fbank"
    good = tiny_librispeech.good
    expected = {
        "train": good["train-clean-100"],
        "dev": good["dev-clean"] + good["dev-other"],
        "test-clean": good["test-clean"],
        "test-other": good["test-other"],
    }
    for split in SPLITS:
        cuts = load_manifest(fb / f"librispeech_cuts_{split}.jsonl.gz")
        assert sorted(cuts.ids) == sorted(expected[split]), split
        for c in cuts:
            assert c.has_features and c.num_features == 80
            assert c.sampling_rate == 16000
            assert abs(c.num_frames - round(c.duration * 100)) <= 1
            text = c.supervisions[0].text
            assert text and set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' "), text
    # per-part files are kept too
    assert (fb / "librispeech_cuts_train-clean-100.jsonl.gz").is_file()
    assert (fb / "librispeech_cuts_dev-other.jsonl.gz").is_file()


def test_features_load_from_recipe_dir(tiny_librispeech: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(tiny_librispeech.workdir)
    cut = load_manifest("data/fbank/librispeech_cuts_train.jsonl.gz")[0]
    feats = cut.load_features()
    assert feats.shape == (cut.num_frames, 80)


def test_bad_inputs_reported_with_reason_and_action(tiny_librispeech: Prepared) -> None:
    md = tiny_librispeech.workdir / "data" / "manifests"
    for (part, utt), (reason, action) in tiny_librispeech.expected.items():
        rows = [r for r in read_tsv(md / f"filter_report_{part}.tsv") if r["utt_id"] == utt]
        assert [(r["reason"], r["action"]) for r in rows] == [(reason, action)], (part, utt, rows)
        assert rows[0]["detail"]
        # every dropped utterance is counted in the log with its reason
        assert f"[{part}] {reason}: " in tiny_librispeech.log


def test_nothing_dropped_silently(tiny_librispeech: Prepared) -> None:
    """Every transcript line ends up either in the fbank cuts or in a report as dropped."""
    ls = tiny_librispeech.workdir / "download" / "LibriSpeech"
    md = tiny_librispeech.workdir / "data" / "manifests"
    fb = tiny_librispeech.workdir / "data" / "fbank"
    for part in tiny_librispeech.good:
        listed = {line.split()[0] for t in (ls / part).rglob("*.trans.txt")
                  for line in t.read_text().splitlines() if line.strip()}
        kept = set(load_manifest(fb / f"librispeech_cuts_{part}.jsonl.gz").ids)
        dropped = {r["utt_id"] for r in read_tsv(md / f"filter_report_{part}.tsv")
                   if r["action"] == "dropped"}
        assert kept | dropped == listed, part
        assert not kept & dropped


def test_converted_audio_is_16k_mono(tiny_librispeech: Prepared) -> None:
    cuts = load_manifest(tiny_librispeech.workdir / "data/fbank/librispeech_cuts_train.jsonl.gz")
    c = cuts["19-198-0105"]
    assert c.recording.sampling_rate == 16000 and c.recording.num_channels == 1
    assert abs(c.duration - 2.5) < 0.01
    assert cuts["19-198-0104"].supervisions[0].text == "WELL THIS ONE IS LOWER CASE"


def test_bpe_model_and_tokens(tiny_librispeech: Prepared) -> None:
    lang = tiny_librispeech.workdir / "data" / "lang_bpe_500"
    sp = spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert sp.unk_id() == 2
    lines = (lang / "tokens.txt").read_text().splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert len(lines) == sp.get_piece_size() < 500  # clipped: the text is tiny
    assert "vocabulary clipped from 500 to" in tiny_librispeech.log
    ids = sp.encode("THE CAT SAT ON THE MAT")
    assert sp.unk_id() not in ids and sp.decode(ids) == "THE CAT SAT ON THE MAT"


def test_stage_log_lines_have_timestamps(tiny_librispeech: Prepared) -> None:
    import re

    for stage in range(1, 6):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d .*Stage {stage}:", tiny_librispeech.log, re.M)


def test_rerun_token_stage_is_idempotent(tiny_librispeech: Prepared) -> None:
    from prep_fixtures import run_prepare

    md = tiny_librispeech.workdir / "data" / "manifests"
    before = {p.name: p.read_text() for p in md.glob("filter_report_*.tsv")}
    run_prepare(tiny_librispeech.workdir, "--corpus", "librispeech", "--stage", "4", "--stop-stage", "4",
                "--nj", "1", "--vocab-sizes", "500")
    after = {p.name: p.read_text() for p in md.glob("filter_report_*.tsv")}
    assert before == after


def test_parse_options_rejects_unknown_and_bad_bool(tmp_path: Path) -> None:
    for args, msg in [(["--no-such-option", "1"], "unknown option '--no-such-option'"),
                      (["--speed-perturb", "yes"], "expects true or false"),
                      (["--corpus", "timit"], "--corpus must be librispeech or synthetic")]:
        p = subprocess.run(["bash", str(PREPARE), *args, "--stage", "9"], cwd=tmp_path,
                           capture_output=True, text=True)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr)


def test_parse_options_sets_variables(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text(f'foo_bar=1\nflag=false\n. {RECIPE}/local/parse_options.sh\necho "$foo_bar $flag $*"\n')
    p = subprocess.run(["bash", str(script), "--foo-bar", "two words", "--flag=true", "rest"],
                       capture_output=True, text=True)
    assert p.stdout.strip() == "two words true rest", p.stderr
