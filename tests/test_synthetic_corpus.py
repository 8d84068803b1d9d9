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

from icefall_spkd import synthetic_audio as sa
from icefall_spkd import synthetic_corpus as sc
from icefall_spkd.synthetic_text import closed_vocabulary, load_sentences
from icefall_spkd.synthetic_voices import HELD_OUT
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
    for split in sc.ALL_SPLITS:
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
    for split in sc.ALL_SPLITS:
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
    texts = {split: {s.text for s in _load(manifests, split)[1]} for split in sc.ALL_SPLITS}
    for i, a in enumerate(sc.ALL_SPLITS):
        for b in sc.ALL_SPLITS[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)


def test_closed_vocabulary_splits(corpus) -> None:
    """Every closed-task sentence uses only VOCABULARY.TXT words; each test-open
    sentence has at least one word outside it."""
    _, audio, manifests = corpus
    vocab = set((audio / "VOCABULARY.TXT").read_text().split())
    assert 1000 <= len(vocab) <= 2000
    for split in sc.SPLITS:
        for s in _load(manifests, split)[1]:
            assert set(s.text.split()) <= vocab, (split, s.text)
    open_texts = [s.text for s in _load(manifests, sc.OPEN_TEST)[1]]
    assert open_texts and all(set(t.split()) - vocab for t in open_texts)


def test_closed_vocabulary_selection() -> None:
    sentences = [
        "THE CAT SAT ON THE MAT",  # all common
        "THE DOG SAT ON THE MAT",
        "A ZEBRA SAT ON THE MAT",  # ZEBRA and A are rare
        "THE CAT",  # too short
    ]
    cv = closed_vocabulary(sentences, vocab_words=6, min_words=3, max_words=10)
    # counts: THE 7, SAT 3, ON 3, MAT 3, CAT 2, DOG 1, A 1, ZEBRA 1 -> the 6 commonest
    # are THE SAT ON MAT CAT and (alphabetically first of the ties at 1) A.
    assert cv.sentences == ["THE CAT SAT ON THE MAT"]
    assert cv.others == ["A ZEBRA SAT ON THE MAT", "THE DOG SAT ON THE MAT"]
    assert cv.words == frozenset({"THE", "CAT", "SAT", "ON", "MAT"})


def test_train_degradation_share_and_test_other_all_degraded() -> None:
    sentences = closed_vocabulary(load_sentences(min_words=4), 2000).sentences
    voices = sc.voice_catalogue(7)
    plans = sc.plan_corpus(sentences, voices, 2.0, 50, 50, seed=7, train_degraded_fraction=0.3)
    train = [p for p in plans if p.split == "train"]
    share = sum(p.degradation is not None for p in train) / len(train)
    assert abs(share - 0.3) < 0.05, share
    assert all(p.degradation is not None for p in plans if p.split == "test-other")
    assert all(p.degradation is None for p in plans if p.split in ("dev", "test-clean"))
    clean = sc.plan_corpus(sentences, voices, 2.0, 50, 50, seed=7)
    assert all(p.degradation is None for p in clean if p.split == "train")


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
    for split in sc.ALL_SPLITS:
        recs, sups = _load(manifests, split)
        for s in sups:
            m = ID_RE.match(s.id)
            assert m, s.id
            assert m.group(1) == s.speaker
            assert int(m.group(2)) // 1000 == sc.SPLIT_CODES[split]
            assert s.recording_id == s.id and s.start == 0
            assert s.duration == pytest.approx(recs[s.id].duration)
            assert s.language == "English"
            assert s.text == normalize_text(s.text) and 4 <= len(s.text.split()) <= 20


def test_audio_matches_manifest(corpus) -> None:
    _, _, manifests = corpus
    for split in sc.ALL_SPLITS:
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
    cv = closed_vocabulary(load_sentences(min_words=4), 2000)
    sentences = cv.sentences
    voices = sc.voice_catalogue(7)
    plans = sc.plan_corpus(
        sentences, voices, train_hours=2.0, dev_utts=50, test_utts=50, seed=7,
        open_sentences=cv.others,
    )  # fmt: skip
    by_split: Dict[str, set] = {s: set() for s in sc.ALL_SPLITS}
    for p in plans:
        by_split[p.split].add(p.text)
    # train reuses its own sentences with other voices; no sentence is in two splits
    assert sum(map(len, by_split.values())) == len({p.text for p in plans})
    assert len({p.utt_id for p in plans}) == len(plans)
    other = sc.plan_corpus(sentences, voices, 2.0, 50, 50, seed=8)
    assert [p.text for p in plans if p.split == "dev"] != [
        p.text for p in other if p.split == "dev"
    ]


def test_tts_failures_are_logged_and_left_out(tmp_path, monkeypatch, caplog) -> None:
    real = sa._tts_command

    def broken_festival(voice, text_file, wav):
        return ["false"] if voice.engine == "festival" else real(voice, text_file, wav)

    monkeypatch.setattr(sa, "_tts_command", broken_festival)
    monkeypatch.setattr(sa, "_festival_batch", lambda voice, plans, tmp: {})
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


def _festival_plans(n: int):
    voices = [v for v in sc.voice_catalogue(42) if v.engine == "festival" and not v.held_out]
    sentences = closed_vocabulary(load_sentences(min_words=4), 2000).sentences[:n]
    return [
        sa.UttPlan(f"201-1000-{i:04d}", "train", t, voices[0], 1.0, 1.0, 0.1, 0.1)
        for i, t in enumerate(sentences)
    ]


def test_festival_batch_matches_one_process_per_utterance(tmp_path, monkeypatch) -> None:
    """The batch (one festival process) gives the audio text2wave gives alone."""
    plans = _festival_plans(3)
    batch = sa.synthesize_batch(plans, tmp_path / "batch")
    monkeypatch.setattr(sa, "_festival_batch", lambda voice, plans, tmp: {})
    alone = sa.synthesize_batch(plans, tmp_path / "alone")
    for b, a in zip(batch, alone):
        assert b.error is None and a.error is None
        assert b.duration == pytest.approx(a.duration, rel=0.05)
        xb, _ = sf.read(tmp_path / "batch" / b.plan.relpath)
        xa, _ = sf.read(tmp_path / "alone" / a.plan.relpath)
        n = min(len(xa), len(xb))
        corr = float((xa[:n] * xb[:n]).sum() / ((xa[:n] ** 2).sum() * (xb[:n] ** 2).sum()) ** 0.5)
        assert corr > 0.9, corr


def test_utterances_a_festival_batch_missed_are_spoken_alone(tmp_path, monkeypatch) -> None:
    plans = _festival_plans(3)
    real = sa._festival_batch

    def drops_the_last(voice, group, tmp):
        made = real(voice, group, tmp)
        made.pop(group[-1].utt_id)
        return made

    monkeypatch.setattr(sa, "_festival_batch", drops_the_last)
    results = sa.synthesize_batch(plans, tmp_path)
    assert all(r.error is None and r.duration > 0.5 for r in results)


def test_files_from_another_recipe_are_not_reused(corpus, monkeypatch) -> None:
    _, audio, manifests = corpus
    _, sups = _load(manifests, "test-clean")
    recs, _ = _load(manifests, "test-clean")
    sup = next(iter(sups))
    spk, chapter, _ = sup.id.split("-")
    voice = next(v for v in sc.voice_catalogue(TINY["seed"]) if str(v.speaker) == spk)
    # Rebuild the plan from the planner (the same call build_synthetic_corpus makes).
    cv = closed_vocabulary(load_sentences(min_words=4), 2000)
    args = {k: TINY[k] for k in ("train_hours", "dev_utts", "test_utts", "seed")}
    plans = sc.plan_corpus(
        cv.sentences, sc.voice_catalogue(TINY["seed"]), **args,
        open_sentences=cv.others, train_degraded_fraction=0.3,
    )  # fmt: skip
    plan = next(p for p in plans if p.utt_id == sup.id)
    assert plan.voice == voice and plan.text == sup.text
    path = audio / plan.relpath
    assert sa.check_audio(path, plan) == pytest.approx(recs[plan.utt_id].duration)
    with pytest.raises(RuntimeError, match="different recipe"):
        sa.check_audio(path, replace(plan, rate=plan.rate + 0.01))
    monkeypatch.setattr(sa, "AUDIO_RECIPE_VERSION", sa.AUDIO_RECIPE_VERSION + 1)
    with pytest.raises(RuntimeError, match="different recipe"):
        sa.check_audio(path, plan)


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


def test_more_seen_espeak_variants_keep_the_held_out_voices() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    base = sc.voice_catalogue(42)
    more = sc.voice_catalogue(42, espeak_seen_variants_per_accent=6)
    held = lambda vs: sorted(v.key for v in vs if v.held_out)  # noqa: E731
    assert held(more) == held(base)
    espeak = [v for v in more if v.engine == "espeak"]
    per_accent: dict = {}
    for v in espeak:
        accent, variant = v.name.split("+")
        per_accent.setdefault(accent, []).append(variant)
    for accent, variants in per_accent.items():
        assert len(variants) == (3 if accent in HELD_OUT["espeak"] else 6), accent
    variants = [v for vs in per_accent.values() for v in vs]
    assert len(variants) == len(set(variants))  # no variant in two accents
    assert len({v.speaker for v in more}) == len(more)
    # every voice of the default catalogue keeps its speaker id
    assert {(v.key, v.speaker) for v in base} <= {(v.key, v.speaker) for v in more}
    # test-other is read by the same voices, so it is the same split
    sentences = closed_vocabulary(load_sentences(min_words=4), 2000).sentences
    plans = [sc.plan_corpus(sentences, vs, 0.2, 20, 20, seed=42) for vs in (base, more)]
    other = [[p for p in ps if p.split == "test-other"] for ps in plans]
    assert other[0] == other[1]
    with pytest.raises(ValueError, match="variants"):
        sc.voice_catalogue(42, espeak_seen_variants_per_accent=7)
