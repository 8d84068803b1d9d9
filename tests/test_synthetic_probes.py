"""Tests for icefall_spkd.synthetic_probes: splits that change one factor of test-other.

The plan tests need no TTS tools; the build test synthesises a tiny corpus
with and without the probe splits (about 10 s with 2 workers).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from icefall_spkd import synthetic_corpus as sc
from icefall_spkd.synthetic_probes import PROBE_SPLITS, robustness_probe_plans
from icefall_spkd.synthetic_text import closed_vocabulary, load_sentences

OTHER_CLEAN, CLEAN_DEGRADED = PROBE_SPLITS


@pytest.fixture(scope="module")
def plans():
    sentences = closed_vocabulary(load_sentences(min_words=4), 2000).sentences
    voices = [
        sc.Voice("flite", "slt", 104, False),
        sc.Voice("flite", "awb", 102, True),
        sc.Voice("espeak", "en-us+m3", 3002, False),
        sc.Voice("espeak", "en-029+f1", 3608, True),
    ]
    # 30 test-clean against 20 test-other utterances: the degradations must cycle
    base = sc.plan_corpus(sentences, voices, 0.05, 10, 30, seed=3)
    other = [p for p in base if p.split == "test-other"][:20]
    return [p for p in base if p.split != "test-other"] + other


def _by_split(plans, split):
    return [p for p in plans if p.split == split]


def test_test_other_clean_is_test_other_without_degradation(plans) -> None:
    probes = robustness_probe_plans(plans)
    other, clean = _by_split(plans, "test-other"), _by_split(probes, OTHER_CLEAN)
    assert len(clean) == len(other)
    for src, probe in zip(other, clean):
        assert src.degradation is not None and probe.degradation is None
        assert probe.voice.held_out
        # everything else is the source utterance's
        assert replace(probe, utt_id="", split="") == replace(src, utt_id="", split="", degradation=None)


def test_test_clean_degraded_gets_test_other_degradations_in_order(plans) -> None:
    probes = robustness_probe_plans(plans)
    other = _by_split(plans, "test-other")
    clean, degraded = _by_split(plans, "test-clean"), _by_split(probes, CLEAN_DEGRADED)
    assert len(degraded) == len(clean) == 30 and len(other) == 20
    for i, (src, probe) in enumerate(zip(clean, degraded)):
        assert src.degradation is None and not probe.voice.held_out
        assert probe.degradation == other[i % 20].degradation
        assert replace(probe, utt_id="", split="", degradation=None) == replace(src, utt_id="", split="")


def test_probe_ids_are_unique_and_coded_by_split(plans) -> None:
    probes = robustness_probe_plans(plans)
    ids = [p.utt_id for p in plans + probes]
    assert len(set(ids)) == len(ids)
    sources = {"test-other": OTHER_CLEAN, "test-clean": CLEAN_DEGRADED}
    codes = {OTHER_CLEAN: 6, CLEAN_DEGRADED: 7}
    for src_split, probe_split in sources.items():
        for src, probe in zip(_by_split(plans, src_split), _by_split(probes, probe_split)):
            s_spk, s_ch, s_utt = src.utt_id.split("-")
            p_spk, p_ch, p_utt = probe.utt_id.split("-")
            assert (p_spk, p_utt) == (s_spk, s_utt)
            assert int(p_ch) // 1000 == codes[probe_split]
            assert int(p_ch) % 1000 == int(s_ch) % 1000
            assert probe.relpath.startswith(f"{probe_split}/")


def test_probes_need_both_source_splits(plans) -> None:
    with pytest.raises(ValueError, match="test-other and test-clean"):
        robustness_probe_plans([p for p in plans if p.split != "test-other"])
    broken = [replace(p, degradation=None) if p.split == "test-other" else p for p in plans]
    with pytest.raises(ValueError, match="no reverb/noise"):
        robustness_probe_plans(broken)


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("flite", "espeak-ng", "text2wave", "sox")),
    reason="needs the Debian TTS tools (scripts/setup.sh installs them)",
)
def test_build_with_probe_splits(tmp_path: Path) -> None:
    """The probe splits are made beside an unchanged corpus; their audio differs
    from their sources' only by the moved reverb and noise."""
    from lhotse import load_manifest

    tiny = dict(train_hours=0.01, dev_utts=4, test_utts=4, seed=42, nj=2)
    plain = sc.build_synthetic_corpus(tmp_path / "a", tmp_path / "ma", **tiny)
    probed = sc.build_synthetic_corpus(tmp_path / "b", tmp_path / "mb", probe_splits=True, **tiny)
    for split in sc.ALL_SPLITS:
        assert probed[split] == plain[split]
        a = load_manifest(tmp_path / "ma" / f"librispeech_supervisions_{split}.jsonl.gz")
        b = load_manifest(tmp_path / "mb" / f"librispeech_supervisions_{split}.jsonl.gz")
        assert [(s.id, s.text) for s in a] == [(s.id, s.text) for s in b]

    def audio(manifests: Path, split: str):
        recs = load_manifest(manifests / f"librispeech_recordings_{split}.jsonl.gz")
        sups = load_manifest(manifests / f"librispeech_supervisions_{split}.jsonl.gz")
        return {
            s.id.split("-")[0] + "-" + s.id.split("-")[2]: (s.text, sf.read(recs[s.id].sources[0].source)[0])
            for s in sups
        }

    mb = tmp_path / "mb"
    for src_split, probe_split in (("test-other", OTHER_CLEAN), ("test-clean", CLEAN_DEGRADED)):
        src, probe = audio(mb, src_split), audio(mb, probe_split)
        assert probed[probe_split]["utterances"] == len(probe) == len(src) == 4
        assert probe.keys() == src.keys()
        for key, (text, wav) in probe.items():
            assert text == src[key][0]
            other = src[key][1]
            n = min(len(wav), len(other))
            # same speech, different acoustics: correlated but not the same samples
            assert not np.allclose(wav[:n], other[:n], atol=1e-3)
    # the clean probe of a degraded utterance has less energy outside speech than
    # its source: compare the quietest 10 % of frames (noise floor)
    src, probe = audio(mb, "test-other"), audio(mb, OTHER_CLEAN)

    def floor(x: np.ndarray) -> float:
        frames = x[: len(x) // 400 * 400].reshape(-1, 400)
        energy = np.sort((frames**2).mean(axis=1))
        return float(energy[: max(1, len(energy) // 10)].mean())

    for key in probe:
        assert floor(probe[key][1]) < floor(src[key][1]), key
