"""Tests for icefall_spkd.synthetic_corpus on a tiny corpus (a few dozen utterances).

The corpus is built once per module (about 5 s with 2 workers); a second build
with the same seed checks determinism, re-runs check resumability.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import soundfile as sf

from icefall_spkd import synthetic_corpus as sc
from icefall_spkd.text import normalize_text

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("flite", "espeak-ng", "text2wave", "sox")),
    reason="needs the Debian TTS tools (scripts/setup.sh installs them)",
)

TINY = dict(train_hours=0.02, dev_utts=8, test_utts=8, seed=42, nj=2)
ID_RE = re.compile(r"^(\d+)-(\d+)-(\d{4})$")


def _build(root: Path, **overrides) -> Tuple[dict, Path, Path]:
    kwargs = {**TINY, **overrides}
    stats = sc.build_synthetic_corpus(root / "audio", root / "manifests", **kwargs)
    return stats, root / "audio", root / "manifests"


def _load(manifest_dir: Path, split: str):
    from lhotse import load_manifest

    recs = load_manifest(manifest_dir / f"librispeech_recordings_{split}.jsonl.gz")
    sups = load_manifest(manifest_dir / f"librispeech_supervisions_{split}.jsonl.gz")
    return recs, sups


def _summary(manifest_dir: Path) -> Dict[str, List[tuple]]:
    """(id, text, speaker, duration) per split: what determinism must preserve."""
    out = {}
    for split in sc.SPLITS:
        recs, sups = _load(manifest_dir, split)
        durations = {r.id: r.duration for r in recs}
        out[split] = sorted((s.id, s.text, s.speaker, durations[s.recording_id]) for s in sups)
    return out


def _md5s(audio_dir: Path) -> Dict[str, str]:
    return {
        str(p.relative_to(audio_dir)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(audio_dir.rglob("*.flac"))
        if not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Tuple[dict, Path, Path]:
    return _build(tmp_path_factory.mktemp("corpus_a"))


def test_every_split_present_with_stats(corpus) -> None:
    stats, _, manifests = corpus
    for split in sc.SPLITS:
        recs, sups = _load(manifests, split)
        assert len(recs) == len(sups) > 0
        assert stats[split]["utterances"] == len(sups)
        assert stats[split]["failed"] == 0
        assert stats[split]["hours"] == pytest.approx(
            sum(r.duration for r in recs) / 3600, abs=1e-3
        )
    assert stats["dev"]["utterances"] == stats["test-clean"]["utterances"] == 8
    assert 0.01 < stats["train"]["hours"] < 0.04  # planned for 0.02 h


def test_sentences_disjoint_across_splits(corpus) -> None:
    _, _, manifests = corpus
    texts = {split: {s.text for s in _load(manifests, split)[1]} for split in sc.SPLITS}
    for i, a in enumerate(sc.SPLITS):
        for b in sc.SPLITS[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)


def test_voice_holdout(corpus) -> None:
    _, _, manifests = corpus
    speakers = {split: {s.speaker for s in _load(manifests, split)[1]} for split in sc.SPLITS}
    assert not speakers["test-other"] & (
        speakers["train"] | speakers["dev"] | speakers["test-clean"]
    )
    assert speakers["test-clean"] <= speakers["train"]
    assert speakers["dev"] <= speakers["train"]
    held = {str(v.speaker) for v in sc.voice_catalogue(42) if v.held_out}
    assert speakers["test-other"] <= held


def test_ids_text_and_supervisions(corpus) -> None:
    _, _, manifests = corpus
    for split in sc.SPLITS:
        recs, sups = _load(manifests, split)
        for s in sups:
            m = ID_RE.match(s.id)
            assert m, s.id
            assert m.group(1) == s.speaker
            assert int(m.group(2)) // 1000 == sc.SPLIT_CODES[split]
            assert s.recording_id == s.id and s.start == 0
            assert s.duration == pytest.approx(recs[s.id].duration)
            assert s.language == "English"
            assert s.text == normalize_text(s.text) and 5 <= len(s.text.split()) <= 25


def test_audio_matches_manifest(corpus) -> None:
    _, _, manifests = corpus
    for split in sc.SPLITS:
        recs, _ = _load(manifests, split)
        for r in recs:
            audio, sr = sf.read(r.sources[0].source)
            assert sr == r.sampling_rate == 16000
            assert audio.ndim == 1 and r.num_channels == 1
            assert len(audio) / sr == pytest.approx(r.duration, abs=1e-3)
            assert 0.01 < abs(audio).max() <= 1.0


def test_librispeech_layout(corpus) -> None:
    _, audio, manifests = corpus
    _, sups = _load(manifests, "test-clean")
    s = next(iter(sups))
    spk, chapter, _ = s.id.split("-")
    chapter_dir = audio / "test-clean" / spk / chapter
    assert (chapter_dir / f"{s.id}.flac").is_file()
    trans = (chapter_dir / f"{spk}-{chapter}.trans.txt").read_text().splitlines()
    assert f"{s.id} {s.text}" in trans
    assert (audio / "SPEAKERS.TXT").is_file()


def test_deterministic_given_seed(corpus, tmp_path) -> None:
    _, audio_a, manifests_a = corpus
    _, audio_b, manifests_b = _build(tmp_path)
    assert _summary(manifests_a) == _summary(manifests_b)
    assert _md5s(audio_a) == _md5s(audio_b)


def test_resumable(corpus) -> None:
    stats, audio, manifests = corpus
    before = _summary(manifests)
    rerun, _, _ = _build(audio.parent)
    assert rerun["total"]["reused"] == stats["total"]["utterances"]
    # Damage two files: a truncated one and a missing one are regenerated.
    flacs = sorted(p for p in audio.rglob("*.flac") if not p.name.startswith("."))
    flacs[0].write_bytes(flacs[0].read_bytes()[:100])
    flacs[1].unlink()
    rerun, _, _ = _build(audio.parent)
    assert rerun["total"]["reused"] == stats["total"]["utterances"] - 2
    assert _summary(manifests) == before


def test_plans_for_other_seed_differ_and_stay_disjoint() -> None:
    sentences = sc.load_sentences()
    voices = sc.voice_catalogue(7)
    plans = sc.plan_corpus(sentences, voices, train_hours=2.0, dev_utts=50, test_utts=50, seed=7)
    by_split: Dict[str, set] = {s: set() for s in sc.SPLITS}
    for p in plans:
        by_split[p.split].add(p.text)
    assert sum(map(len, by_split.values())) == len(plans)  # no sentence twice
    assert len({p.utt_id for p in plans}) == len(plans)
    other = sc.plan_corpus(sentences, voices, 2.0, 50, 50, seed=8)
    assert [p.text for p in plans if p.split == "dev"] != [
        p.text for p in other if p.split == "dev"
    ]


def test_tts_failures_are_logged_and_left_out(tmp_path, monkeypatch, caplog) -> None:
    real = sc._tts_command

    def broken_festival(voice, text_file, wav):
        return ["false"] if voice.engine == "festival" else real(voice, text_file, wav)

    monkeypatch.setattr(sc, "_tts_command", broken_festival)
    with caplog.at_level(logging.WARNING, logger=sc.__name__):
        stats, audio, manifests = _build(tmp_path, train_hours=0.01, dev_utts=3, test_utts=3, nj=1)
    failed_lines = (audio / "failed_utterances.txt").read_text().splitlines()
    assert stats["total"]["failed"] == len(failed_lines) > 0
    failed_ids = {line.split("\t")[0] for line in failed_lines}
    assert all("festival" in line for line in failed_lines)
    for utt_id in failed_ids:
        assert utt_id in caplog.text
    kept = {s.id for split in sc.SPLITS for s in _load(manifests, split)[1]}
    assert kept and not kept & failed_ids


def test_files_from_another_recipe_are_not_reused(corpus, monkeypatch) -> None:
    _, audio, manifests = corpus
    voices = sc.voice_catalogue(TINY["seed"])
    args = {k: TINY[k] for k in ("train_hours", "dev_utts", "test_utts", "seed")}
    plan = sc.plan_corpus(sc.load_sentences(), voices, **args)[0]
    recs, _ = _load(manifests, plan.split)
    path = audio / plan.relpath
    assert sc._check_audio(path, plan) == pytest.approx(recs[plan.utt_id].duration)
    with pytest.raises(RuntimeError, match="different recipe"):
        sc._check_audio(path, replace(plan, rate=plan.rate + 0.01))
    monkeypatch.setattr(sc, "AUDIO_RECIPE_VERSION", sc.AUDIO_RECIPE_VERSION + 1)
    with pytest.raises(RuntimeError, match="different recipe"):
        sc._check_audio(path, plan)


def test_a_second_build_into_the_same_directory_is_refused(tmp_path):
    """Two builders in one corpus_dir would delete each other's files: refuse clearly."""
    import fcntl

    from icefall_spkd.synthetic_corpus import build_synthetic_corpus

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    with open(corpus_dir / ".build.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        with pytest.raises(RuntimeError, match="another synthetic-corpus build is running"):
            build_synthetic_corpus(corpus_dir, tmp_path / "manifests", train_hours=0.02)
