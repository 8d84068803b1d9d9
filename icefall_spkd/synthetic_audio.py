"""Audio for the synthetic corpus: one utterance plan in, one checked FLAC file out.

A plan (:class:`UttPlan`) fixes everything about an utterance: text, voice,
speaking rate, pitch, silence padding and, for degraded utterances, reverb and
noise. :func:`synthesize_batch` turns plans into 16 kHz mono 16-bit FLAC files:

1. text-to-speech with ``flite``, ``espeak-ng`` or ``festival``. Festival
   spends about a second starting up and loading a voice, several times what
   it spends on a sentence, so the plans of one festival voice are spoken by
   ONE ``festival -b`` process (a Scheme script that synthesises and saves each
   utterance in turn); an utterance the batch did not produce is retried alone
   with ``text2wave``. flite and espeak-ng start in milliseconds and run once
   per utterance.
2. ``sox``: pitch (``speed``), net rate (``tempo``), resampling to 16 kHz,
   padding, reverb for degraded plans, normalisation;
3. a white noise floor at -70 dBFS under every utterance (no digital
   silence) and, for degraded plans, noise from a ``sox synth`` bank at the
   planned SNR;
4. a FLAC file written atomically, whose comment tag holds a hash of the
   recipe; it is read back and checked (:func:`check_audio`).

A file that already exists, reads back and was made from the same recipe is
reused, so an interrupted build resumes. Nothing raises: each plan gets an
:class:`UttResult` with its duration or the reason it failed.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import soundfile as sf

__all__ = [
    "SAMPLE_RATE",
    "NOISE_KINDS",
    "Voice",
    "Degradation",
    "UttPlan",
    "UttResult",
    "check_audio",
    "synthesize_utterance",
    "synthesize_batch",
    "ensure_noise_banks",
]

SAMPLE_RATE = 16000
NOISE_FLOOR_DBFS = -70.0  # RMS of white noise under every utterance: no digital silence
NOISE_KINDS = ("whitenoise", "pinknoise", "brownnoise")
NOISE_BANK_SECONDS = 60
TTS_TIMEOUT_S = 60
# Bump when the audio processing changes, so resumed builds remake old files.
# 3: festival speaks through one batch process (utt.synth + utt.save.wave).
AUDIO_RECIPE_VERSION = 3


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


def ensure_noise_banks(corpus_dir: Path) -> None:
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


def check_audio(path: Path, plan: UttPlan) -> float:
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


def _synthesize_to(
    plan: UttPlan, out: Path, corpus_dir: Path, spoken: Optional[str] = None
) -> None:
    """TTS -> sox (prosody, 16 kHz, pads, reverb) -> noise -> FLAC ``out`` (written atomically).

    ``spoken``: the raw TTS wav when it was already made (a festival batch).
    """
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        text_file, raw_wav = os.path.join(tmp, "text.txt"), os.path.join(tmp, "tts.wav")
        if spoken is not None:
            raw_wav = spoken
        else:
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


def _festival_script(voice: Voice, jobs: Sequence[tuple]) -> str:
    """A Scheme script that speaks each ``(text, wav_path)`` of ``jobs`` with ``voice``.

    Texts are normalised transcripts (letters, apostrophes, spaces), so they
    need no escaping inside a Scheme string.
    """
    lines = [f"(voice_{voice.name})"]
    for text, wav in jobs:
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{wav}" \'riff)')
    return "\n".join(lines) + "\n"


def _festival_batch(voice: Voice, plans: Sequence[UttPlan], tmp: str) -> Dict[str, str]:
    """Speak ``plans`` in one ``festival -b`` run; return ``utt_id -> raw wav`` for those made."""
    jobs = [(p.text.lower() + ".", os.path.join(tmp, f"{p.utt_id}.raw.wav")) for p in plans]
    script = os.path.join(tmp, "batch.scm")
    Path(script).write_text(_festival_script(voice, jobs))
    try:
        subprocess.run(
            ["festival", "-b", script],
            capture_output=True,
            timeout=TTS_TIMEOUT_S + 5 * len(plans),
        )
    except subprocess.TimeoutExpired:
        pass  # whatever was written is used; the rest is retried alone
    return {
        p.utt_id: wav
        for p, (_, wav) in zip(plans, jobs)
        if os.path.isfile(wav) and os.path.getsize(wav) > 44
    }


def _reusable(plan: UttPlan, out: Path) -> Optional[UttResult]:
    """The result for an existing good file of this recipe, else None."""
    if out.is_file():
        try:
            return UttResult(plan, check_audio(out, plan), reused=True)
        except RuntimeError:
            return None
    return None


def _failure(plan: UttPlan, out: Path, e: Exception) -> UttResult:
    out.unlink(missing_ok=True)
    _partial_path(out).unlink(missing_ok=True)
    reason = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
    return UttResult(plan, None, error=reason)


def synthesize_utterance(plan: UttPlan, corpus_dir: Union[str, Path]) -> UttResult:
    """Make (or reuse) one utterance's FLAC file; never raises."""
    return synthesize_batch([plan], corpus_dir)[0]


def synthesize_batch(plans: Sequence[UttPlan], corpus_dir: Union[str, Path]) -> List[UttResult]:
    """Make (or reuse) the FLAC files of ``plans``; results in plan order; never raises.

    Festival plans of the same voice share one festival process; any plan
    it did not produce is spoken alone. Failures are returned in
    ``UttResult.error``.
    """
    corpus_dir = Path(corpus_dir)
    results: Dict[str, UttResult] = {}
    todo: List[UttPlan] = []
    for plan in plans:
        reused = _reusable(plan, corpus_dir / plan.relpath)
        if reused is not None:
            results[plan.utt_id] = reused
        else:
            todo.append(plan)
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        raw: Dict[str, str] = {}
        by_voice: Dict[Voice, List[UttPlan]] = {}
        for plan in todo:
            if plan.voice.engine == "festival" and shutil.which("festival"):
                by_voice.setdefault(plan.voice, []).append(plan)
        for voice, group in by_voice.items():
            raw.update(_festival_batch(voice, group, tmp))
        for plan in todo:
            out = corpus_dir / plan.relpath
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                _synthesize_to(plan, out, corpus_dir, raw.get(plan.utt_id))
                results[plan.utt_id] = UttResult(plan, check_audio(out, plan))
            except Exception as e:  # reported per utterance
                results[plan.utt_id] = _failure(plan, out, e)
    return [results[p.utt_id] for p in plans]
