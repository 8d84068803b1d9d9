"""Reading everyday sound files for inference: any rate, any channel count, 16/24/32-bit.

:func:`read_audio` is the one place where ``pretrained.py`` and
``onnx_pretrained.py`` turn a file into the 16 kHz mono float samples in
``[-1, 1]`` that the feature front end (:mod:`icefall_spkd.features`) and
sherpa-onnx expect:

- decoding: :mod:`soundfile` (libsndfile: WAV, FLAC, OGG/Vorbis, AIFF, ...;
  8/16/24/32-bit integer or float samples), read as float32, so integer
  PCM is scaled by ``1 / 2**(bits-1)`` (16-bit ``x / 32768``, as lhotse and
  the sherpa-onnx examples do);
- channels: several channels are averaged into one (a plain down-mix);
- rate: anything other than ``target_rate`` is resampled with
  :func:`scipy.signal.resample_poly` (polyphase FIR, Kaiser window), with
  ``up/down`` the reduced ratio ``target_rate/rate``, so the output has
  exactly ``ceil(n * up / down)`` samples for ``n`` input samples.

Every failure is an :class:`AudioError` whose message is one line naming the
file and saying what to do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple, Union

import numpy as np

PathLike = Union[str, Path]

#: What users are told to run on a file we cannot use.
CONVERT_HINT = "convert it to 16 kHz mono WAV, e.g. 'sox {path} -r 16000 -c 1 -b 16 out.wav'"


class AudioError(ValueError):
    """A sound file that cannot be used; the message is one line naming the file."""


def _hint(path: PathLike) -> str:
    return CONVERT_HINT.format(path=path)


def load_audio_file(path: PathLike) -> Tuple[np.ndarray, int]:
    """Decode ``path`` as it is: ``(samples (num_samples, num_channels) float32, rate)``.

    Raises:
      AudioError: missing file, not a file, unreadable or unsupported format,
        no samples, or non-finite samples.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such sound file; check the path")
    if not p.is_file():
        raise AudioError(f"{p}: is not a file; give the path of a sound file")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        reason = " ".join(str(e).split()) or type(e).__name__
        raise AudioError(
            f"{p}: cannot decode it as audio ({reason}); {_hint(p)}"
        ) from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: the file holds no samples; give a non-empty recording")
    if not np.isfinite(data).all():
        raise AudioError(f"{p}: the file holds NaN or infinite samples; {_hint(p)}")
    return data, int(rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``(num_samples, num_channels)`` or ``(num_samples,)`` -> ``(num_samples,)`` channel mean."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample mono ``samples`` from ``rate`` to ``target_rate`` (polyphase, see module doc).

    Returns float32 with ``ceil(len(samples) * up / down)`` samples, where
    ``up/down`` is ``target_rate/rate`` in lowest terms; ``samples`` itself
    when the rates are equal.
    """
    if rate == target_rate:
        return samples
    if rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {rate} -> {target_rate}")
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target_rate))
    up, down = int(target_rate) // g, int(rate) // g
    out = resample_poly(samples.astype(np.float64), up, down)
    return out.astype(np.float32)


def read_audio(path: PathLike, target_rate: int = 16000) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``target_rate``, in ``[-1, 1]`` for integer PCM.

    Args:
      path: a sound file soundfile can decode.
      target_rate: output sampling rate (16 kHz for the models here).
    Returns:
      ``(num_samples,)`` float32.
    Raises:
      AudioError: a one-line reason naming ``path`` and what to do.
    """
    data, rate = load_audio_file(path)
    mono = to_mono(data)
    try:
        return resample(mono, rate, target_rate)
    except ImportError:
        raise AudioError(
            f"{path}: is {rate} Hz and resampling to {target_rate} Hz needs scipy "
            f"(run scripts/setup.sh or pip install scipy), or {_hint(path)}"
        ) from None


__all__ = ["AudioError", "load_audio_file", "read_audio", "resample", "to_mono"]
