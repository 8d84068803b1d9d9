"""``--kd-teacher-input clean``: the KD teacher sees the clean features, the student an augmented copy.

The encoders' inputs are captured with forward pre-hooks during one
``compute_loss`` call on a hand-made batch, and compared with the batch's
features as they were fed in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lhotse.dataset import SpecAugment
from recipe_scripts import load_recipe_script

from icefall_spkd.models.presets import build_model
from icefall_spkd.teacher import freeze_teacher, make_kd_generator, validate_kd_params
from icefall_spkd.training import compute_loss, get_params


class _FakeSP:
    def encode(self, texts, out_type=int):
        return [[3, 4, 5, 6, 3] for _ in texts]


def _model(dim: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        dict(
            model_preset="tiny", encoder_dim=dim, num_encoder_layers=1, num_heads=2,
            feedforward_dim=2 * dim, cnn_module_kernel=3, decoder_dim=dim, joiner_dim=dim,
            vocab_size=10,
        )
    )


def _params(tmp_path: Path, *flags: str):
    args = load_recipe_script("spkd_transducer/train.py").get_parser().parse_args(
        ["--exp-dir", str(tmp_path), "--kd-loss", "pkd", "--kd-sampler", "none",
         "--teacher-checkpoint", str(tmp_path / "unused.pt"), *flags]  # the teacher is built here
    )
    params = get_params()
    params.update(vars(args))
    validate_kd_params(params)
    params.update(sp=_FakeSP(), blank_id=0, vocab_size=10)
    return params


def _spec_augment() -> SpecAugment:
    return SpecAugment(
        time_warp_factor=20, num_frame_masks=4, features_mask_size=20, num_feature_masks=2,
        frames_mask_size=20,
    )


def _batch() -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "inputs": torch.randn(2, 120, 80, generator=g),
        "supervisions": {
            "text": ["A B", "C D"],
            "sequence_idx": torch.tensor([0, 1]),
            "start_frame": torch.tensor([0, 0]),
            "num_frames": torch.tensor([120, 100]),
        },
    }


def _seen_inputs(params, student, teacher, batch, is_training: bool = True):
    seen = {}

    def grab(name):
        def hook(module, args):
            seen[name] = args[0].detach().clone()

        return hook

    hs = [student.encoder.register_forward_pre_hook(grab("student")),
          teacher.encoder.register_forward_pre_hook(grab("teacher"))]  # fmt: skip
    torch.manual_seed(0)
    compute_loss(params, student, batch, is_training, teacher=teacher, kd_generator=make_kd_generator(0, 0))
    for h in hs:
        h.remove()
    return seen


def test_teacher_sees_clean_features(tmp_path: Path) -> None:
    student, teacher = _model(32, 0), freeze_teacher(_model(48, 1))
    batch = _batch()
    clean = batch["inputs"].clone()
    params = _params(tmp_path, "--kd-teacher-input", "clean")
    params.student_spec_augment = _spec_augment()  # what training.run sets for --kd-teacher-input clean
    seen = _seen_inputs(params, student, teacher, batch)
    assert torch.equal(seen["teacher"], clean)
    assert seen["student"].shape == clean.shape
    assert not torch.equal(seen["student"], clean)  # the student's copy is augmented
    assert torch.equal(batch["inputs"], clean)  # the batch itself is left alone

    # Validation (is_training=False): no augmentation for anyone.
    seen = _seen_inputs(params, student, teacher, batch, is_training=False)
    assert torch.equal(seen["student"], clean) and torch.equal(seen["teacher"], clean)


def test_default_teacher_sees_the_student_input(tmp_path: Path) -> None:
    """--kd-teacher-input augmented (default): both see the (loader-augmented) batch."""
    student, teacher = _model(32, 0), freeze_teacher(_model(48, 1))
    params = _params(tmp_path)
    assert params.kd_teacher_input == "augmented"
    batch = _batch()
    seen = _seen_inputs(params, student, teacher, batch)
    assert torch.equal(seen["teacher"], batch["inputs"])
    assert torch.equal(seen["student"], batch["inputs"])


def test_spec_augment_starts_at_its_update(tmp_path: Path) -> None:
    """--spec-aug-start-batch N: clean input before update N, augmented from N on, for both models."""
    student, teacher = _model(32, 0), freeze_teacher(_model(48, 1))
    batch = _batch()
    clean = batch["inputs"].clone()
    params = _params(tmp_path, "--spec-aug-start-batch", "100")
    params.student_spec_augment = _spec_augment()  # what training.run sets for --spec-aug-start-batch > 0
    params.batch_idx_train = 99
    seen = _seen_inputs(params, student, teacher, batch)
    assert torch.equal(seen["student"], clean) and torch.equal(seen["teacher"], clean)
    params.batch_idx_train = 100
    seen = _seen_inputs(params, student, teacher, batch)
    assert not torch.equal(seen["student"], clean)
    assert torch.equal(seen["teacher"], seen["student"])  # augmented teacher input: the same copy
