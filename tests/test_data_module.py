"""AsrDataModule: arguments, batches, seeding and exact sampler resume."""

from __future__ import annotations

import argparse

import pytest
import torch
from lhotse import CutSet
from prep_fixtures import Prepared

from icefall_spkd.data import AsrDataModule


def make_dm(workdir, *extra: str) -> AsrDataModule:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=42)
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args(["--manifest-dir", str(workdir / "data" / "fbank"), "--num-workers", "0",
                              "--max-duration", "6", "--num-buckets", "2", *extra])
    return AsrDataModule(args)


def _ids(batch) -> list:
    return [c.id for c in batch["supervisions"]["cut"]]


def test_defaults_match_icefall_names() -> None:
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    a = parser.parse_args([])
    for name in ["manifest_dir", "max_duration", "bucketing_sampler", "num_buckets", "shuffle",
                 "drop_last", "return_cuts", "num_workers", "enable_spec_aug",
                 "spec_aug_time_warp_factor", "on_the_fly_feats", "input_strategy"]:
        assert hasattr(a, name), name
    assert str(a.manifest_dir) == "data/fbank"
    a = parser.parse_args(["--shuffle", "false", "--on-the-fly-feats", "true"])
    assert a.shuffle is False and a.on_the_fly_feats is True


def test_missing_manifest_error_names_file(tmp_path) -> None:
    dm = make_dm(tmp_path)
    with pytest.raises(FileNotFoundError, match="librispeech_cuts_train.jsonl.gz.*prepare.sh"):
        dm.train_cuts()


def test_valid_batch_matches_cuts(tiny_librispeech: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(tiny_librispeech.workdir)
    dm = make_dm(tiny_librispeech.workdir)
    cuts = dm.dev_cuts().to_eager()
    seen = []
    for batch in dm.valid_dataloaders(cuts):
        x, sup = batch["inputs"], batch["supervisions"]
        assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[2] == 80
        for i, c in enumerate(sup["cut"]):
            assert int(sup["num_frames"][i]) == c.num_frames
            assert sup["text"][i] == c.supervisions[0].text
        assert x.shape[1] == max(c.num_frames for c in sup["cut"])
        seen += _ids(batch)
    assert sorted(seen) == sorted(cuts.ids)


def test_on_the_fly_features_match_precomputed(tiny_librispeech: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(tiny_librispeech.workdir)
    pre = make_dm(tiny_librispeech.workdir)
    otf = make_dm(tiny_librispeech.workdir, "--on-the-fly-feats", "true")
    cuts = pre.test_clean_cuts().to_eager()
    b1 = next(iter(pre.test_dataloaders(cuts)))
    b2 = next(iter(otf.test_dataloaders(cuts)))
    assert _ids(b1) == _ids(b2)
    n = min(b1["inputs"].shape[1], b2["inputs"].shape[1])
    # lilcom storage is lossy (about 0.01-0.03 absolute on log-mel energies)
    assert torch.allclose(b1["inputs"][:, :n], b2["inputs"][:, :n], atol=0.1)


def _train_cuts(tiny: Prepared) -> CutSet:
    cuts = make_dm(tiny.workdir).train_cuts().to_eager()
    # repeat the 8 training cuts (new ids) so that an epoch has several batches
    return CutSet.from_cuts(c.with_id(f"{c.id}_{k}") for k in range(4) for c in cuts)


def test_seeded_and_exact_resume(tiny_librispeech: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(tiny_librispeech.workdir)
    cuts = _train_cuts(tiny_librispeech)
    dm = make_dm(tiny_librispeech.workdir, "--enable-spec-aug", "false")

    def epoch_ids(dl, epoch):
        dl.sampler.set_epoch(epoch)
        return [_ids(b) for b in dl]

    full = epoch_ids(dm.train_dataloaders(cuts), 1)
    assert len(full) >= 4
    assert full == epoch_ids(dm.train_dataloaders(cuts), 1)  # same seed, same order
    assert full != epoch_ids(dm.train_dataloaders(cuts), 2)  # reshuffled per epoch

    dl = dm.train_dataloaders(cuts)
    dl.sampler.set_epoch(1)
    it = iter(dl)
    first = [_ids(next(it)) for _ in range(2)]
    state = dl.sampler.state_dict()
    resumed = dm.train_dataloaders(cuts, sampler_state_dict=state)
    rest = [_ids(b) for b in resumed]
    assert first + rest == full


def test_spec_augment_applied_only_in_training(tiny_librispeech: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(tiny_librispeech.workdir)
    cuts = _train_cuts(tiny_librispeech)
    torch.manual_seed(0)
    on = make_dm(tiny_librispeech.workdir, "--shuffle", "false", "--drop-last", "false")
    off = make_dm(tiny_librispeech.workdir, "--shuffle", "false", "--drop-last", "false",
                  "--enable-spec-aug", "false")
    a, b = next(iter(on.train_dataloaders(cuts))), next(iter(off.train_dataloaders(cuts)))
    assert _ids(a) == _ids(b) and a["inputs"].shape == b["inputs"].shape
    assert not torch.equal(a["inputs"], b["inputs"])


def test_spec_augment_can_move_out_of_the_loader(tiny_librispeech: Prepared, monkeypatch) -> None:
    """spec_augment_in_loader=False (--kd-teacher-input clean): clean batches, the module returned apart."""
    monkeypatch.chdir(tiny_librispeech.workdir)
    cuts = _train_cuts(tiny_librispeech)
    flags = ("--shuffle", "false", "--drop-last", "false")
    on = make_dm(tiny_librispeech.workdir, *flags)
    off = make_dm(tiny_librispeech.workdir, *flags, "--enable-spec-aug", "false")
    a = next(iter(on.train_dataloaders(cuts, spec_augment_in_loader=False)))
    b = next(iter(off.train_dataloaders(cuts)))
    assert _ids(a) == _ids(b) and torch.equal(a["inputs"], b["inputs"])
    assert on.spec_augment() is not None and off.spec_augment() is None


def test_librispeech_dev_halves_are_decoding_sets(tiny_librispeech: Prepared, monkeypatch) -> None:
    """dev-clean and dev-other decode on their own (icefall's names); dev is their union."""
    monkeypatch.chdir(tiny_librispeech.workdir)
    dm = make_dm(tiny_librispeech.workdir)
    clean = dm.decoding_cuts("dev-clean").to_eager()
    other = dm.decoding_cuts("dev-other").to_eager()
    assert len(clean) > 0 and len(other) > 0
    assert sorted([*clean.ids, *other.ids]) == sorted(dm.dev_cuts().to_eager().ids)
    assert sorted(dm.dev_clean_cuts().ids) == sorted(clean.ids)
    with pytest.raises(ValueError, match="Unknown decoding set 'dev_clean'"):
        dm.decoding_cuts("dev_clean")
    with pytest.raises(FileNotFoundError, match="synthetic corpus has 'dev'"):
        make_dm(tiny_librispeech.workdir / "nowhere").decoding_cuts("dev-other")
