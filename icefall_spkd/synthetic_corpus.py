"""An offline, LibriSpeech-shaped English speech corpus made with Debian TTS engines.

LibriSpeech cannot be downloaded on machines without internet access, so this
module synthesises a small stand-in with the text-to-speech engines Debian
ships (``flite``, ``festival``, ``espeak-ng``; see ``docs/OFFLINE.md`` in the
shared docs) and writes lhotse manifests with exactly LibriSpeech's names:
``librispeech_{recordings,supervisions}_<part>.jsonl.gz``.

Splits and what they measure:

* ``train``: about ``train_hours`` of audio from the *seen* voices.
* ``dev``: unseen sentences, seen voices, clean (model selection).
* ``test-clean``: unseen sentences, seen voices, clean.
* ``test-other``: unseen sentences, *held-out* voices (never in any other
  split), reverberation and pink/brown/white noise at a random SNR.

Text comes from Debian's fortune cookies, split into sentences, normalised
with :mod:`icefall_spkd.text`, filtered to clean 5-25-word sentences and
deduplicated; each sentence belongs to exactly one split. Each utterance gets
a voice, a speaking rate (0.85-1.2) and a pitch factor (0.85-1.15), applied
by ``sox`` (``speed`` + ``tempo``), which also resamples to 16 kHz mono, pads
0.05-0.3 s of silence at each end and, for test-other, adds reverb. A white
noise floor at -70 dBFS (so no frame is digital silence) and, for test-other,
noise from a ``sox synth`` noise bank at 10-25 dB SNR are added before the
audio is written as 16-bit FLAC.

Everything is a function of ``seed``: a second build with the same arguments
gives the same ids, texts and (byte-identical) audio. Each FLAC file carries a
hash of its recipe (text, voice, rate, pitch, noise) in its comment tag, so a
re-run reuses every file that already exists, reads back correctly and was
made from the same recipe, and regenerates the rest (resumable). An utterance
whose synthesis fails is logged with its id and reason, listed in
``<corpus_dir>/failed_utterances.txt`` and left out of the manifests.

Layout (LibriSpeech's)::

    <corpus_dir>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <corpus_dir>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <corpus_dir>/SPEAKERS.TXT         speaker id -> engine, voice, subset

Speaker ids encode voices: ``101``-``105`` flite, ``201``-``203`` festival,
``3AVV`` espeak-ng with accent index ``A`` and variant index ``VV``. Chapter
ids are ``<split code><chunk>`` (train 1xxx, dev 2xxx, test-clean 3xxx,
test-other 4xxx), so ids never collide across splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from tqdm import tqdm

from icefall_spkd.text import is_clean_sentence, normalize_text, split_sentences

__all__ = [
    "SPLITS",
    "Voice",
    "UttPlan",
    "voice_catalogue",
    "load_sentences",
    "plan_corpus",
    "synthesize_utterance",
    "build_synthetic_corpus",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test-clean", "test-other")
SPLIT_CODES = {"train": 1, "dev": 2, "test-clean": 3, "test-other": 4}
SAMPLE_RATE = 16000
FORTUNE_DIR = Path("/usr/share/games/fortunes")

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
# Seconds of audio per word at rate 1.0, engine silences included (measured on
# 200 fortune sentences); used only to decide how many sentences fill train_hours.
SECONDS_PER_WORD = {"flite": 0.32, "festival": 0.365, "espeak": 0.30}

RATE_RANGE = (0.85, 1.2)
PITCH_RANGE = (0.85, 1.15)
PAD_RANGE = (0.05, 0.3)  # seconds of silence added before and after speech
SNR_RANGE_DB = (10.0, 25.0)  # test-other noise, speech power over noise power
NOISE_FLOOR_DBFS = -70.0  # RMS of white noise under every utterance: no digital silence
NOISE_KINDS = ("whitenoise", "pinknoise", "brownnoise")
NOISE_BANK_SECONDS = 60
UTTS_PER_CHAPTER = 40
TTS_TIMEOUT_S = 60
# Bump when the audio processing changes, so resumed builds remake old files.
AUDIO_RECIPE_VERSION = 2


@dataclass(frozen=True)
class Voice:
    """One TTS voice, i.e. one "speaker" of the corpus."""

    engine: str  # "flite" | "festival" | "espeak"
    name: str  # the engine's voice name, e.g. "slt", "kal_diphone", "en-us+m3"
    speaker: int  # LibriSpeech-like speaker id, see the module docstring
    held_out: bool  # True: test-other only

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class Degradation:
    """Reverberation and additive noise for one test-other utterance."""

    reverberance: float  # sox reverb, 0-100 %
    hf_damping: float  # 0-100 %
    room_scale: float  # 0-100 %
    noise: str  # one of NOISE_KINDS
    noise_offset: float  # start in the noise bank, as a fraction of the free range
    snr_db: float


@dataclass(frozen=True)
class UttPlan:
    """Everything needed to synthesise one utterance (a pure function of it)."""

    utt_id: str
    split: str
    text: str  # normalised transcript, also what the TTS engine reads
    voice: Voice
    rate: float
    pitch: float
    pad_start: float
    pad_end: float
    degradation: Optional[Degradation] = None

    @property
    def relpath(self) -> str:
        spk, chapter, _ = self.utt_id.split("-")
        return f"{self.split}/{spk}/{chapter}/{self.utt_id}.flac"

    def fingerprint(self) -> str:
        """Hash of the recipe, stored in the FLAC comment to validate resumed files."""
        recipe = f"{AUDIO_RECIPE_VERSION} {replace(self, utt_id='', split='')!r}"
        return hashlib.sha1(recipe.encode()).hexdigest()[:16]


@dataclass
class UttResult:
    """What a worker reports for one utterance."""

    plan: UttPlan
    duration: Optional[float]  # None on failure
    error: Optional[str] = None
    reused: bool = False


# ---------------------------------------------------------------- voices


def _flite_available() -> List[str]:
    if shutil.which("flite") is None:
        return []
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return out.replace("Voices available:", "").split()


def _festival_available(name: str) -> bool:
    if shutil.which("text2wave") is None:
        return False
    return any(Path("/usr/share/festival/voices").glob(f"*/{name}"))


def voice_catalogue(seed: int = 42, espeak_variants_per_accent: int = 3) -> List[Voice]:
    """All voices installed here, with their speaker ids and held-out flags.

    espeak-ng voices are accent+variant pairs; each accent gets its own
    ``espeak_variants_per_accent`` variants (chosen by ``seed``, disjoint
    across accents), so held-out accents share no variant with seen ones.
    """
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
        k = espeak_variants_per_accent
        for a, accent in enumerate(ESPEAK_ACCENTS):
            for variant in variants[a * k : (a + 1) * k]:
                speaker = 3000 + 100 * a + ESPEAK_VARIANTS.index(variant)
                held = accent in HELD_OUT["espeak"]
                voices.append(Voice("espeak", f"{accent}+{variant}", speaker, held))
    return voices


def _pick_voice(rng: random.Random, voices: Sequence[Voice]) -> Voice:
    """Choose an engine by ENGINE_WEIGHTS (among those present), then a voice."""
    by_engine: Dict[str, List[Voice]] = defaultdict(list)
    for v in voices:
        by_engine[v.engine].append(v)
    engines = sorted(by_engine)
    engine = rng.choices(engines, weights=[ENGINE_WEIGHTS[e] for e in engines])[0]
    return rng.choice(by_engine[engine])


# ---------------------------------------------------------------- text


def _fortune_files(fortune_dir: Path) -> List[Path]:
    """Fortune text files: those with a ``.dat`` index next to them."""
    return sorted(p.with_suffix("") for p in fortune_dir.glob("*.dat"))


def _fortune_entries(path: Path) -> Iterable[str]:
    """Entries of one fortune file, without ``-- Author`` attribution lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for entry in text.split("\n%\n"):
        lines: List[str] = []
        for line in entry.splitlines():
            if line.strip().startswith("--") or line.strip() == "%":
                break
            lines.append(line)
        yield "\n".join(lines)


def load_sentences(
    fortune_dir: Union[str, Path] = FORTUNE_DIR, min_words: int = 5, max_words: int = 25
) -> List[str]:
    """Distinct clean normalised sentences from Debian's fortunes, sorted."""
    files = _fortune_files(Path(fortune_dir))
    if not files:
        raise FileNotFoundError(
            f"no fortune files under {fortune_dir}; apt-get install fortunes fortunes-min"
        )
    sentences = set()
    for path in files:
        for entry in _fortune_entries(path):
            for raw in split_sentences(entry):
                if is_clean_sentence(raw, min_words, max_words):
                    sentences.add(normalize_text(raw))
    return sorted(sentences)


# ---------------------------------------------------------------- planning


def _draw_utt(rng: random.Random, split: str, text: str, voices: Sequence[Voice]) -> UttPlan:
    """One utterance's voice and prosody; test-other also gets a degradation."""
    voice = _pick_voice(rng, voices)
    plan = UttPlan(
        utt_id="",
        split=split,
        text=text,
        voice=voice,
        rate=round(rng.uniform(*RATE_RANGE), 3),
        pitch=round(rng.uniform(*PITCH_RANGE), 3),
        pad_start=round(rng.uniform(*PAD_RANGE), 3),
        pad_end=round(rng.uniform(*PAD_RANGE), 3),
    )
    if split != "test-other":
        return plan
    degradation = Degradation(
        reverberance=round(rng.uniform(10, 70), 1),
        hf_damping=round(rng.uniform(20, 80), 1),
        room_scale=round(rng.uniform(20, 100), 1),
        noise=rng.choice(NOISE_KINDS),
        noise_offset=round(rng.random(), 4),
        snr_db=round(rng.uniform(*SNR_RANGE_DB), 1),
    )
    return replace(plan, degradation=degradation)


def _estimated_seconds(plan: UttPlan) -> float:
    words = len(plan.text.split())
    return words * SECONDS_PER_WORD[plan.voice.engine] / plan.rate + plan.pad_start + plan.pad_end


def _plan_train(
    rng: random.Random, pool: Sequence[str], voices: Sequence[Voice], hours: float
) -> List[UttPlan]:
    """Draw train utterances until their estimated duration reaches ``hours``.

    When the sentence pool runs out, it is reused with fresh voice draws
    (sentences stay disjoint from the other splits) and a warning is logged.
    """
    target = hours * 3600.0
    plans: List[UttPlan] = []
    total = 0.0
    rounds = 0
    while total < target and pool:
        for text in pool:
            plans.append(_draw_utt(rng, "train", text, voices))
            total += _estimated_seconds(plans[-1])
            if total >= target:
                break
        rounds += 1
    if rounds > 1:
        logger.warning(
            "train: %d sentences cannot fill %.2f h; each was used up to %d times with different voices",
            len(pool),
            hours,
            rounds,
        )
    return plans


def _assign_ids(plans: Sequence[UttPlan]) -> List[UttPlan]:
    """Give ``<speaker>-<chapter>-<utt>`` ids: per split and speaker, in plan
    order, chapters of UTTS_PER_CHAPTER utterances."""
    by_speaker: Dict[Tuple[str, int], List[UttPlan]] = defaultdict(list)
    for p in plans:
        by_speaker[(p.split, p.voice.speaker)].append(p)
    out: List[UttPlan] = []
    for (split, speaker), group in sorted(
        by_speaker.items(), key=lambda kv: (SPLITS.index(kv[0][0]), kv[0][1])
    ):
        for i, p in enumerate(group):
            chapter = SPLIT_CODES[split] * 1000 + i // UTTS_PER_CHAPTER
            out.append(replace(p, utt_id=f"{speaker}-{chapter}-{i % UTTS_PER_CHAPTER:04d}"))
    return out


def plan_corpus(
    sentences: Sequence[str],
    voices: Sequence[Voice],
    train_hours: float = 3.0,
    dev_utts: int = 200,
    test_utts: int = 200,
    seed: int = 42,
) -> List[UttPlan]:
    """Decide every utterance of every split (no audio is made here).

    Sentences are shuffled by ``seed``; the first ``dev_utts`` go to dev, the
    next ``test_utts`` to test-clean, the next ``test_utts`` to test-other and
    the rest to train. dev and test-clean voices are drawn from the voices
    that train actually uses; test-other voices from the held-out ones.
    """
    seen = [v for v in voices if not v.held_out]
    held = [v for v in voices if v.held_out]
    if not seen or not held:
        raise RuntimeError(f"need seen and held-out voices; found {[v.key for v in voices]}")
    if train_hours <= 0 or dev_utts < 0 or test_utts < 0:
        raise ValueError(f"bad sizes: {train_hours=} {dev_utts=} {test_utts=}")
    needed = dev_utts + 2 * test_utts + 1
    if len(sentences) < needed:
        raise ValueError(f"only {len(sentences)} sentences; dev+test need {needed - 1} plus train")
    order = list(sentences)
    random.Random(f"{seed}-sentences").shuffle(order)
    dev = order[:dev_utts]
    test_clean = order[dev_utts : dev_utts + test_utts]
    test_other = order[dev_utts + test_utts : needed - 1]
    rng = random.Random(f"{seed}-train")
    train = _plan_train(rng, order[needed - 1 :], seen, train_hours)
    train_voices = sorted({p.voice for p in train}, key=lambda v: v.speaker)
    plans = list(train)
    for split, texts, pool in (
        ("dev", dev, train_voices),
        ("test-clean", test_clean, train_voices),
        ("test-other", test_other, held),
    ):
        rng = random.Random(f"{seed}-{split}")
        plans += [_draw_utt(rng, split, t, pool) for t in texts]
    return _assign_ids(plans)


# ---------------------------------------------------------------- synthesis


def _tts_command(voice: Voice, text_file: str, wav: str) -> List[str]:
    if voice.engine == "flite":
        return ["flite", "-voice", voice.name, "-f", text_file, "-o", wav]
    if voice.engine == "festival":
        return ["text2wave", "-eval", f"(voice_{voice.name})", text_file, "-o", wav]
    if voice.engine == "espeak":
        return ["espeak-ng", "-v", voice.name, "-f", text_file, "-w", wav]
    raise ValueError(f"unknown engine {voice.engine}")


def _sox_effects(plan: UttPlan) -> List[str]:
    """Pitch by ``speed`` (resampling), then ``tempo`` so the net rate is
    ``plan.rate``; resample to 16 kHz; pad; reverb for test-other; normalise."""
    effects = ["speed", f"{plan.pitch:.4f}", "tempo", "-s", f"{plan.rate / plan.pitch:.4f}"]
    effects += ["rate", "-v", str(SAMPLE_RATE), "pad", f"{plan.pad_start}", f"{plan.pad_end}"]
    d = plan.degradation
    if d is not None:
        effects += ["reverb", f"{d.reverberance}", f"{d.hf_damping}", f"{d.room_scale}"]
    return effects + ["norm", "-3"]


def _run(cmd: List[str]) -> None:
    """Run a tool; raise RuntimeError with the tail of its stderr on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TTS_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{cmd[0]} timed out after {TTS_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {tail[0]}")


def _noise_bank_path(corpus_dir: Path, kind: str) -> Path:
    return corpus_dir / "noise" / f"{kind}.wav"


def _ensure_noise_banks(corpus_dir: Path) -> None:
    """Make one minute of each noise colour with ``sox -R`` (repeatable)."""
    for kind in NOISE_KINDS:
        path = _noise_bank_path(corpus_dir, kind)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.wav")
        cmd = ["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(tmp)]
        _run(cmd + ["synth", str(NOISE_BANK_SECONDS), kind, "norm", "-6"])
        os.replace(tmp, path)


def _add_noise(speech: np.ndarray, plan: UttPlan, corpus_dir: Path) -> np.ndarray:
    """Add the noise floor and, for test-other, a segment of a noise bank at
    the planned SNR (mean power over the whole utterance); keep peaks <= -3 dBFS."""
    rng = np.random.default_rng(int(plan.fingerprint(), 16))
    out = speech + rng.normal(0.0, 10 ** (NOISE_FLOOR_DBFS / 20), len(speech))
    d = plan.degradation
    if d is not None:
        bank, _ = sf.read(_noise_bank_path(corpus_dir, d.noise), dtype="float64")
        if len(bank) < len(speech):
            bank = np.tile(bank, math.ceil(len(speech) / len(bank)))
        start = int(d.noise_offset * (len(bank) - len(speech)))
        noise = bank[start : start + len(speech)]
        p_speech = float(np.mean(speech**2))
        p_noise = float(np.mean(noise**2)) or 1e-12
        out += noise * math.sqrt(p_speech / (p_noise * 10 ** (d.snr_db / 10)))
    peak = float(np.max(np.abs(out), initial=0.0))
    return out * (0.7 / peak) if peak > 0.7 else out


def _check_audio(path: Path, plan: UttPlan) -> float:
    """Read the file back; return its duration or raise RuntimeError saying why it is bad."""
    try:
        with sf.SoundFile(str(path)) as f:
            sr, channels, comment = f.samplerate, f.channels, f.comment
            audio = f.read(dtype="float32")
    except Exception as e:  # any read failure means "bad file"
        raise RuntimeError(f"unreadable audio: {e}") from e
    if sr != SAMPLE_RATE or channels != 1:
        raise RuntimeError(f"expected 16 kHz mono, got {sr} Hz x {channels}")
    if comment != plan.fingerprint():
        raise RuntimeError("made from a different recipe")
    duration = len(audio) / sr
    words = len(plan.text.split())
    speech = duration - plan.pad_start - plan.pad_end
    if not np.all(np.isfinite(audio)):
        raise RuntimeError("non-finite audio")
    if len(audio) == 0 or float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 3e-3:
        raise RuntimeError("silent audio")
    if speech < 0.1 * words:
        raise RuntimeError(f"audio too short: {speech:.2f} s of speech for {words} words")
    if speech > 1.5 * words + 3.0:
        raise RuntimeError(f"audio too long: {speech:.2f} s of speech for {words} words")
    return duration


def _partial_path(out: Path) -> Path:
    """Where ``out`` is written before being renamed into place."""
    return out.with_name(f".{out.stem}.tmp.flac")


def _synthesize_to(plan: UttPlan, out: Path, corpus_dir: Path) -> None:
    """TTS -> sox (prosody, 16 kHz, pads, reverb) -> noise -> FLAC ``out`` (written atomically)."""
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        text_file, raw_wav = os.path.join(tmp, "text.txt"), os.path.join(tmp, "tts.wav")
        Path(text_file).write_text(plan.text.lower() + ".\n")
        _run(_tts_command(plan.voice, text_file, raw_wav))
        if not os.path.isfile(raw_wav) or os.path.getsize(raw_wav) <= 44:
            raise RuntimeError(f"{plan.voice.engine} wrote no audio")
        processed = os.path.join(tmp, "processed.wav")
        sox = ["sox", "-R", "-D", raw_wav, "-c", "1", "-e", "floating-point", "-b", "32"]
        _run(sox + [processed] + _sox_effects(plan))
        speech, _ = sf.read(processed, dtype="float64")
        partial = _partial_path(out)
        with sf.SoundFile(str(partial), "w", SAMPLE_RATE, 1, format="FLAC", subtype="PCM_16") as f:
            f.comment = plan.fingerprint()
            f.write(_add_noise(speech, plan, corpus_dir))
        os.replace(partial, out)


def synthesize_utterance(plan: UttPlan, corpus_dir: Union[str, Path]) -> UttResult:
    """Make (or reuse) one utterance's FLAC file; never raises.

    An existing file is reused when it reads back as 16 kHz mono audio of a
    plausible length made from the same recipe. Otherwise it is synthesised;
    any failure is returned in ``UttResult.error``.
    """
    corpus_dir = Path(corpus_dir)
    out = corpus_dir / plan.relpath
    if out.is_file():
        try:
            return UttResult(plan, _check_audio(out, plan), reused=True)
        except RuntimeError:
            pass  # regenerate
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _synthesize_to(plan, out, corpus_dir)
        return UttResult(plan, _check_audio(out, plan))
    except Exception as e:  # reported per utterance, see build_synthetic_corpus
        out.unlink(missing_ok=True)
        _partial_path(out).unlink(missing_ok=True)
        reason = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        return UttResult(plan, None, error=reason)


def _synthesize_star(args: Tuple[UttPlan, str]) -> UttResult:
    return synthesize_utterance(*args)


def _synthesize_all(plans: Sequence[UttPlan], corpus_dir: Path, nj: int) -> List[UttResult]:
    """Synthesise in ``nj`` processes with a progress bar; results in plan order."""
    jobs = [(p, str(corpus_dir)) for p in plans]
    bar = tqdm(total=len(jobs), desc="Synthesising", unit="utt", dynamic_ncols=True)
    results: Dict[str, UttResult] = {}
    try:
        if nj <= 1:
            for job in jobs:
                r = _synthesize_star(job)
                results[r.plan.utt_id] = r
                bar.update()
        else:
            with multiprocessing.Pool(nj) as pool:
                for r in pool.imap_unordered(_synthesize_star, jobs, chunksize=4):
                    results[r.plan.utt_id] = r
                    bar.update()
    finally:
        bar.close()
    return [results[p.utt_id] for p in plans]


# ---------------------------------------------------------------- outputs


def _write_transcripts(results: Sequence[UttResult], corpus_dir: Path) -> None:
    """LibriSpeech's ``<speaker>-<chapter>.trans.txt`` files for the kept utterances."""
    chapters: Dict[Path, List[str]] = defaultdict(list)
    for r in results:
        if r.duration is not None:
            path = (corpus_dir / r.plan.relpath).parent
            chapters[path].append(f"{r.plan.utt_id} {r.plan.text}")
    for path, lines in chapters.items():
        spk, chapter = path.parent.name, path.name
        (path / f"{spk}-{chapter}.trans.txt").write_text("\n".join(sorted(lines)) + "\n")


def _write_speakers(voices: Sequence[Voice], plans: Sequence[UttPlan], corpus_dir: Path) -> None:
    """``SPEAKERS.TXT``: which voice each speaker id is and which splits use it."""
    splits: Dict[int, set] = defaultdict(set)
    for p in plans:
        splits[p.voice.speaker].add(p.split)
    lines = ["; ID | ENGINE | VOICE | HELD OUT | SUBSETS"]
    for v in sorted(voices, key=lambda v: v.speaker):
        subsets = ",".join(s for s in SPLITS if s in splits[v.speaker]) or "-"
        lines.append(
            f"{v.speaker:<5}| {v.engine:<9}| {v.name:<28}| {str(v.held_out):<9}| {subsets}"
        )
    (corpus_dir / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")


def _write_manifests(
    split: str, results: Sequence[UttResult], corpus_dir: Path, output_dir: Path
) -> None:
    """``librispeech_{recordings,supervisions}_<split>.jsonl.gz`` for the kept utterances."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.qa import fix_manifests, validate_recordings_and_supervisions

    recordings, supervisions = [], []
    for r in results:
        if r.duration is None:
            continue
        rec = Recording.from_file(corpus_dir / r.plan.relpath, recording_id=r.plan.utt_id)
        recordings.append(rec)
        supervisions.append(
            SupervisionSegment(
                id=r.plan.utt_id,
                recording_id=r.plan.utt_id,
                start=0.0,
                duration=rec.duration,
                channel=0,
                text=r.plan.text,
                language="English",
                speaker=str(r.plan.voice.speaker),
            )
        )
    recording_set, supervision_set = fix_manifests(
        RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    )
    validate_recordings_and_supervisions(recording_set, supervision_set)
    recording_set.to_file(output_dir / f"librispeech_recordings_{split}.jsonl.gz")
    supervision_set.to_file(output_dir / f"librispeech_supervisions_{split}.jsonl.gz")


def _split_stats(results: Sequence[UttResult]) -> Dict[str, float]:
    kept = [r for r in results if r.duration is not None]
    return {
        "utterances": len(kept),
        "hours": round(sum(r.duration for r in kept) / 3600.0, 4),
        "voices": len({r.plan.voice.speaker for r in kept}),
        "failed": len(results) - len(kept),
        "reused": sum(r.reused for r in kept),
    }


def _report_failures(results: Sequence[UttResult], corpus_dir: Path) -> None:
    """Log every failed utterance and list them in ``failed_utterances.txt``."""
    failed = [r for r in results if r.error is not None]
    for r in failed:
        logger.warning("utterance %s (%s) left out: %s", r.plan.utt_id, r.plan.voice.key, r.error)
    lines = [f"{r.plan.utt_id}\t{r.plan.voice.key}\t{r.error}" for r in failed]
    (corpus_dir / "failed_utterances.txt").write_text("".join(f"{line}\n" for line in lines))


def _print_summary(stats: Dict[str, Dict[str, float]], elapsed: float) -> None:
    print(f"{'split':<11} {'hours':>7} {'utts':>6} {'voices':>6} {'failed':>6} {'reused':>6}")
    for split in SPLITS:
        s = stats[split]
        print(
            f"{split:<11} {s['hours']:>7.3f} {s['utterances']:>6} {s['voices']:>6} {s['failed']:>6} {s['reused']:>6}"
        )
    print(f"built in {elapsed:.1f} s")


def build_synthetic_corpus(
    corpus_dir: Union[str, Path],
    output_dir: Union[str, Path],
    train_hours: float = 3.0,
    dev_utts: int = 200,
    test_utts: int = 200,
    seed: int = 42,
    nj: int = 2,
    fortune_dir: Union[str, Path] = FORTUNE_DIR,
    espeak_variants_per_accent: int = 3,
) -> Dict[str, Dict[str, float]]:
    """Synthesise the corpus into ``corpus_dir`` and write manifests to ``output_dir``.

    Args:
      corpus_dir: where the FLAC files (LibriSpeech layout) go.
      output_dir: where ``librispeech_{recordings,supervisions}_<split>.jsonl.gz`` go.
      train_hours: approximate train size (planned from estimated durations).
      dev_utts: utterances in dev; test_utts: in each of test-clean and test-other.
      seed: everything (sentences per split, voices, prosody, noise) follows it.
      nj: worker processes.
      fortune_dir: Debian fortunes directory (the text source).
      espeak_variants_per_accent: espeak-ng voices per accent.
    A tiny corpus for tests: ``train_hours=0.02, dev_utts=8, test_utts=8``.

    Returns:
      ``{split: {"utterances", "hours", "voices", "failed", "reused"}}`` for
      each of SPLITS, plus ``"total"`` with the same keys and
      ``"elapsed_s"``/``"sentences"`` (clean sentences available).
    """
    corpus_dir, output_dir = Path(corpus_dir), Path(output_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_build_lock(corpus_dir):
        return _build_locked(
            corpus_dir, output_dir, train_hours, dev_utts, test_utts, seed, nj,
            fortune_dir, espeak_variants_per_accent,
        )  # fmt: skip


@contextlib.contextmanager
def _exclusive_build_lock(corpus_dir: Path) -> Iterator[None]:
    """Refuse a second build into the same ``corpus_dir`` while one is running.

    Two builders would overwrite each other's temporary files and delete files
    the other has already listed. The lock is an ``flock`` on
    ``<corpus_dir>/.build.lock``, released by the kernel if the process dies.
    """
    import fcntl

    with open(corpus_dir / ".build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another synthetic-corpus build is running into {corpus_dir}; "
                "wait for it to finish (or stop it) and run again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_locked(
    corpus_dir: Path,
    output_dir: Path,
    train_hours: float,
    dev_utts: int,
    test_utts: int,
    seed: int,
    nj: int,
    fortune_dir: Union[str, Path],
    espeak_variants_per_accent: int,
) -> Dict[str, Dict[str, float]]:
    """The body of :func:`build_synthetic_corpus`, run under the build lock."""
    start = time.time()
    sentences = load_sentences(fortune_dir)
    voices = voice_catalogue(seed, espeak_variants_per_accent)
    plans = plan_corpus(sentences, voices, train_hours, dev_utts, test_utts, seed)
    logger.info(
        "%d clean sentences, %d voices, %d utterances planned",
        len(sentences),
        len(voices),
        len(plans),
    )
    _ensure_noise_banks(corpus_dir)
    results = _synthesize_all(plans, corpus_dir, nj)
    _report_failures(results, corpus_dir)
    _write_transcripts(results, corpus_dir)
    _write_speakers(voices, plans, corpus_dir)
    stats: Dict[str, Dict[str, float]] = {}
    for split in SPLITS:
        split_results = [r for r in results if r.plan.split == split]
        _write_manifests(split, split_results, corpus_dir, output_dir)
        stats[split] = _split_stats(split_results)
    stats["total"] = _split_stats(results)
    elapsed = time.time() - start
    stats["total"].update(elapsed_s=round(elapsed, 1), sentences=len(sentences))
    _print_summary(stats, elapsed)
    return stats
