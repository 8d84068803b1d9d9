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


def test_global_feature_stats_pools_every_frame(tmp_path) -> None:
    """Mean/std over all frames of all cuts (not a mean of per-cut means); clear error without features."""
    import numpy as np
    from lhotse import CutSet, MonoCut, NumpyFilesWriter

    from icefall_spkd.features import global_feature_stats

    rng = np.random.default_rng(0)
    mats = [rng.normal(-5, 3, size=(n, 4)).astype(np.float32) for n in (10, 50, 7)]
    cuts = []
    with NumpyFilesWriter(tmp_path) as w:
        for i, m in enumerate(mats):
            key = w.write(f"c{i}", m)
            from lhotse import Features

            feats = Features(
                type="fbank", num_frames=m.shape[0], num_features=4, frame_shift=0.01,
                sampling_rate=16000, start=0.0, duration=m.shape[0] * 0.01,
                storage_type=w.name, storage_path=str(tmp_path), storage_key=key,
            )  # fmt: skip
            cuts.append(MonoCut(f"c{i}", 0.0, feats.duration, 0, features=feats))
    mean, std = global_feature_stats(CutSet.from_cuts(cuts))
    allf = np.concatenate(mats)
    np.testing.assert_allclose(mean.numpy(), allf.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), allf.std(0), rtol=1e-4)
    mean2, _ = global_feature_stats(CutSet.from_cuts(cuts), max_cuts=1)
    np.testing.assert_allclose(mean2.numpy(), mats[0].mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="no precomputed features"):
        global_feature_stats(CutSet.from_cuts([MonoCut("bare", 0.0, 1.0, 0)]))
