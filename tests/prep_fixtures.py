"""Session fixtures for the data-preparation tests (imported by conftest.py).

* ``tiny_librispeech``: a LibriSpeech-shaped tree (sine + noise FLACs) with one
  utterance for each bad-input case, carried through prepare.sh stages 1-5.
* ``synthetic_prepared``: the mini synthetic TTS corpus carried through
  prepare.sh stages 0-5.

Both run prepare.sh in their own temporary recipe directory, so they never
touch ``egs/librispeech/ASR/data``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "librispeech" / "ASR"
PREPARE = RECIPE / "prepare.sh"

# (part, utt_id) -> (reason, action) that the report must show.
GOOD_TEXTS = [
    "THE CAT SAT ON THE MAT",
    "A BIRD IN THE HAND IS WORTH TWO IN THE BUSH",
    "WE WENT HOME AFTER THE RAIN STOPPED",
    "SHE SELLS SEA SHELLS BY THE SHORE",
    "THE OLD MAN WALKED SLOWLY DOWN THE ROAD",
    "IT WAS A BRIGHT COLD DAY IN APRIL",
]


@dataclass
class Prepared:
    """A recipe directory after prepare.sh ran in it."""

    workdir: Path
    log: str
    expected: Dict[Tuple[str, str], Tuple[str, str]] = field(default_factory=dict)
    good: Dict[str, List[str]] = field(default_factory=dict)


def tone(duration: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic sine-plus-noise signal (samples,) or (samples, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sr))) / sr
    f0 = 150 + 50 * (seed % 7)
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _write_part(root: Path, part: str, spk: str, chapter: str,
                utts: List[Tuple[str, str, float, dict]]) -> None:
    """Write ``<root>/<part>/<spk>/<chapter>/`` with FLACs and the .trans.txt.

    Each utt is ``(utt_suffix, transcript_line_text, duration, options)``;
    options: ``missing``, ``garbage``, ``sr``, ``channels``.
    """
    d = root / part / spk / chapter
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (suffix, text, dur, opt) in enumerate(utts):
        utt_id = f"{spk}-{chapter}-{suffix}"
        lines.append(f"{utt_id} {text}".rstrip())
        path = d / f"{utt_id}.flac"
        if opt.get("missing"):
            continue
        if opt.get("garbage"):
            path.write_bytes(b"this is not a flac file" * 20)
            continue
        sr = opt.get("sr", 16000)
        sf.write(str(path), tone(dur, sr, opt.get("channels", 1), seed=i), sr)
    (d / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def make_tiny_librispeech(root: Path) -> Tuple[Dict[Tuple[str, str], Tuple[str, str]], Dict[str, List[str]]]:
    """Create ``root/LibriSpeech/...``; return (expected issues, good ids per part)."""
    ls = root / "LibriSpeech"
    good = {p: [] for p in ["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"]}
    expected: Dict[Tuple[str, str], Tuple[str, str]] = {}

    train = [(f"{i:04d}", t, 2.5, {}) for i, t in enumerate(GOOD_TEXTS)]
    train += [
        ("0100", "THIS FILE WAS NEVER WRITTEN", 2.0, {"missing": True}),
        ("0101", "THIS FILE IS GARBAGE", 2.0, {"garbage": True}),
        ("0102", "", 2.0, {}),
        ("0103", "*** --- ...", 2.0, {}),
        ("0104", "well, this one is lower-case!", 2.5, {}),
        ("0105", "RECORDED AT A HIGHER RATE IN STEREO", 2.5, {"sr": 44100, "channels": 2}),
        ("0106", "A VERY LONG TRANSCRIPT THAT CANNOT POSSIBLY FIT IN HALF A SECOND", 0.5, {}),
    ]
    _write_part(ls, "train-clean-100", "19", "198", train)
    good["train-clean-100"] = [f"19-198-{i:04d}" for i in range(len(GOOD_TEXTS))] + ["19-198-0104", "19-198-0105"]
    expected.update({
        ("train-clean-100", "19-198-0100"): ("missing_audio", "dropped"),
        ("train-clean-100", "19-198-0101"): ("unreadable_audio", "dropped"),
        ("train-clean-100", "19-198-0102"): ("empty_transcript", "dropped"),
        ("train-clean-100", "19-198-0103"): ("non_text_transcript", "dropped"),
        ("train-clean-100", "19-198-0104"): ("text_normalized", "normalized"),
        ("train-clean-100", "19-198-0105"): ("downmixed", "converted"),
        ("train-clean-100", "19-198-0106"): ("too_many_chars_per_sec", "dropped"),
    })
    # dev: 16 one-letter words in 0.6 s (27 chars/s passes the density check)
    # but at least 16 BPE tokens > 13 encoder frames left after subsampling.
    _write_part(ls, "dev-clean", "84", "121", [
        ("0000", "THE CAT SAT ON THE MAT", 2.0, {}),
        ("0001", "T H E S A M O N R I W B D L K G", 0.6, {}),
    ])
    good["dev-clean"] = ["84-121-0000"]
    expected[("dev-clean", "84-121-0001")] = ("more_tokens_than_frames", "dropped")
    _write_part(ls, "dev-other", "85", "122", [("0000", "SHE WALKED HOME", 1.5, {})])
    good["dev-other"] = ["85-122-0000"]
    # test-clean: Q, X, Z and J never occur in the training text -> <unk>, kept.
    _write_part(ls, "test-clean", "61", "700", [
        ("0000", "THE OLD MAN SAT DOWN", 2.0, {}),
        ("0001", "QUIXOTIC JAZZ", 2.0, {}),
    ])
    good["test-clean"] = ["61-700-0000", "61-700-0001"]
    expected[("test-clean", "61-700-0001")] = ("unk_token", "kept")
    _write_part(ls, "test-other", "62", "701", [("0000", "THE RAIN STOPPED", 2.0, {})])
    good["test-other"] = ["62-701-0000"]
    return expected, good


def run_prepare(workdir: Path, *args: str, timeout: int = 600) -> str:
    """Run prepare.sh in ``workdir``; return its combined output (raise with it on failure)."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(PREPARE), *args], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"prepare.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_librispeech(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The tiny LibriSpeech tree through prepare.sh stages 1-5 (vocab 500, clipped)."""
    work = tmp_path_factory.mktemp("ls_recipe")
    expected, good = make_tiny_librispeech(work / "download")
    log = run_prepare(work, "--corpus", "librispeech", "--stage", "1", "--nj", "1",
                      "--vocab-sizes", "500")
    return Prepared(work, log, expected, good)


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The mini synthetic corpus (a few dozen utterances) through every stage."""
    if shutil.which("flite") is None or shutil.which("sox") is None:
        pytest.skip("flite/sox not installed: run scripts/setup.sh")
    if not (RECIPE / "local" / "prepare_synthetic.py").is_file():
        pytest.skip("local/prepare_synthetic.py is not written yet")
    work = tmp_path_factory.mktemp("syn_recipe")
    log = run_prepare(work, "--corpus", "synthetic", "--train-hours", "0.03", "--dev-utts", "6",
                      "--test-utts", "6", "--seed", "42", "--nj", "2", "--vocab-sizes", "60")
    return Prepared(work, log)
