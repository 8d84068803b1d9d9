"""An offline, LibriSpeech-shaped English speech corpus made with Debian TTS engines.

LibriSpeech cannot be downloaded on machines without internet access, so this
module synthesises a small stand-in with the text-to-speech engines Debian
ships (``flite``, ``festival``, ``espeak-ng``; see ``docs/OFFLINE.md`` in the
shared docs) and writes lhotse manifests with exactly LibriSpeech's names:
``librispeech_{recordings,supervisions}_<part>.jsonl.gz``.

Two tasks (``task``), both from Debian's fortune cookies
(:mod:`icefall_spkd.synthetic_text`): ``closed`` (the default: sentences made
only of the 2,000 commonest words, in the manner of Resource Management, so
that models trained for an hour on a 2-core CPU can recognise them) and
``open`` (every clean sentence; open-vocabulary English).

Splits and what they measure:

* ``train``: about ``train_hours`` of audio from the *seen* voices; a share
  (``train_degraded_fraction``, 0.3 by default) gets the reverb and noise of
  test-other, so test-other's conditions are covered by training.
* ``dev``: unseen sentences, seen voices, clean (model selection).
* ``test-clean``: unseen sentences, seen voices, clean.
* ``test-other``: unseen sentences, *held-out* voices (never in any other
  split), reverberation and pink/brown/white noise at 10-25 dB SNR.
* ``test-open`` (closed task only): unseen open-vocabulary sentences (each
  has at least one word outside the closed vocabulary), seen voices, clean:
  the harder extra test.

Each sentence belongs to exactly one evaluation split (train sentences are
reused with other voices when they cannot fill ``train_hours``). Each
utterance gets a voice, a speaking rate (0.85-1.2) and a pitch factor
(0.85-1.15); the audio itself is made by :mod:`icefall_spkd.synthetic_audio`.

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
test-other 4xxx, test-open 5xxx; the optional probe splits of
:mod:`icefall_spkd.synthetic_probes` 6xxx and 7xxx), so ids never collide
across splits. The closed task also writes ``<corpus_dir>/VOCABULARY.TXT``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from icefall_spkd.synthetic_audio import (
    NOISE_KINDS,
    Degradation,
    UttPlan,
    UttResult,
    Voice,
    ensure_noise_banks,
    synthesize_batch,
    synthesize_utterance,
)
from icefall_spkd.synthetic_probes import PROBE_SPLITS, robustness_probe_plans
from icefall_spkd.synthetic_text import FORTUNE_DIR, closed_vocabulary, load_sentences
from icefall_spkd.synthetic_voices import pick_voice, voice_catalogue

__all__ = [
    "SPLITS",
    "TASKS",
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
# Only in the closed-vocabulary task: open-vocabulary sentences, seen voices, clean.
OPEN_TEST = "test-open"
ALL_SPLITS = SPLITS + (OPEN_TEST,)
SPLIT_CODES = {"train": 1, "dev": 2, "test-clean": 3, "test-other": 4, OPEN_TEST: 5}
TASKS = ("closed", "open")

# Seconds of audio per word at rate 1.0, engine silences included (measured on
# 200 fortune sentences); used only to decide how many sentences fill train_hours.
SECONDS_PER_WORD = {"flite": 0.32, "festival": 0.365, "espeak": 0.30}

RATE_RANGE = (0.85, 1.2)
PITCH_RANGE = (0.85, 1.15)
PAD_RANGE = (0.05, 0.3)  # seconds of silence added before and after speech
SNR_RANGE_DB = (10.0, 25.0)  # degraded utterances: speech power over noise power
UTTS_PER_CHAPTER = 40
# Plans handed to a worker at a time: festival speaks each voice's share of a
# chunk in one process, so bigger chunks start festival less often.
SYNTHESIS_CHUNK = 48


# ---------------------------------------------------------------- text


# ---------------------------------------------------------------- planning


def _draw_utt(
    rng: random.Random, split: str, text: str, voices: Sequence[Voice], degrade: bool
) -> UttPlan:
    """One utterance's voice and prosody, plus reverb and noise when ``degrade``."""
    voice = pick_voice(rng, voices)
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
    if not degrade:
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
    rng: random.Random,
    pool: Sequence[str],
    voices: Sequence[Voice],
    hours: float,
    degraded_fraction: float,
) -> List[UttPlan]:
    """Draw train utterances until their estimated duration reaches ``hours``.

    When the sentence pool runs out, it is reused with fresh voice draws
    (sentences stay disjoint from the other splits); the closed-vocabulary
    task does so by design (as Resource Management's speakers read the same
    sentences), the open one logs a warning. A share ``degraded_fraction`` of
    the utterances gets the reverb and noise that test-other has, so that
    test-other measures robustness the training data covers (its voices stay
    unseen).
    """
    target = hours * 3600.0
    plans: List[UttPlan] = []
    total = 0.0
    rounds = 0
    while total < target and pool:
        for text in pool:
            degrade = rng.random() < degraded_fraction
            plans.append(_draw_utt(rng, "train", text, voices, degrade))
            total += _estimated_seconds(plans[-1])
            if total >= target:
                break
        rounds += 1
    if rounds > 1:
        logger.info(
            "train: %d sentences fill %.2f h with each used up to %d times by different voices",
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
        by_speaker.items(), key=lambda kv: (ALL_SPLITS.index(kv[0][0]), kv[0][1])
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
    open_sentences: Sequence[str] = (),
    train_degraded_fraction: float = 0.0,
) -> List[UttPlan]:
    """Decide every utterance of every split (no audio is made here).

    Sentences are shuffled by ``seed``; the first ``dev_utts`` go to dev, the
    next ``test_utts`` to test-clean, the next ``test_utts`` to test-other and
    the rest to train. dev and test-clean voices are drawn from the voices
    that train actually uses; test-other voices from the held-out ones, with
    reverb and noise. When ``open_sentences`` is given (the closed-vocabulary
    task), ``test_utts`` of them make the extra split ``test-open`` (seen
    voices, clean); they must be disjoint from ``sentences``.
    """
    seen = [v for v in voices if not v.held_out]
    held = [v for v in voices if v.held_out]
    if not seen or not held:
        raise RuntimeError(f"need seen and held-out voices; found {[v.key for v in voices]}")
    if train_hours <= 0 or dev_utts < 0 or test_utts < 0:
        raise ValueError(f"bad sizes: {train_hours=} {dev_utts=} {test_utts=}")
    if not 0.0 <= train_degraded_fraction <= 1.0:
        raise ValueError(f"train_degraded_fraction must be in [0, 1], got {train_degraded_fraction}")
    needed = dev_utts + 2 * test_utts + 1
    if len(sentences) < needed:
        raise ValueError(f"only {len(sentences)} sentences; dev+test need {needed - 1} plus train")
    if open_sentences and len(open_sentences) < test_utts:
        raise ValueError(f"only {len(open_sentences)} open-vocabulary sentences for {test_utts}")
    if set(open_sentences) & set(sentences):
        raise ValueError("open_sentences must be disjoint from sentences")
    order = list(sentences)
    random.Random(f"{seed}-sentences").shuffle(order)
    dev = order[:dev_utts]
    test_clean = order[dev_utts : dev_utts + test_utts]
    test_other = order[dev_utts + test_utts : needed - 1]
    rng = random.Random(f"{seed}-train")
    train = _plan_train(rng, order[needed - 1 :], seen, train_hours, train_degraded_fraction)
    train_voices = sorted({p.voice for p in train}, key=lambda v: v.speaker)
    plans = list(train)
    evaluation = [
        ("dev", dev, train_voices, False),
        ("test-clean", test_clean, train_voices, False),
        ("test-other", test_other, held, True),
    ]
    if open_sentences:
        extra = list(open_sentences)
        random.Random(f"{seed}-{OPEN_TEST}").shuffle(extra)
        evaluation.append((OPEN_TEST, extra[:test_utts], train_voices, False))
    for split, texts, pool, degrade in evaluation:
        rng = random.Random(f"{seed}-{split}")
        plans += [_draw_utt(rng, split, t, pool, degrade) for t in texts]
    return _assign_ids(plans)


# ---------------------------------------------------------------- synthesis


def _synthesize_chunk(args: Tuple[List[UttPlan], str]) -> List[UttResult]:
    return synthesize_batch(*args)


def _chunks(plans: Sequence[UttPlan], size: int) -> List[List[UttPlan]]:
    """Chunks of ``size`` plans, festival plans sorted by voice within the plan
    order so that a chunk holds few festival voices (one process each)."""
    ordered = sorted(plans, key=lambda p: (p.voice.engine != "festival", p.voice.speaker))
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def _synthesize_all(plans: Sequence[UttPlan], corpus_dir: Path, nj: int) -> List[UttResult]:
    """Synthesise in ``nj`` processes with a progress bar; results in plan order."""
    jobs = [(chunk, str(corpus_dir)) for chunk in _chunks(plans, SYNTHESIS_CHUNK)]
    bar = tqdm(total=len(plans), desc="Synthesising", unit="utt", dynamic_ncols=True)
    results: Dict[str, UttResult] = {}
    try:
        if nj <= 1:
            outputs = map(_synthesize_chunk, jobs)
            for chunk_results in outputs:
                results.update((r.plan.utt_id, r) for r in chunk_results)
                bar.update(len(chunk_results))
        else:
            with multiprocessing.Pool(nj) as pool:
                for chunk_results in pool.imap_unordered(_synthesize_chunk, jobs):
                    results.update((r.plan.utt_id, r) for r in chunk_results)
                    bar.update(len(chunk_results))
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
        subsets = ",".join(s for s in ALL_SPLITS if s in splits[v.speaker]) or "-"
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
    print(f"{'split':<19} {'hours':>7} {'utts':>6} {'voices':>6} {'failed':>6} {'reused':>6}")
    for split in (s for s in ALL_SPLITS + PROBE_SPLITS if s in stats):
        s = stats[split]
        print(
            f"{split:<19} {s['hours']:>7.3f} {s['utterances']:>6} {s['voices']:>6} {s['failed']:>6} {s['reused']:>6}"
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
    task: str = "closed",
    vocab_words: int = 2000,
    train_degraded_fraction: float = 0.3,
    probe_splits: bool = False,
    espeak_seen_variants_per_accent: Optional[int] = None,
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
      espeak_seen_variants_per_accent: espeak-ng voices per seen accent (default:
        ``espeak_variants_per_accent``); more voices in train, dev and
        test-clean, the same held-out ones (:func:`voice_catalogue`).
      task: ``"closed"`` (sentences of the ``vocab_words`` commonest words, plus
        the extra split ``test-open``) or ``"open"`` (every clean sentence); see
        :mod:`icefall_spkd.synthetic_text`.
      vocab_words: size of the closed vocabulary.
      train_degraded_fraction: share of train utterances with test-other's
        reverb and noise.
      probe_splits: also make ``test-other-clean`` and ``test-clean-degraded``
        (:mod:`icefall_spkd.synthetic_probes`), which tell test-other's unseen
        voices from its reverb and noise.
    A tiny corpus for tests: ``train_hours=0.02, dev_utts=8, test_utts=8``.

    Returns:
      ``{split: {"utterances", "hours", "voices", "failed", "reused"}}`` for
      each split made (SPLITS, plus ``test-open`` for the closed task), plus ``"total"`` with the same keys and
      ``"elapsed_s"``/``"sentences"`` (clean sentences available).
    """
    corpus_dir, output_dir = Path(corpus_dir), Path(output_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_build_lock(corpus_dir):
        return _build_locked(
            corpus_dir, output_dir, train_hours, dev_utts, test_utts, seed, nj,
            fortune_dir, espeak_variants_per_accent, task, vocab_words, train_degraded_fraction,
            probe_splits, espeak_seen_variants_per_accent,
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
    task: str,
    vocab_words: int,
    train_degraded_fraction: float,
    probe_splits: bool,
    espeak_seen_variants_per_accent: Optional[int],
) -> Dict[str, Dict[str, float]]:
    """The body of :func:`build_synthetic_corpus`, run under the build lock."""
    start = time.time()
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    voices = voice_catalogue(seed, espeak_variants_per_accent, espeak_seen_variants_per_accent)
    open_sentences: List[str] = []
    if task == "closed":
        closed = closed_vocabulary(load_sentences(fortune_dir, min_words=4), vocab_words)
        sentences, open_sentences = closed.sentences, closed.others
        (corpus_dir / "VOCABULARY.TXT").write_text("".join(f"{w}\n" for w in sorted(closed.words)))
        logger.info("closed vocabulary: %d words, %d sentences", len(closed.words), len(sentences))
    else:
        sentences = load_sentences(fortune_dir)
    plans = plan_corpus(
        sentences, voices, train_hours, dev_utts, test_utts, seed,
        open_sentences=open_sentences, train_degraded_fraction=train_degraded_fraction,
    )  # fmt: skip
    if probe_splits:
        plans += robustness_probe_plans(plans)
    logger.info(
        "%d sentences, %d voices, %d utterances planned", len(sentences), len(voices), len(plans)
    )
    ensure_noise_banks(corpus_dir)
    results = _synthesize_all(plans, corpus_dir, nj)
    _report_failures(results, corpus_dir)
    _write_transcripts(results, corpus_dir)
    _write_speakers(voices, plans, corpus_dir)
    stats: Dict[str, Dict[str, float]] = {}
    for split in (s for s in ALL_SPLITS + PROBE_SPLITS if any(p.split == s for p in plans)):
        split_results = [r for r in results if r.plan.split == split]
        _write_manifests(split, split_results, corpus_dir, output_dir)
        stats[split] = _split_stats(split_results)
    stats["total"] = _split_stats(results)
    elapsed = time.time() - start
    stats["total"].update(elapsed_s=round(elapsed, 1), sentences=len(sentences))
    _print_summary(stats, elapsed)
    return stats
