"""The two fbank back-ends agree; compute_fbank's choice of extractor."""

from __future__ import annotations

import numpy as np
import pytest

from icefall_spkd.features import (
    FBANK_OPTIONS,
    kaldifeat_available,
    lhotse_fbank,
    make_fbank_extractor,
)


def _speechlike(seconds: float = 3.0, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    f = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)  # gliding pitch with harmonics
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 8))
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_lhotse_fbank_shape_and_config() -> None:
    ex = lhotse_fbank()
    assert ex.config.high_freq == FBANK_OPTIONS["high_freq"] and ex.config.dither == 0.0
    feats = ex.extract(_speechlike(1.0), 16000)
    assert feats.shape == (100, 80) and np.isfinite(feats).all()


@pytest.mark.skipif(not kaldifeat_available(), reason="kaldifeat not installed")
def test_kaldifeat_and_lhotse_agree() -> None:
    from icefall_spkd.features import kaldifeat_fbank

    x = _speechlike()
    a = lhotse_fbank().extract(x, 16000)
    b = kaldifeat_fbank().extract(x, 16000)
    assert a.shape == b.shape == (300, 80)
    diff = float(np.abs(a - b).max())
    print(f"max |lhotse.Fbank - kaldifeat| = {diff:.2e}")
    assert diff < 1e-3


def test_deterministic_no_dither() -> None:
    x = _speechlike(1.0)
    ex = make_fbank_extractor()
    assert np.array_equal(ex.extract(x, 16000), ex.extract(x, 16000))


def test_make_extractor_backends() -> None:
    assert type(make_fbank_extractor("lhotse")).__name__ == "Fbank"
    expected = "KaldifeatFbank" if kaldifeat_available() else "Fbank"
    assert type(make_fbank_extractor("auto")).__name__ == expected
    with pytest.raises(ValueError, match="Unknown fbank backend"):
        make_fbank_extractor("mfcc")
