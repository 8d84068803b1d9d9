"""``AsrDataModule``: the data loaders shared by train.py and decode.py (icefall style).

Reads the cuts written by ``egs/librispeech/ASR/prepare.sh``
(``<manifest-dir>/librispeech_cuts_{train,dev,test-clean,test-other}.jsonl.gz``;
for real LibriSpeech also ``dev-clean`` and ``dev-other``, the two halves of
``dev``, which are decoded separately under icefall's names while validation
uses ``dev``)
and builds lhotse ``DynamicBucketingSampler`` + ``K2SpeechRecognitionDataset``
loaders. A batch is the dataset's dict: ``batch["inputs"]`` (N, T, 80) and
``batch["supervisions"]`` with ``text``, ``sequence_idx``, ``start_frame``,
``num_frames`` (and ``cut`` with ``--return-cuts true``).

Reproducibility: the training sampler is seeded with ``args.seed`` (the
training script's ``--seed``; 42 when absent) and shuffles per epoch via
``sampler.set_epoch(epoch)``. ``train_dl.sampler.state_dict()`` saved in a
checkpoint and passed back as ``sampler_state_dict`` resumes at the next
batch. Dataloader workers are seeded from torch's global generator at
construction time, so seeding torch before building the loader fixes
SpecAugment's masks too.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from lhotse import CutSet, load_manifest_lazy
from lhotse.dataset import (
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.input_strategies import (
    AudioSamples,
    BatchIO,
    OnTheFlyFeatures,
    PrecomputedFeatures,
)
from torch.utils.data import DataLoader

from icefall_spkd.features import make_fbank_extractor
from icefall_spkd.utils import str2bool

DEFAULT_SEED = 42

#: Sets decode.py can decode: icefall's LibriSpeech names, plus ``dev`` (the
#: synthetic corpus's development set; for LibriSpeech dev-clean + dev-other)
#: and ``test-open`` (the closed-vocabulary synthetic task's open-vocabulary test).
DECODING_SETS = (
    "test-clean", "test-other", "dev-clean", "dev-other", "dev", "test-open",
    "test-other-clean", "test-clean-degraded",  # prepare.sh --probe-splits true (synthetic)
)  # fmt: skip


class _SeedWorkers:
    """``worker_init_fn`` that seeds python, numpy and torch in each worker."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        s = self.seed + worker_id
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


class AsrDataModule:
    """Builds the train/valid/test dataloaders from command-line arguments."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    # ------------------------------------------------------------ arguments
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the data options (as an "ASR data related options" group)."""
        g = parser.add_argument_group(
            title="ASR data related options",
            description="How the cuts are batched, augmented and loaded.",
        )
        g.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                       help="directory with <cuts-prefix>_cuts_<split>.jsonl.gz")
        g.add_argument("--cuts-prefix", type=str, default="librispeech",
                       help="reads <prefix>_cuts_<split>.jsonl.gz (aishell for egs/aishell/ASR)")
        g.add_argument("--max-duration", type=float, default=200.0,
                       help="maximum total audio seconds in a batch")
        g.add_argument("--bucketing-sampler", type=str2bool, default=True,
                       help="bucket cuts of similar duration (DynamicBucketingSampler); "
                            "false: SimpleCutSampler")
        g.add_argument("--num-buckets", type=int, default=30,
                       help="buckets of the bucketing sampler")
        g.add_argument("--shuffle", type=str2bool, default=True,
                       help="shuffle the training cuts each epoch")
        g.add_argument("--drop-last", type=str2bool, default=True,
                       help="drop the last incomplete training batch")
        g.add_argument("--return-cuts", type=str2bool, default=True,
                       help="put the cuts in batch['supervisions']['cut']")
        g.add_argument("--num-workers", type=int, default=2,
                       help="dataloader worker processes")
        g.add_argument("--enable-spec-aug", type=str2bool, default=True,
                       help="SpecAugment on training batches")
        g.add_argument("--spec-aug-time-warp-factor", type=int, default=80,
                       help="time warp factor of SpecAugment; < 1 disables warping")
        g.add_argument("--spec-aug-start-batch", type=int, default=0,
                       help="with --enable-spec-aug: no SpecAugment before this training "
                            "update (0: from the first, icefall's way). An under-fit model "
                            "learns much faster without it (RESULTS.md)")
        g.add_argument("--on-the-fly-feats", type=str2bool, default=False,
                       help="compute fbank from audio while loading instead of reading "
                            "precomputed features")
        g.add_argument("--input-strategy", type=str, default="PrecomputedFeatures",
                       choices=["PrecomputedFeatures", "AudioSamples"],
                       help="what batch['inputs'] holds when --on-the-fly-feats is false")

    # ------------------------------------------------------------ cuts
    def _load(self, split: str) -> CutSet:
        prefix = getattr(self.args, "cuts_prefix", "librispeech")
        path = Path(self.args.manifest_dir) / f"{prefix}_cuts_{split}.jsonl.gz"
        if not path.is_file():
            hint = (
                " (dev-clean and dev-other are LibriSpeech's; the synthetic corpus has 'dev')"
                if split in ("dev-clean", "dev-other")
                else ""
            )
            raise FileNotFoundError(
                f"{path} is missing: run egs/{prefix}/ASR/prepare.sh (from that directory), "
                f"or point --manifest-dir at its data/fbank{hint}"
            )
        logging.info(f"About to get {split} cuts from {path}")
        return load_manifest_lazy(path)

    def train_cuts(self) -> CutSet:
        """Training cuts (LibriSpeech: train-clean-100, or 960 h)."""
        return self._load("train")

    def dev_cuts(self) -> CutSet:
        """Validation cuts (LibriSpeech: dev-clean + dev-other; the synthetic corpus: its dev)."""
        return self._load("dev")

    def dev_clean_cuts(self) -> CutSet:
        """LibriSpeech dev-clean cuts (a decoding set)."""
        return self._load("dev-clean")

    def dev_other_cuts(self) -> CutSet:
        """LibriSpeech dev-other cuts (a decoding set)."""
        return self._load("dev-other")

    def decoding_cuts(self, name: str) -> CutSet:
        """The cuts of a decoding set by its name (see :data:`DECODING_SETS`)."""
        if name not in DECODING_SETS:
            raise ValueError(f"Unknown decoding set {name!r}; use one of {', '.join(DECODING_SETS)}")
        return self._load(name)

    def test_clean_cuts(self) -> CutSet:
        """test-clean cuts."""
        return self._load("test-clean")

    def test_other_cuts(self) -> CutSet:
        """test-other cuts."""
        return self._load("test-other")

    # ------------------------------------------------------------ helpers
    @property
    def seed(self) -> int:
        """Sampler seed: the training script's ``--seed`` (``DEFAULT_SEED`` if absent)."""
        return int(getattr(self.args, "seed", DEFAULT_SEED))

    def _input_strategy(self) -> BatchIO:
        if self.args.on_the_fly_feats:
            return OnTheFlyFeatures(make_fbank_extractor())
        if self.args.input_strategy == "AudioSamples":
            return AudioSamples()
        return PrecomputedFeatures()

    def _loader(self, dataset: K2SpeechRecognitionDataset, sampler: Any, train: bool) -> DataLoader:
        seed = int(torch.randint(0, 100_000, ()).item())
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.args.num_workers,
            persistent_workers=False,
            worker_init_fn=_SeedWorkers(seed) if train else None,
        )

    # ------------------------------------------------------------ loaders
    def spec_augment(self) -> Optional[SpecAugment]:
        """The training SpecAugment (``--enable-spec-aug``, ``--spec-aug-time-warp-factor``), or None."""
        if not self.args.enable_spec_aug:
            return None
        return SpecAugment(
            time_warp_factor=self.args.spec_aug_time_warp_factor,
            num_frame_masks=10,
            features_mask_size=27,
            num_feature_masks=2,
            frames_mask_size=100,
        )

    def train_dataloaders(
        self,
        cuts_train: CutSet,
        sampler_state_dict: Optional[Dict[str, Any]] = None,
        spec_augment_in_loader: bool = True,
    ) -> DataLoader:
        """Training loader.

        Args:
          cuts_train: cuts with features (or audio, with ``--on-the-fly-feats``).
          sampler_state_dict: ``train_dl.sampler.state_dict()`` from a
            checkpoint; the sampler then continues with the next batch.
          spec_augment_in_loader: apply SpecAugment in the dataset (icefall's
            way). False: the batches hold clean features and the training step
            applies :meth:`spec_augment` itself (``--kd-teacher-input clean``,
            where the KD teacher sees the clean features and the student an
            augmented copy).
        """
        transforms = []
        augment = self.spec_augment()
        if augment is not None and spec_augment_in_loader:
            logging.info(f"SpecAugment on, time warp factor {self.args.spec_aug_time_warp_factor}")
            transforms.append(augment)
        raw_audio = not self.args.on_the_fly_feats and self.args.input_strategy == "AudioSamples"
        if augment is not None and raw_audio:
            raise ValueError("--enable-spec-aug true needs features: use --input-strategy "
                             "PrecomputedFeatures or --on-the-fly-feats true")
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self._input_strategy(),
            input_transforms=transforms,
            return_cuts=self.args.return_cuts,
        )
        if self.args.bucketing_sampler:
            sampler = DynamicBucketingSampler(
                cuts_train,
                max_duration=self.args.max_duration,
                shuffle=self.args.shuffle,
                num_buckets=self.args.num_buckets,
                drop_last=self.args.drop_last,
                seed=self.seed,
                buffer_size=self.args.num_buckets * 2000,
            )
        else:
            sampler = SimpleCutSampler(
                cuts_train,
                max_duration=self.args.max_duration,
                shuffle=self.args.shuffle,
                drop_last=self.args.drop_last,
                seed=self.seed,
            )
        if sampler_state_dict is not None:
            logging.info("Restoring the training sampler's state (resuming mid-epoch)")
            sampler.load_state_dict(copy.deepcopy(sampler_state_dict))
        return self._loader(dataset, sampler, train=True)

    def valid_dataloaders(self, cuts_valid: CutSet) -> DataLoader:
        """Validation loader: no augmentation, no shuffling, nothing dropped."""
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self._input_strategy(), return_cuts=self.args.return_cuts
        )
        return self._loader(dataset, self._eval_sampler(cuts_valid), train=False)

    def test_dataloaders(self, cuts: CutSet) -> DataLoader:
        """Test loader: always returns the cuts (decode.py needs their ids)."""
        dataset = K2SpeechRecognitionDataset(input_strategy=self._input_strategy(), return_cuts=True)
        return self._loader(dataset, self._eval_sampler(cuts), train=False)

    def _eval_sampler(self, cuts: CutSet) -> SimpleCutSampler:
        """Deterministic batches for validation and decoding.

        Evaluation sets are small enough to hold in memory, so instead of a
        bucketing sampler (which needs at least ``--num-buckets`` cuts) the
        cuts are sorted by duration, longest first, which keeps padding low
        and puts the largest batch first (an out-of-memory error shows at once).
        """
        cuts = cuts.to_eager().sort_by_duration(ascending=False)
        return SimpleCutSampler(cuts, max_duration=self.args.max_duration, shuffle=False)
