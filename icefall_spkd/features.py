"""Fbank feature extraction: one configuration, two interchangeable back-ends.

kaldifeat (through lhotse's :class:`~lhotse.KaldifeatFbank`) is used when it
imports; otherwise lhotse's pure-torch :class:`~lhotse.Fbank`.  Both are
configured from :data:`FBANK_OPTIONS` so that they produce the same numbers
(max abs difference well below 1e-3 on 16 kHz speech).  Note the defaults
that differ between the libraries and are therefore always set explicitly:
``high_freq`` (lhotse -400, kaldifeat 0), ``dither`` (kaldi 1.0) and
``snip_edges`` (kaldi True, which lhotse cannot use).

Agreement with sherpa-onnx (deployment). sherpa-onnx computes its features
with kaldi-native-fbank from float samples in ``[-1, 1]``
(``normalize_samples=True``), with its ``FeatureExtractorConfig`` defaults:
16 kHz, 80 bins, 25 ms / 10 ms frames, ``dither=0``, ``snip_edges=False``,
``low_freq=20``, ``high_freq=-400`` (Nyquist minus 400 Hz), ``povey``
window, ``preemph_coeff=0.97``, ``remove_dc_offset=True``,
``round_to_power_of_two=True``, power spectrum, log floor ``FLT_EPSILON``.
:data:`FBANK_OPTIONS` are exactly these, so training features and
sherpa-onnx's agree to float rounding: on tone-and-noise audio with
stretches of digital silence (where both floor at ``log(FLT_EPSILON) =
-15.94``), lhotse.Fbank against kaldi-native-fbank differs by 5e-6 on
average and 8e-4 at most, the largest gaps in near-empty bins (log energy
about -14); ``tests/test_onnx_export.py`` checks it for each installed
back end, and that kaldi's default ``high_freq=0`` would fail the check.
:func:`sherpa_fbank` is that front end, used by ``onnx_pretrained.py``.
Two things must hold on the input side too: samples scaled to ``[-1, 1]``
(16-bit PCM divided by 32768, as soundfile/lhotse read it) and sherpa-onnx
called with ``dither=0.0`` (its default).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
from lhotse import Fbank, FbankConfig
from lhotse.features.base import FeatureExtractor

#: The single source of truth for the 80-dim fbank used everywhere.
FBANK_OPTIONS: Dict[str, Any] = {
    "sampling_rate": 16000,
    "frame_length": 0.025,
    "frame_shift": 0.01,
    "dither": 0.0,
    "preemph_coeff": 0.97,
    "remove_dc_offset": True,
    "window_type": "povey",
    "round_to_power_of_two": True,
    "snip_edges": False,
    "low_freq": 20.0,
    "high_freq": -400.0,
    "num_filters": 80,
    "use_energy": False,
    "raw_energy": True,
}

FEATURE_DIM: int = FBANK_OPTIONS["num_filters"]


def kaldifeat_available() -> bool:
    """True when ``import kaldifeat`` works in this environment."""
    try:
        import kaldifeat  # noqa: F401
    except Exception:  # ImportError, or a broken build raising OSError
        return False
    return True


def lhotse_fbank(device: str = "cpu") -> Fbank:
    """lhotse's torch Fbank with :data:`FBANK_OPTIONS`."""
    return Fbank(FbankConfig(**FBANK_OPTIONS, device=device))


def kaldifeat_fbank(device: str = "cpu") -> FeatureExtractor:
    """lhotse's KaldifeatFbank with :data:`FBANK_OPTIONS` (needs kaldifeat)."""
    from lhotse import KaldifeatFbank, KaldifeatFbankConfig
    from lhotse.features.kaldifeat import KaldifeatFrameOptions, KaldifeatMelOptions

    o = FBANK_OPTIONS
    frame_opts = KaldifeatFrameOptions(
        sampling_rate=o["sampling_rate"],
        frame_shift=o["frame_shift"],
        frame_length=o["frame_length"],
        dither=o["dither"],
        preemph_coeff=o["preemph_coeff"],
        remove_dc_offset=o["remove_dc_offset"],
        window_type=o["window_type"],
        round_to_power_of_two=o["round_to_power_of_two"],
        snip_edges=o["snip_edges"],
    )
    mel_opts = KaldifeatMelOptions(
        num_bins=o["num_filters"], low_freq=o["low_freq"], high_freq=o["high_freq"]
    )
    return KaldifeatFbank(
        KaldifeatFbankConfig(
            frame_opts=frame_opts,
            mel_opts=mel_opts,
            use_energy=o["use_energy"],
            raw_energy=o["raw_energy"],
            device=device,
        )
    )


def sherpa_fbank(samples: Any, sampling_rate: int = 16000) -> Any:
    """``(T, 80)`` float32 numpy fbank of mono ``samples`` as sherpa-onnx computes it.

    kaldi-native-fbank (sherpa-onnx's own front end) configured from
    :data:`FBANK_OPTIONS`; ``samples`` are floats in ``[-1, 1]`` at
    ``sampling_rate`` (which must be :data:`FBANK_OPTIONS`' rate).
    """
    import kaldi_native_fbank as knf
    import numpy as np

    o = FBANK_OPTIONS
    if sampling_rate != o["sampling_rate"]:
        raise ValueError(f"sherpa_fbank needs {o['sampling_rate']} Hz samples, got {sampling_rate} Hz")
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = o["sampling_rate"]
    opts.frame_opts.frame_shift_ms = o["frame_shift"] * 1000.0
    opts.frame_opts.frame_length_ms = o["frame_length"] * 1000.0
    opts.frame_opts.dither = o["dither"]
    opts.frame_opts.preemph_coeff = o["preemph_coeff"]
    opts.frame_opts.remove_dc_offset = o["remove_dc_offset"]
    opts.frame_opts.window_type = o["window_type"]
    opts.frame_opts.round_to_power_of_two = o["round_to_power_of_two"]
    opts.frame_opts.snip_edges = o["snip_edges"]
    opts.mel_opts.num_bins = o["num_filters"]
    opts.mel_opts.low_freq = o["low_freq"]
    opts.mel_opts.high_freq = o["high_freq"]
    opts.use_energy = o["use_energy"]
    opts.raw_energy = o["raw_energy"]
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(o["sampling_rate"], np.ascontiguousarray(samples, dtype=np.float32))
    fbank.input_finished()
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, o["num_filters"]), dtype=np.float32)
    return np.stack([np.asarray(fbank.get_frame(i), dtype=np.float32) for i in range(n)])


def make_fbank_extractor(backend: str = "auto", device: str = "cpu") -> FeatureExtractor:
    """Return the 80-dim fbank extractor.

    Args:
      backend: ``"auto"`` (kaldifeat when it imports, else lhotse),
        ``"kaldifeat"`` or ``"lhotse"``.
      device: torch device for the computation.
    Raises:
      ValueError: unknown backend.
      RuntimeError: ``"kaldifeat"`` requested but not importable.
    """
    if backend not in ("auto", "kaldifeat", "lhotse"):
        raise ValueError(f"Unknown fbank backend {backend!r}; use auto, kaldifeat or lhotse")
    if backend == "lhotse" or (backend == "auto" and not kaldifeat_available()):
        if backend == "auto":
            logging.info("kaldifeat is not importable: using lhotse.Fbank (same numbers, slower)")
        return lhotse_fbank(device)
    if not kaldifeat_available():
        raise RuntimeError(
            "--extractor kaldifeat was requested but 'import kaldifeat' fails; "
            "build it with scripts/setup.sh or use --extractor lhotse"
        )
    return kaldifeat_fbank(device)


def set_single_thread() -> None:
    """Worker initialiser: one torch thread per feature worker process.

    With ``--nj`` workers on a small machine, torch's default of one thread
    per core would oversubscribe the CPUs ``nj`` times over.
    """
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass


def global_feature_stats(cuts: Any, max_cuts: int = 1000) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation of precomputed features (global CMVN).

    Reads the features of the first ``max_cuts`` cuts of ``cuts`` (in manifest
    order, so the result is deterministic and the same on every DDP rank) and
    pools all their frames.

    Args:
      cuts: a lhotse ``CutSet`` (or any iterable of cuts) with features.
      max_cuts: how many cuts to read at most.
    Returns:
      ``(mean, std)``, each ``(F,)`` float32; ``std`` is floored at 1e-3.
    Raises:
      ValueError: no cut, or a cut without features (names the cut; run
        ``prepare.sh`` stage 5 to compute them).
    """
    total: Optional[torch.Tensor] = None
    total_sq: Optional[torch.Tensor] = None
    frames = 0
    for i, cut in enumerate(cuts):
        if i >= max_cuts:
            break
        if not getattr(cut, "has_features", False):
            raise ValueError(
                f"cut {cut.id} has no precomputed features; run prepare.sh stage 5 (fbank) first"
            )
        feats = torch.as_tensor(cut.load_features(), dtype=torch.float64)
        total = feats.sum(0) if total is None else total + feats.sum(0)
        sq = (feats * feats).sum(0)
        total_sq = sq if total_sq is None else total_sq + sq
        frames += feats.shape[0]
    if total is None or total_sq is None or frames == 0:
        raise ValueError("global_feature_stats: the cut set has no frames")
    mean = total / frames
    var = (total_sq / frames - mean * mean).clamp(min=0.0)
    return mean.float(), var.sqrt().clamp(min=1e-3).float()
