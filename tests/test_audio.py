"""icefall_spkd.audio.read_audio on everyday files, checked against analytic signals.

Each file holds a known sine (written by soundfile at its own rate, channel
count and sample format); what comes back must be that sine at 16 kHz: the
exact length ``ceil(n * 16000 / rate)`` in lowest terms, the same frequency
(FFT peak), and the same waveform as ``A sin(2 pi f t)`` computed at 16 kHz
directly, away from the edges (where the resampling filter is cut off).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from icefall_spkd.audio import AudioError, read_audio

REPO = Path(__file__).resolve().parents[1]
F0 = 440.0
AMP = 0.5
DUR = 1.0


def _sine(rate: int, dur: float = DUR, f0: float = F0, amp: float = AMP) -> np.ndarray:
    t = np.arange(int(round(dur * rate))) / rate
    return amp * np.sin(2 * np.pi * f0 * t)


def _expected_len(n: int, rate: int, target: int = 16000) -> int:
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    return -(-n * up // down)  # ceil


def _peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize(
    "rate,subtype,channels,tol",
    [
        (16000, "PCM_16", 1, 1e-4),
        (8000, "PCM_16", 1, 2e-3),
        (22050, "PCM_16", 1, 2e-3),
        (44100, "PCM_16", 2, 2e-3),
        (48000, "PCM_24", 2, 2e-3),
        (44100, "PCM_24", 1, 2e-3),
        (48000, "FLOAT", 1, 2e-3),
    ],
)
def test_rates_channels_formats(tmp_path: Path, rate: int, subtype: str, channels: int, tol: float):
    x = _sine(rate)
    if channels == 2:
        # left = 1.5 x, right = 0.5 x: the mean of the two is x again.
        data = np.stack([1.5 * x, 0.5 * x], axis=1)
    else:
        data = x
    ext = "flac" if subtype == "PCM_24" and channels == 1 else "wav"
    path = tmp_path / f"sine_{rate}_{subtype}_{channels}.{ext}"
    sf.write(str(path), data, rate, subtype=subtype)

    y = read_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == _expected_len(len(x), rate)
    assert abs(_peak_hz(y) - F0) <= 16000 / len(y)
    ref = _sine(16000)[: len(y)]
    mid = slice(800, len(y) - 800)  # 50 ms from each edge
    err = np.max(np.abs(y[mid] - ref[mid]))
    assert err < tol, f"{path.name}: max error {err:.2e} against the analytic sine"


def test_24bit_keeps_its_precision(tmp_path: Path):
    """24-bit samples are not truncated to 16 bits on the way in."""
    x = _sine(16000, amp=0.9)
    p16, p24 = tmp_path / "a16.wav", tmp_path / "a24.wav"
    sf.write(str(p16), x, 16000, subtype="PCM_16")
    sf.write(str(p24), x, 16000, subtype="PCM_24")
    e16 = np.max(np.abs(read_audio(p16) - x))
    e24 = np.max(np.abs(read_audio(p24) - x))
    assert e16 > 5e-6  # 16-bit quantisation step is 3e-5
    assert e24 < 2e-7  # 24-bit step is 1.2e-7
    # The scale is x / 2**(bits-1): full-scale integers map to [-1, 1).
    assert np.max(np.abs(read_audio(p24))) <= 1.0


def test_stereo_is_the_channel_mean(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-0.4, 0.4, size=(4000, 2)).astype(np.float32)
    path = tmp_path / "st.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), data.mean(axis=1), atol=1e-7)


def _bad_files(tmp_path: Path) -> dict:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF-but-not-really" * 10)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "garbage": (garbage, "cannot decode"),
        "empty": (empty, "no samples"),
        "nan": (nan, "NaN"),
        "missing": (tmp_path / "missing.wav", "no such"),
        "folder": (folder, "not a file"),
    }


def test_unusable_files_give_one_line(tmp_path: Path):
    for name, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as ei:
            read_audio(path)
        msg = str(ei.value)
        assert "\n" not in msg, (name, msg)
        assert str(path) in msg and words in msg, (name, msg)


def test_pretrained_py_error_is_one_line(tmp_path: Path):
    """pretrained.py on an unusable file: one line naming it, no traceback."""
    import torch

    from icefall_spkd.models.presets import build_model

    garbage = _bad_files(tmp_path)["garbage"][0]
    script = REPO / "egs/librispeech/ASR/spkd_transducer/pretrained.py"
    # A small bpe model and an untrained tiny model are enough to read audio.
    import sentencepiece as spm

    (tmp_path / "t.txt").write_text("HELLO WORLD SPEECH MODEL TINY TEST DATA CAT DOG RUN\n" * 20)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "bpe"), model_type="unigram",
        vocab_size=30, user_defined_symbols=["<blk>", "<sos/eos>"], unk_id=2, bos_id=-1,
        eos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "bpe.model"))
    model = build_model(
        {"model_preset": "tiny", "encoder_dim": 16, "num_encoder_layers": 1, "num_heads": 2,
         "feedforward_dim": 16, "cnn_module_kernel": 3, "decoder_dim": 16, "joiner_dim": 16,
         "vocab_size": sp.get_piece_size()}
    )
    ckpt = tmp_path / "pretrained.pt"
    torch.save({"model": model.state_dict(), "params": dict(model.model_config)}, ckpt)
    args = [sys.executable, str(script), "--checkpoint", str(ckpt), "--bpe-model",
            str(tmp_path / "bpe.model")]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())))
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, cwd=REPO).stdout
    if "--tokens" in help_text:
        args += ["--tokens", str(tokens)]
    proc = subprocess.run([*args, str(garbage)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if str(garbage) in ln]
    assert len(err_lines) == 1 and "sox" in err_lines[0], proc.stderr[-3000:]
    # Everyday files go through: 44.1 kHz stereo 24-bit and 8 kHz mono.
    good = []
    for name, rate, ch, sub in (("a44k_st24.wav", 44100, 2, "PCM_24"), ("a8k.wav", 8000, 1, "PCM_16")):
        x = _sine(rate)
        sf.write(str(tmp_path / name), np.stack([x, x], 1) if ch == 2 else x, rate, subtype=sub)
        good.append(str(tmp_path / name))
    proc = subprocess.run([*args, *good], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(any(ln.startswith(g + ":") for ln in proc.stdout.splitlines()) for g in good), proc.stdout
