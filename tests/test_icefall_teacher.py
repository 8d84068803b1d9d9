"""An icefall Zipformer checkpoint as the KD teacher (``--teacher-checkpoint``).

The checkpoints are written from the reference package's model
(tests/zipformer_reference.py, zipformer==0.1.3 = icefall's Zipformer2 code):
``epoch-N.pt`` with icefall's ``params`` at the top level, and ``pretrained.pt``
with the weights only (architecture from the ``--teacher-*`` flags). A
Zipformer student then trains with SP-KD on the first for a few steps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from test_train import _run, _train_args
from test_train_zipformer import ZIP_ARGS, ZIP_TRAIN
from zipformer_reference import reference_asr_model

# The teacher: icefall's flags, two stacks, all values different from the student's.
TEACHER = dict(
    num_encoder_layers="1,2", downsampling_factor="1,2", feedforward_dim="64,96",
    encoder_dim="48,64", encoder_unmasked_dim="32,48", num_heads="2,4",
    cnn_module_kernel="7,5", query_head_dim="8", value_head_dim="6", pos_head_dim="4",
    pos_dim=16, decoder_dim=32, joiner_dim=40, context_size=2,
)  # fmt: skip
TEACHER_FLAGS = [x for k, v in TEACHER.items() for x in ("--teacher-" + k.replace("_", "-"), str(v))]


def _bpe(corpus: Path) -> Path:
    return corpus / "data" / "lang_bpe_30" / "bpe.model"


@pytest.fixture(scope="module")
def icefall_files(corpus: Path, tmp_path_factory) -> Dict[str, Path]:
    """``epoch-3.pt`` (as icefall's save_checkpoint writes it) and ``pretrained.pt`` (weights only)."""
    torch.manual_seed(3)
    ref = reference_asr_model(TEACHER, vocab_size=30, use_ctc=True)
    with torch.no_grad():
        for p in ref.parameters():  # away from the initial values, so a misplaced weight shows
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("icefall_exp")
    params = {**TEACHER, "vocab_size": 30, "blank_id": 0, "feature_dim": 80, "use_ctc": True,
              "causal": False, "bpe_model": str(_bpe(corpus)), "batch_idx_train": 1234,
              "base_lr": 0.045, "subsampling_factor": 4}  # fmt: skip
    torch.save({"model": ref.state_dict(), "optimizer": {}, "scheduler": {}, **params}, out / "epoch-3.pt")
    torch.save({"model": ref.state_dict()}, out / "pretrained.pt")
    return {"epoch": out / "epoch-3.pt", "pretrained": out / "pretrained.pt", "ref": ref.eval()}


def _load(corpus: Path, teacher: Path, *extra: str):
    """load_teacher with the params train.py builds (Zipformer student, --kd-loss pkd)."""
    import importlib.util

    from test_train import RECIPE

    from icefall_spkd.teacher import load_teacher, validate_kd_params
    from icefall_spkd.training import get_params, load_bpe

    spec = importlib.util.spec_from_file_location("spkd_train", RECIPE / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.get_parser().parse_args(
        ["--bpe-model", str(_bpe(corpus)), *ZIP_ARGS, "--teacher-checkpoint", str(teacher),
         "--kd-loss", "pkd", *extra]
    )  # fmt: skip
    params = get_params()
    params.update(vars(args))
    validate_kd_params(params)
    params.sp = load_bpe(params)
    return load_teacher(params, torch.device("cpu"))


def test_icefall_teacher_files_load_and_compute_icefalls_function(corpus: Path, icefall_files) -> None:
    ref = icefall_files["ref"]
    x = torch.randn(2, 120, 80)
    x_lens = torch.tensor([120, 83])
    with torch.no_grad():
        want, want_lens = ref.forward_encoder(x, x_lens)
        for name, extra in (("epoch", []), ("pretrained", TEACHER_FLAGS)):
            teacher = _load(corpus, icefall_files[name], *extra)
            assert teacher.model_config["encoder_type"] == "zipformer"
            assert teacher.model_config["encoder_dim"] == "48,64" and teacher.ctc_output is not None
            got, got_lens = teacher.forward_encoder(x, x_lens)
            assert torch.equal(got_lens, want_lens)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
            assert not any(p.requires_grad for p in teacher.parameters())


def test_icefall_teacher_errors(corpus: Path, icefall_files, tmp_path: Path) -> None:
    from icefall_spkd.kd_options import TeacherError

    # pretrained.pt records no architecture: the --teacher-* flags are needed
    with pytest.raises(TeacherError, match=r"does not record its architecture; give it with the --teacher-\*"):
        _load(corpus, icefall_files["pretrained"])
    # a wrong flag: strict loading names the mismatching keys
    with pytest.raises(Exception, match=r"encoder\.encoders\.1"):
        _load(corpus, icefall_files["pretrained"], *TEACHER_FLAGS, "--teacher-num-encoder-layers", "1,1")
    # the teacher's tokens.txt must list the student's symbols
    good = corpus / "data" / "lang_bpe_30" / "tokens.txt"
    _load(corpus, icefall_files["epoch"], "--teacher-tokens", str(good))
    lines = good.read_text().splitlines()
    lines[5], lines[6] = f"{lines[6].split()[0]} 5", f"{lines[5].split()[0]} 6"
    bad = tmp_path / "tokens.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TeacherError, match=r"differs from the student's .*bpe.model: id 5 is"):
        _load(corpus, icefall_files["epoch"], "--teacher-tokens", str(bad))


_LINE_RE = re.compile(r"global_batch (\d+), batch_loss (\S+), loss\[\[([^\]]*)\]\]")


@pytest.mark.slow
def test_zipformer_student_spkd_from_icefall_teacher(corpus: Path, icefall_files, tmp_path: Path) -> None:
    exp = tmp_path / "spkd"
    args = _train_args(
        corpus, exp, *ZIP_TRAIN, "--num-epochs", "1", "--valid-interval", "0",
        "--teacher-checkpoint", str(icefall_files["epoch"]), "--kd-loss", "pkd",
        "--kd-sampler", "teacher", "--kd-num-samples", "2", "--kd-scale", "0.5",
        "--kd-sampling-scale", "1.0", "--save-every-n", "1",
    )  # fmt: skip
    _run("train.py", args, cwd=corpus)
    log = "".join(f.read_text() for f in (exp / "log").glob("log-train*"))
    assert "Teacher: " in log and "'encoder_type': 'zipformer'" in log
    rows = {int(m.group(1)): (m.group(2), dict(kv.split("=") for kv in m.group(3).split(", ")))
            for m in _LINE_RE.finditer(log)}  # fmt: skip
    assert len(rows) >= 3
    for loss, kv in rows.values():
        assert torch.isfinite(torch.tensor(float(loss)))
        assert float(kv["kd_loss"]) > 0 and float(kv["kd_samp_loss"]) > 0
    first = torch.load(exp / "checkpoint-1.pt", weights_only=False)["model"]
    last = torch.load(exp / "epoch-1.pt", weights_only=False)["model"]
    changed = [k for k, v in first.items() if v.is_floating_point() and not torch.equal(v, last[k])]
    assert len(changed) > len(first) // 2, changed


def test_own_zipformer_checkpoint_as_teacher_needs_no_flags(corpus: Path, tmp_path: Path) -> None:
    """A save_checkpoint file of a Zipformer whose params hold no model flag: model_params rebuild it."""
    from icefall_spkd.checkpoint import save_checkpoint
    from icefall_spkd.models import build_model

    torch.manual_seed(1)
    model = build_model({**TEACHER, "encoder_type": "zipformer", "vocab_size": 30})
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, model, params={"batch_idx_train": 3, "bpe_model": str(_bpe(corpus))})
    teacher = _load(corpus, path)
    assert teacher.model_config == model.model_config
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher.state_dict()[k]), k
