"""Preparation-time checks that keep bad utterances out of training.

Every problem is reported per utterance id with a reason and the action
taken, written to ``data/manifests/filter_report_<part>.tsv`` and counted in
the log, so nothing is dropped silently and nothing fails later mid-epoch.

Two passes, because the second needs a BPE model trained on the output of
the first:

1. :func:`validate_part` (before BPE): audio that is missing, unreadable or
   empty; transcripts that are empty or contain no text (after
   :func:`icefall_spkd.text.normalize_text`); audio that is not 16 kHz mono
   (converted to a new 16 kHz mono FLAC, logged); transcripts with absurdly
   many characters per second of audio.
2. :func:`check_tokens` (after BPE): characters the tokenizer cannot
   represent (``<unk>`` in the encoding) and more tokens than encoder frames
   after subsampling (the pruned RNN-T loss emits at most one symbol per
   frame, so such an utterance cannot be aligned).

Actions: ``dropped``; ``converted`` (audio rewritten); ``normalized``
(transcript rewritten); ``kept`` (test sets keep token-level problems so
that WERs stay comparable; they are still reported).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSet
from lhotse.cut import Cut
from lhotse.utils import compute_num_frames, fastcopy

from icefall_spkd.text import normalize_text

TARGET_SAMPLING_RATE = 16000

# Reasons (the second column of a filter report).
MISSING_AUDIO = "missing_audio"
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_AUDIO = "empty_audio"
NO_TRANSCRIPT = "no_transcript"
EMPTY_TRANSCRIPT = "empty_transcript"
NON_TEXT_TRANSCRIPT = "non_text_transcript"
TEXT_NORMALIZED = "text_normalized"
RESAMPLED = "resampled"
DOWNMIXED = "downmixed"
TOO_MANY_CHARS_PER_SEC = "too_many_chars_per_sec"
UNSUPPORTED_CHARACTERS = "unsupported_characters"
UNK_TOKEN = "unk_token"
MORE_TOKENS_THAN_FRAMES = "more_tokens_than_frames"

#: Reasons produced by :func:`check_tokens` (replaced on a re-run of that pass).
TOKEN_REASONS = frozenset({UNK_TOKEN, MORE_TOKENS_THAN_FRAMES})

DROPPED, CONVERTED, NORMALIZED, KEPT = "dropped", "converted", "normalized", "kept"

REPORT_HEADER = ("utt_id", "reason", "action", "detail")


@dataclass(frozen=True)
class Issue:
    """One reported problem with one utterance."""

    utt_id: str
    reason: str
    action: str
    detail: str = ""


# ---------------------------------------------------------------- audio


def check_audio(recording: Recording, full_read: bool = True) -> Optional[Tuple[str, str]]:
    """Return ``(reason, detail)`` when a recording cannot be used, else None.

    Args:
      recording: the recording to check.
      full_read: decode the whole file (catches truncated/corrupt data, not
        only a bad header). Without it only existence and the header are checked.
    """
    for src in recording.sources:
        if src.type == "file" and not Path(src.source).is_file():
            return MISSING_AUDIO, f"no such file: {src.source}"
    if recording.num_samples <= 0:
        return EMPTY_AUDIO, "0 samples"
    try:
        if full_read:
            audio = recording.load_audio()
            if audio.size == 0:
                return EMPTY_AUDIO, "decoded 0 samples"
            if not np.isfinite(audio).all():
                return UNREADABLE_AUDIO, "audio contains NaN or Inf"
        else:
            import soundfile

            for src in recording.sources:
                if src.type == "file":
                    soundfile.info(src.source)
    except Exception as e:  # any decoder error means the file is unusable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return UNREADABLE_AUDIO, f"{type(e).__name__}: {msg}"[:300]
    return None


def _check_audio_star(args: Tuple[Recording, bool]) -> Optional[Tuple[str, str]]:
    return check_audio(*args)


def check_recordings(
    recordings: Sequence[Recording], full_read: bool = True, num_jobs: int = 1
) -> Dict[str, Tuple[str, str]]:
    """Check many recordings (in ``num_jobs`` processes); returns ``{rec_id: (reason, detail)}``."""
    jobs = [(r, full_read) for r in recordings]
    if num_jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_jobs, initializer=_single_thread) as ex:
            results = list(ex.map(_check_audio_star, jobs, chunksize=16))
    else:
        results = [_check_audio_star(j) for j in jobs]
    return {r.id: res for r, res in zip(recordings, results) if res is not None}


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def convert_to_16k_mono(recording: Recording, out_dir: Path) -> Tuple[Recording, str]:
    """Downmix to mono and resample to 16 kHz with lhotse; write ``out_dir/<id>.flac``.

    Returns the new recording and a description of what was done. lhotse's
    own lazy ``Recording.resample`` needs scipy or torchaudio at load time
    (neither is available here), so the converted audio is written once.
    """
    import soundfile
    import torch
    from lhotse.augmentation.torchaudio import get_or_create_resampler

    audio = recording.load_audio()  # (channels, samples)
    done = []
    if audio.shape[0] > 1:
        audio = audio.mean(axis=0, keepdims=True)
        done.append(f"downmixed {recording.num_channels} channels")
    if recording.sampling_rate != TARGET_SAMPLING_RATE:
        resampler = get_or_create_resampler(recording.sampling_rate, TARGET_SAMPLING_RATE)
        audio = resampler(torch.from_numpy(np.ascontiguousarray(audio))).numpy()
        done.append(f"resampled {recording.sampling_rate} Hz -> {TARGET_SAMPLING_RATE} Hz")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{recording.id}.flac"
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 1.0:  # FLAC is integer PCM: avoid wrap-around
        audio = audio / peak
        done.append(f"scaled by 1/{peak:.3f} to avoid clipping")
    soundfile.write(str(path), audio[0], TARGET_SAMPLING_RATE, subtype="PCM_16")
    return Recording.from_file(path, recording_id=recording.id), "; ".join(done)


# ---------------------------------------------------------------- text


def check_text(
    text: Optional[str], normalize: Callable[[str], str] = normalize_text
) -> Tuple[str, Optional[Issue]]:
    """Normalise a transcript. Returns ``(normalised_text, issue_or_None)``.

    ``normalize``: the corpus's normaliser (English: :func:`normalize_text`;
    AISHELL: :func:`icefall_spkd.text_zh.normalize_zh`); a ``ValueError``
    from it drops the utterance as ``unsupported_characters`` with its message.
    The issue's ``utt_id`` is left empty for the caller to fill in.
    An empty result means the utterance must be dropped.
    """
    if text is None or not str(text).strip():
        return "", Issue("", EMPTY_TRANSCRIPT, DROPPED, "transcript is empty")
    try:
        norm = normalize(str(text))
    except ValueError as e:
        return "", Issue("", UNSUPPORTED_CHARACTERS, DROPPED, str(e))
    if not norm:
        return "", Issue("", NON_TEXT_TRANSCRIPT, DROPPED, f"no words after normalisation: {text[:80]!r}")
    if norm != text:
        return norm, Issue("", TEXT_NORMALIZED, NORMALIZED, f"{text[:80]!r} -> {norm[:80]!r}")
    return norm, None


def letters_per_second(text: str, duration: float) -> float:
    """Non-space characters per second of audio (LibriSpeech: about 10-17)."""
    n = len(text.replace(" ", ""))
    return n / duration if duration > 0 else float("inf")


# ---------------------------------------------------------------- pass 1


def validate_part(
    recordings: RecordingSet,
    supervisions: SupervisionSet,
    converted_dir: Path,
    max_chars_per_sec: float = 30.0,
    full_read: bool = True,
    num_jobs: int = 1,
    normalize: Callable[[str], str] = normalize_text,
) -> Tuple[CutSet, List[Issue]]:
    """Check one corpus part; return the clean cuts (one per supervision) and the issues.

    Args:
      recordings, supervisions: the part's manifests.
      converted_dir: where audio converted to 16 kHz mono is written.
      max_chars_per_sec: transcripts denser than this (non-space characters
        per second) are dropped as mismatched with their audio.
      full_read: decode all audio (recommended; see :func:`check_audio`).
      num_jobs: processes for the audio check.
      normalize: the transcript normaliser (see :func:`check_text`).
    Returns:
      ``(cuts, issues)``; cut ids are the supervision (utterance) ids, each
      cut carries exactly one supervision whose text is normalised.
    """
    issues: List[Issue] = []
    sups_by_rec: Dict[str, list] = {}
    for s in supervisions:
        sups_by_rec.setdefault(s.recording_id, []).append(s)
    rec_ids = {r.id for r in recordings}
    for rid, sups in sups_by_rec.items():
        if rid not in rec_ids:
            for s in sups:
                issues.append(Issue(s.id, MISSING_AUDIO, DROPPED, f"recording {rid!r} not in manifest"))
    for r in recordings:
        if r.id not in sups_by_rec:
            issues.append(Issue(r.id, NO_TRANSCRIPT, DROPPED, "recording has no supervision"))

    usable = [r for r in recordings if r.id in sups_by_rec]
    bad_audio = check_recordings(usable, full_read=full_read, num_jobs=num_jobs)
    cuts: List[Cut] = []
    for rec in usable:
        sups = sups_by_rec[rec.id]
        if rec.id in bad_audio:
            reason, detail = bad_audio[rec.id]
            issues.extend(Issue(s.id, reason, DROPPED, detail) for s in sups)
            continue
        texts = {}
        for s in sups:
            norm, issue = check_text(s.text, normalize)
            if issue is not None:
                issues.append(dataclasses.replace(issue, utt_id=s.id))
            if not norm:
                continue
            cps = letters_per_second(norm, s.duration)
            if cps > max_chars_per_sec:
                issues.append(
                    Issue(s.id, TOO_MANY_CHARS_PER_SEC, DROPPED,
                          f"{cps:.1f} chars/s > {max_chars_per_sec} ({s.duration:.2f} s audio)")
                )
                continue
            texts[s.id] = norm
        if not texts:
            continue
        if rec.sampling_rate != TARGET_SAMPLING_RATE or rec.num_channels != 1:
            try:
                rec, what = convert_to_16k_mono(rec, converted_dir)
            except Exception as e:
                issues.extend(
                    Issue(s.id, UNREADABLE_AUDIO, DROPPED, f"conversion to 16 kHz mono failed: {e}")
                    for s in sups if s.id in texts
                )
                continue
            reason = DOWNMIXED if what.startswith("downmixed") else RESAMPLED
            issues.extend(Issue(s.id, reason, CONVERTED, what) for s in sups if s.id in texts)
        for s in sups:
            if s.id not in texts:
                continue
            start = max(0.0, s.start)
            duration = min(s.duration, rec.duration - start)
            sup = fastcopy(s, text=texts[s.id], start=0.0, duration=duration, channel=0)
            cuts.append(
                MonoCut(id=s.id, start=start, duration=duration, channel=0,
                        recording=rec, supervisions=[sup])
            )
    return CutSet.from_cuts(cuts), issues


# ---------------------------------------------------------------- pass 2


def subsampled_frames(num_frames: int) -> int:
    """Encoder output frames for icefall's Conv2dSubsampling (factor 4):
    ``((T - 7) // 2 + 1) // 2``."""
    return max(0, ((num_frames - 7) // 2 + 1) // 2)


def check_tokens(
    cuts: Iterable[Cut],
    encode: Callable[[List[str]], List[List[int]]],
    unk_id: int,
    drop: bool,
    max_speed_factor: float = 1.0,
    frame_shift: float = 0.01,
    model_name: str = "",
) -> Tuple[CutSet, List[Issue]]:
    """Token-level checks with a trained tokenizer.

    Args:
      cuts: cuts from :func:`validate_part` (one supervision each).
      encode: texts -> token ids (e.g. ``sp.encode``).
      unk_id: the tokenizer's ``<unk>`` id.
      drop: drop offending cuts (train/dev) or keep and report them (test).
      max_speed_factor: the fastest speed perturbation that will be applied
        (1.1 with ``--speed-perturb true``): frames are counted on the
        shortest version of the audio.
      frame_shift: feature frame shift in seconds.
      model_name: named in the detail column (e.g. ``lang_bpe_500``).
    Returns:
      ``(kept_cuts, issues)``.
    """
    action = DROPPED if drop else KEPT
    kept: List[Cut] = []
    issues: List[Issue] = []
    cuts = list(cuts)
    texts = [" ".join(s.text for s in c.supervisions) for c in cuts]
    all_ids = encode(texts) if texts else []
    tag = f" [{model_name}]" if model_name else ""
    for cut, text, ids in zip(cuts, texts, all_ids):
        bad = False
        if unk_id in ids:
            chars = sorted({ch for ch in text if ch != " " and unk_id in encode([ch])[0]})
            issues.append(Issue(cut.id, UNK_TOKEN, action,
                                f"characters not in the BPE vocabulary: {''.join(chars) or '?'}{tag}"))
            bad = True
        frames = compute_num_frames(cut.duration / max_speed_factor, frame_shift, TARGET_SAMPLING_RATE)
        t_sub = subsampled_frames(frames)
        if len(ids) > t_sub:
            issues.append(Issue(cut.id, MORE_TOKENS_THAN_FRAMES, action,
                                f"{len(ids)} tokens > {t_sub} frames after subsampling "
                                f"({cut.duration:.2f} s, speed x{max_speed_factor}){tag}"))
            bad = True
        if not (bad and drop):
            kept.append(cut)
    return CutSet.from_cuts(kept), issues


# ---------------------------------------------------------------- reports


def read_report(path: Path) -> List[Issue]:
    """Read a filter report written by :func:`write_report` (empty list if absent)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [Issue(*(r + [""] * (4 - len(r)))[:4]) for r in rows[1:] if r]


def write_report(path: Path, issues: Sequence[Issue], replace_reasons: Optional[Iterable[str]] = None) -> None:
    """Write ``utt_id, reason, action, detail`` rows (TSV with a header).

    With ``replace_reasons`` the existing report is kept except for rows with
    those reasons, which are replaced by ``issues`` (so a pass can be re-run).
    """
    rows: List[Issue] = []
    if replace_reasons is not None:
        drop = set(replace_reasons)
        rows = [i for i in read_report(path) if i.reason not in drop]
    rows.extend(issues)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(REPORT_HEADER)
        for i in rows:
            w.writerow([i.utt_id, i.reason, i.action, i.detail.replace("\t", " ").replace("\n", " ")])


def log_summary(part: str, issues: Sequence[Issue], total: int, kept: int) -> None:
    """Log one line per (reason, action) and the totals for a part."""
    counts = Counter((i.reason, i.action) for i in issues)
    for (reason, action), n in sorted(counts.items()):
        logging.info(f"[{part}] {reason}: {n} utterance(s) {action}")
    logging.info(f"[{part}] {kept} of {total} utterances kept")


def write_if_changed(cuts: CutSet, path: Path) -> bool:
    """Write ``cuts`` to ``path`` unless the file already holds the same cuts.

    Later stages (features) skip their work when their output is newer than
    their input; rewriting an unchanged manifest would force them to redo it.
    The comparison is on the decompressed JSON lines (gzip headers carry a
    timestamp). Returns True when the file was (re)written.
    """
    import gzip
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.jsonl.gz")
    cuts.to_file(tmp)
    if path.is_file():
        with gzip.open(path, "rb") as old, gzip.open(tmp, "rb") as new:
            if old.read() == new.read():
                tmp.unlink()
                logging.info(f"{path} unchanged: kept")
                return False
    os.replace(tmp, path)
    return True
