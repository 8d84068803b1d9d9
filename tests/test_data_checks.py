"""Unit tests of icefall_spkd.data_checks: each bad input -> reason + action."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from prep_fixtures import tone

from icefall_spkd import data_checks as dc


def _rec(tmp: Path, name: str, dur: float = 2.0, sr: int = 16000, channels: int = 1) -> Recording:
    path = tmp / f"{name}.flac"
    sf.write(str(path), tone(dur, sr, channels), sr)
    return Recording.from_file(path, recording_id=name)


def _sup(rec_id: str, text, dur: float = 2.0) -> SupervisionSegment:
    return SupervisionSegment(id=rec_id, recording_id=rec_id, start=0.0, duration=dur, channel=0, text=text)


def _validate(tmp: Path, recs, sups, **kw):
    return dc.validate_part(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups),
                            converted_dir=tmp / "conv", **kw)


def _by_id(issues):
    return {i.utt_id: (i.reason, i.action) for i in issues}


def test_text_checks() -> None:
    assert dc.check_text("HELLO WORLD") == ("HELLO WORLD", None)
    assert dc.check_text("")[1].reason == dc.EMPTY_TRANSCRIPT
    assert dc.check_text(None)[1].reason == dc.EMPTY_TRANSCRIPT
    assert dc.check_text("   ")[1].reason == dc.EMPTY_TRANSCRIPT
    assert dc.check_text("!!! ???")[1].reason == dc.NON_TEXT_TRANSCRIPT
    assert dc.check_text("\u4f60\u597d")[1].reason == dc.NON_TEXT_TRANSCRIPT
    norm, issue = dc.check_text("Hello, world!")
    assert norm == "HELLO WORLD" and (issue.reason, issue.action) == (dc.TEXT_NORMALIZED, dc.NORMALIZED)


def test_validate_part_cases(tmp_path: Path) -> None:
    good = _rec(tmp_path, "good")
    missing = _rec(tmp_path, "missing")
    (tmp_path / "missing.flac").unlink()
    truncated = _rec(tmp_path, "trunc", dur=3.0)
    data = (tmp_path / "trunc.flac").read_bytes()
    (tmp_path / "trunc.flac").write_bytes(data[: len(data) // 3])
    stereo = _rec(tmp_path, "stereo", sr=22050, channels=2)
    dense = _rec(tmp_path, "dense", dur=0.5)
    orphan = _rec(tmp_path, "orphan")
    recs = [good, missing, truncated, stereo, dense, orphan]
    sups = [_sup("good", "HELLO WORLD"), _sup("missing", "HELLO"), _sup("trunc", "HELLO", 3.0),
            _sup("stereo", "HELLO THERE"), _sup("dense", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", 0.5),
            _sup("ghost", "NO RECORDING")]
    cuts, issues = _validate(tmp_path, recs, sups)
    got = _by_id(issues)
    assert got["missing"] == (dc.MISSING_AUDIO, dc.DROPPED)
    assert got["trunc"] == (dc.UNREADABLE_AUDIO, dc.DROPPED)
    assert got["stereo"] == (dc.DOWNMIXED, dc.CONVERTED)
    assert got["dense"] == (dc.TOO_MANY_CHARS_PER_SEC, dc.DROPPED)
    assert got["orphan"] == (dc.NO_TRANSCRIPT, dc.DROPPED)
    assert got["ghost"] == (dc.MISSING_AUDIO, dc.DROPPED)
    assert "good" not in got
    assert sorted(cuts.ids) == ["good", "stereo"]
    st = cuts["stereo"]
    assert st.sampling_rate == 16000 and st.recording.num_channels == 1
    assert st.load_audio().shape == (1, 32000)


def test_header_only_check_misses_truncation(tmp_path: Path) -> None:
    """full_read=False is cheaper but only catches missing files / bad headers."""
    rec = _rec(tmp_path, "t", dur=3.0)
    data = (tmp_path / "t.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(b"garbage" + data[50:])
    assert dc.check_audio(rec, full_read=False)[0] == dc.UNREADABLE_AUDIO
    assert dc.check_audio(rec, full_read=True)[0] == dc.UNREADABLE_AUDIO


def test_resample_only(tmp_path: Path) -> None:
    rec = _rec(tmp_path, "r8k", sr=8000)
    cuts, issues = _validate(tmp_path, [rec], [_sup("r8k", "HELLO")])
    assert _by_id(issues) == {"r8k": (dc.RESAMPLED, dc.CONVERTED)}
    assert cuts["r8k"].recording.sampling_rate == 16000


def test_parallel_audio_check(tmp_path: Path) -> None:
    recs = [_rec(tmp_path, f"u{i}", dur=0.5) for i in range(4)]
    (tmp_path / "u2.flac").unlink()
    assert dc.check_recordings(recs, num_jobs=2) .keys() == {"u2"}


class _FakeSp:
    """Character-level tokenizer over A-I and space; anything else is <unk>=2."""

    def encode(self, texts):
        vocab = {c: i + 3 for i, c in enumerate(" ABCDEFGHI")}
        return [[vocab.get(c, 2) for c in t] for t in texts]


def test_check_tokens(tmp_path: Path) -> None:
    recs = [_rec(tmp_path, "ok", 2.0), _rec(tmp_path, "unk", 2.0), _rec(tmp_path, "long", 0.5)]
    sups = [_sup("ok", "ABC"), _sup("unk", "ABZ"), _sup("long", "ABCDEFGHI ABCDE", 0.5)]
    cuts, _ = _validate(tmp_path, recs, sups, max_chars_per_sec=100)
    sp = _FakeSp()
    kept, issues = dc.check_tokens(cuts, sp.encode, unk_id=2, drop=True)
    assert sorted(kept.ids) == ["ok"]
    got = _by_id(issues)
    assert got == {"unk": (dc.UNK_TOKEN, dc.DROPPED), "long": (dc.MORE_TOKENS_THAN_FRAMES, dc.DROPPED)}
    assert "Z" in next(i.detail for i in issues if i.utt_id == "unk")
    kept, issues = dc.check_tokens(cuts, sp.encode, unk_id=2, drop=False)
    assert len(kept) == 3 and {i.action for i in issues} == {dc.KEPT}
    # 0.5 s = 50 frames -> 11 after subsampling; x1.1 speed -> 45 frames -> 10
    assert dc.subsampled_frames(50) == 11 and dc.subsampled_frames(45) == 10
    assert dc.subsampled_frames(3) == 0


def test_report_roundtrip_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "r.tsv"
    a = dc.Issue("u1", dc.EMPTY_TRANSCRIPT, dc.DROPPED, "x\ty")
    b = dc.Issue("u2", dc.UNK_TOKEN, dc.KEPT, "Q")
    dc.write_report(path, [a, b])
    assert path.read_text().splitlines()[0] == "utt_id\treason\taction\tdetail"
    assert [i.utt_id for i in dc.read_report(path)] == ["u1", "u2"]
    c = dc.Issue("u3", dc.UNK_TOKEN, dc.KEPT, "Z")
    dc.write_report(path, [c], replace_reasons=dc.TOKEN_REASONS)
    assert [i.utt_id for i in dc.read_report(path)] == ["u1", "u3"]


@pytest.mark.parametrize("dur,text,ok", [(1.0, "HELLO", True), (0.1, "HELLO WORLD", False)])
def test_letters_per_second(dur: float, text: str, ok: bool) -> None:
    assert (dc.letters_per_second(text, dur) <= 30) == ok
    assert dc.letters_per_second("A", 0.0) == np.inf


def test_write_if_changed_keeps_an_identical_manifest(tmp_path):
    """Unchanged cuts leave the file (and its mtime) alone; changed cuts replace it."""
    import os

    from lhotse import CutSet, MonoCut

    from icefall_spkd.data_checks import write_if_changed

    def cuts(duration: float) -> CutSet:
        return CutSet.from_cuts(
            [MonoCut(id=f"c{i}", start=0.0, duration=duration, channel=0) for i in range(3)]
        )

    path = tmp_path / "cuts.jsonl.gz"
    assert write_if_changed(cuts(1.0), path)
    os.utime(path, (1_000_000, 1_000_000))
    assert not write_if_changed(cuts(1.0), path)
    assert path.stat().st_mtime == 1_000_000
    assert write_if_changed(cuts(2.0), path)
    assert path.stat().st_mtime > 1_000_000
    assert [c.duration for c in CutSet.from_file(path)] == [2.0, 2.0, 2.0]
    assert not list(tmp_path.glob(".*tmp*"))
