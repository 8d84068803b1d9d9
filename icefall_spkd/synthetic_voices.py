"""The voices of the synthetic corpus (:mod:`icefall_spkd.synthetic_corpus`).

Every installed voice of three Debian TTS engines is a "speaker": the
``flite`` and ``festival`` voices by name, and ``espeak-ng`` as pairs of an
English accent and a voice variant. Some voices are held out of training
(:data:`HELD_OUT`): test-other is read by them alone, so it measures unseen
voices. :func:`voice_catalogue` lists the voices with their speaker ids and
held-out flags; :func:`pick_voice` draws one for an utterance.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from icefall_spkd.synthetic_audio import Voice

FLITE_VOICES = ("rms", "awb", "kal16", "slt", "kal")  # awb_time only speaks clock times
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-us-nyc",
    "en-029",
    "en-gb-x-gbcwmd",
)
# espeak-ng variants that sound like a (robotic) human; whisper, croak,
# Demonic and the like are left out.
ESPEAK_VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 adam Alex Andy anika aunty belinda benjamin boris "
    "david ed edward Gene grandma grandpa iven john klatt linda max Michael Mike norbert paul "
    "pedro quincy rob robert shelby steph travis victor zac"
).split()
# Voices used only by test-other: one flite voice, one festival voice and
# two whole espeak-ng accents (whose variants no other accent uses).
HELD_OUT = {"flite": ("awb",), "festival": ("ked_diphone",), "espeak": ("en-029", "en-gb-x-gbcwmd")}
ENGINE_WEIGHTS = {"flite": 0.4, "festival": 0.3, "espeak": 0.3}


def _flite_available() -> List[str]:
    if shutil.which("flite") is None:
        return []
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return out.replace("Voices available:", "").split()


def _festival_available(name: str) -> bool:
    if shutil.which("text2wave") is None:
        return False
    return any(Path("/usr/share/festival/voices").glob(f"*/{name}"))


def voice_catalogue(
    seed: int = 42,
    espeak_variants_per_accent: int = 3,
    espeak_seen_variants_per_accent: Optional[int] = None,
) -> List[Voice]:
    """All voices installed here, with their speaker ids and held-out flags.

    espeak-ng voices are accent+variant pairs; each accent gets its own
    ``espeak_variants_per_accent`` variants (chosen by ``seed``, disjoint
    across accents), so held-out accents share no variant with seen ones.

    ``espeak_seen_variants_per_accent`` (default: the same number) gives the
    seen accents more voices: the variants no accent took are dealt to the
    seen accents in turn until each has that many. The held-out accents keep
    the variants they get without it, so test-other's voices (and, for the
    same seed, its utterances) do not change with it.

    Raises:
      ValueError: more variants asked for than ESPEAK_VARIANTS holds.
    """
    k = espeak_variants_per_accent
    m = k if espeak_seen_variants_per_accent is None else espeak_seen_variants_per_accent
    seen_accents = [a for a in ESPEAK_ACCENTS if a not in HELD_OUT["espeak"]]
    needed = k * len(ESPEAK_ACCENTS) + max(0, m - k) * len(seen_accents)
    if k < 1 or m < k or needed > len(ESPEAK_VARIANTS):
        raise ValueError(
            f"espeak-ng voices: {k} variants per accent and {m} per seen accent need "
            f"{needed} of the {len(ESPEAK_VARIANTS)} variants (and 1 <= per accent <= per seen "
            "accent); ask for fewer"
        )
    voices: List[Voice] = []
    flite = set(_flite_available())
    for i, name in enumerate(FLITE_VOICES):
        if name in flite:
            voices.append(Voice("flite", name, 101 + i, name in HELD_OUT["flite"]))
    for i, name in enumerate(FESTIVAL_VOICES):
        if _festival_available(name):
            voices.append(Voice("festival", name, 201 + i, name in HELD_OUT["festival"]))
    if shutil.which("espeak-ng") is not None:
        variants = list(ESPEAK_VARIANTS)
        random.Random(f"{seed}-espeak-variants").shuffle(variants)
        per_accent = {a: variants[i * k : (i + 1) * k] for i, a in enumerate(ESPEAK_ACCENTS)}
        spare = iter(variants[k * len(ESPEAK_ACCENTS) :])
        for _ in range(m - k):
            for accent in seen_accents:
                per_accent[accent].append(next(spare))
        for a, accent in enumerate(ESPEAK_ACCENTS):
            for variant in per_accent[accent]:
                speaker = 3000 + 100 * a + ESPEAK_VARIANTS.index(variant)
                held = accent in HELD_OUT["espeak"]
                voices.append(Voice("espeak", f"{accent}+{variant}", speaker, held))
    return voices


def pick_voice(rng: random.Random, voices: Sequence[Voice]) -> Voice:
    """Choose an engine by ENGINE_WEIGHTS (among those present), then a voice."""
    by_engine: Dict[str, List[Voice]] = defaultdict(list)
    for v in voices:
        by_engine[v.engine].append(v)
    engines = sorted(by_engine)
    engine = rng.choices(engines, weights=[ENGINE_WEIGHTS[e] for e in engines])[0]
    return rng.choice(by_engine[engine])
