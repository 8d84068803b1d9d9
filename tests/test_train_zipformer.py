"""Zipformer + ScaledAdam through train.py, decode.py, export.py and pretrained.py.

- exact resume of a Zipformer run with ScaledAdam (the ScheduledFloat batch
  count set every step from the global batch, so it is the same after a resume);
- ``--use-ctc``: the CTC term enters the loss with ``--ctc-loss-scale``, checked
  against ``torch.nn.functional.ctc_loss`` computed here on the same encoder output;
- checkpoints store the model's hyper-parameters: decode/export/pretrained run
  with no model flag, and a contradicting flag is a clear error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from test_train import (
    MODEL_ARGS,
    _batch_losses,
    _common_args,
    _data_args,
    _run,
    _train_args,
    assert_same_losses,
    assert_same_weights,
)

# A two-stack Zipformer small enough for milliseconds per CPU step.
ZIP_ARGS = [
    "--encoder-type", "zipformer",
    "--downsampling-factor", "1,2",
    "--num-encoder-layers", "1",
    "--encoder-dim", "32",
    "--encoder-unmasked-dim", "16",
    "--feedforward-dim", "48",
    "--num-heads", "2",
    "--cnn-module-kernel", "3",
    "--query-head-dim", "8",
    "--value-head-dim", "4",
    "--pos-head-dim", "2",
    "--pos-dim", "8",
    "--decoder-dim", "32",
    "--joiner-dim", "32",
]  # fmt: skip

# --ref-duration 0.01: the ScheduledFloat clock moves 600 "batches" per step of
# --max-duration 6, so dropout, skip rates and balancer limits change along the
# few steps of the run (a resume that lost the clock would not reproduce them).
ZIP_TRAIN = [*ZIP_ARGS, "--optimizer", "scaled_adam", "--base-lr", "0.045", "--ref-duration", "0.01"]

_COUNT_RE = re.compile(r"global_batch (\d+), .*?batch_count: (\S+)")


def _zip_train_args(corpus: Path, exp: Path, *extra: str) -> List[str]:
    return _train_args(corpus, exp, *ZIP_TRAIN, *extra)


def _batch_counts(exp_dir: Path) -> Dict[int, float]:
    out: Dict[int, float] = {}
    for f in sorted((exp_dir / "log").glob("log-train*")):
        for m in _COUNT_RE.finditer(f.read_text()):
            out[int(m.group(1))] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def zip_trained(corpus: Path, tmp_path_factory) -> Path:
    """One uninterrupted 2-epoch Zipformer + ScaledAdam run (do not modify)."""
    full = tmp_path_factory.mktemp("zip_full") / "exp"
    _run("train.py", _zip_train_args(corpus, full, "--use-ctc", "true"), cwd=corpus)
    return full


@pytest.mark.slow
def test_zipformer_scaled_adam_exact_resume(corpus: Path, zip_trained: Path, tmp_path: Path) -> None:
    full = zip_trained
    log = "".join(f.read_text() for f in (full / "log").glob("log-train*"))
    assert "optimizer scaled_adam, base lr 0.045, Eden lr_batches 7500.0, lr_epochs 3.5" in log
    ck = torch.load(full / "checkpoint-3.pt", weights_only=False)
    assert type(ck["optimizer"]["state"]).__name__ == "dict" and "param_groups" in ck["optimizer"]
    assert ck["model_params"]["encoder_type"] == "zipformer"
    assert ck["model_params"]["downsampling_factor"] == "1,2"
    assert ck["model_params"]["use_ctc"] is True

    losses_full = _batch_losses(full)
    counts_full = _batch_counts(full)
    n = max(losses_full)
    assert n >= 6
    # the clock: global batch * max_duration (6) * world size (1) / ref_duration (0.01)
    assert counts_full == {b: pytest.approx(b * 600.0) for b in range(1, n + 1)}

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint-3.pt").write_bytes((full / "checkpoint-3.pt").read_bytes())
    _run("train.py", _zip_train_args(corpus, resumed, "--use-ctc", "true", "--start-batch", "3"), cwd=corpus)
    losses_res = _batch_losses(resumed)
    assert min(losses_res) == 4
    assert_same_losses(losses_full, losses_res)
    assert _batch_counts(resumed) == {b: counts_full[b] for b in losses_res}
    a = torch.load(full / "epoch-2.pt", weights_only=False)
    b = torch.load(resumed / "epoch-2.pt", weights_only=False)
    assert_same_weights(a["model"], b["model"])

    # The clock reaches the model: the same run on icefall's --ref-duration 600
    # (batch count 0.01 per step) gives other losses from the first batch on.
    slow = tmp_path / "slow_clock"
    _run("train.py", _zip_train_args(corpus, slow, "--use-ctc", "true", "--num-epochs", "1",
                                     "--ref-duration", "600"), cwd=corpus)  # fmt: skip
    losses_slow = _batch_losses(slow)
    assert _batch_counts(slow)[2] == pytest.approx(0.02)
    assert all(losses_slow[k] != losses_full[k] for k in losses_slow), (losses_slow, losses_full)


@pytest.mark.slow
def test_zipformer_decode_export_pretrained_without_model_flags(
    corpus: Path, zip_trained: Path, tmp_path: Path
) -> None:
    import shutil

    import soundfile as sf

    exp = tmp_path / "exp"
    shutil.copytree(zip_trained, exp)
    tokens = str(corpus / "data" / "lang_bpe_30" / "tokens.txt")
    no_model = [a for a in _common_args(corpus, exp) if a not in MODEL_ARGS]
    assert "--model-preset" not in no_model and "--encoder-dim" not in no_model
    dec = [*no_model, *_data_args(), "--epoch", "2", "--avg", "1", "--test-sets", "dev"]
    _run("decode.py", dec, cwd=corpus)
    recogs = exp / "greedy_search" / "recogs-dev-epoch-2-avg-1-use-averaged-model.txt"
    assert "ref=" in recogs.read_text()
    logs = "".join(p.read_text() for p in (exp / "greedy_search").glob("log-decode-*"))
    assert "'encoder_type': 'zipformer'" in logs

    # a model flag that contradicts the stored architecture is refused with one clear line
    with pytest.raises(AssertionError, match=r"--encoder-dim 64 contradicts .*epoch-2.pt.*--encoder-dim 32"):
        _run("decode.py", [*dec, "--encoder-dim", "64"], cwd=corpus)

    _run("export.py", ["--exp-dir", str(exp), "--tokens", tokens, "--epoch", "2", "--avg", "1"], cwd=corpus)
    pre = torch.load(exp / "pretrained.pt", weights_only=False)
    assert pre["params"]["encoder_type"] == "zipformer" and pre["params"]["encoder_dim"] == "32,32"
    assert any(k.startswith("ctc_output.") for k in pre["model"])

    wav = tmp_path / "noise.wav"
    sf.write(wav, (np.random.default_rng(1).normal(size=16000) * 0.1).astype("float32"), 16000)
    proc = _run("pretrained.py", ["--checkpoint", str(exp / "pretrained.pt"), "--tokens", tokens, str(wav)], cwd=corpus)
    assert f"{wav}:" in proc.stdout


class _Ids:
    """A stand-in for the SentencePiece model: fixed token ids per text."""

    def __init__(self, table: Dict[str, List[int]]) -> None:
        self.table = table

    def encode(self, texts: List[str], out_type=int) -> List[List[int]]:
        return [list(self.table[t]) for t in texts]


def test_ctc_term_added_with_its_scale() -> None:
    """compute_loss(use_ctc) - compute_loss(no ctc) == scale * CTC NLL of the encoder output,
    the NLL from torch's ctc_loss on concatenated targets, utterance by utterance."""
    import torch.nn.functional as F

    from icefall_spkd.models import build_model
    from icefall_spkd.train_loss import compute_loss
    from icefall_spkd.utils import AttributeDict

    torch.manual_seed(0)
    args = dict(zip(ZIP_ARGS[::2], ZIP_ARGS[1::2]))
    cfg = {k.lstrip("-").replace("-", "_"): v for k, v in args.items()}
    model = build_model({**cfg, "vocab_size": 12, "use_ctc": True}).eval()
    texts = ["A", "B", "C"]
    ids = {"A": [3, 4, 5, 4], "B": [7], "C": [2, 2, 9, 10, 11]}
    x = torch.randn(3, 90, 80)
    num_frames = [90, 61, 75]
    batch = {"inputs": x, "supervisions": {"text": texts, "num_frames": torch.tensor(num_frames)}}
    params = AttributeDict(
        sp=_Ids(ids), prune_range=3, am_scale=0.0, lm_scale=0.25, simple_loss_scale=0.5,
        warm_step=0, batch_idx_train=10, use_fp16=False, use_bf16=False, blank_id=0,
        ctc_loss_scale=0.3,
    )  # fmt: skip
    with torch.no_grad():
        base, _ = compute_loss(AttributeDict(params, use_ctc=False), model, batch, is_training=False)
        with_ctc, info = compute_loss(AttributeDict(params, use_ctc=True), model, batch, is_training=False)

        enc, enc_lens = model.forward_encoder(x, torch.tensor(num_frames))
        head = model.ctc_output[1]  # Linear (the Dropout is off in eval)
        ref = 0.0
        for n, t in enumerate(texts):
            lp = torch.log_softmax(head(enc[n, : enc_lens[n]]), dim=-1)  # (T_n, V)
            ref += float(
                F.ctc_loss(lp[:, None, :], torch.tensor(ids[t]), [lp.size(0)], [len(ids[t])],
                           blank=0, reduction="sum")
            )  # fmt: skip
    assert info["ctc_loss"] == pytest.approx(ref, rel=1e-5)
    assert float(with_ctc - base) == pytest.approx(0.3 * ref, rel=1e-4)
    assert ref > 1.0


def test_optimizer_defaults_and_clipping_flag_error(tmp_path: Path) -> None:
    """--optimizer follows the encoder; ScaledAdam refuses --max-grad-norm with one line."""
    import importlib.util

    from test_train import RECIPE

    from icefall_spkd.models.presets import encoder_type_of
    from icefall_spkd.training import resolve_optimizer_params
    from icefall_spkd.utils import AttributeDict

    spec = importlib.util.spec_from_file_location("spkd_train_opt", RECIPE / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for argv, want in (
        (ZIP_ARGS, ("scaled_adam", 0.045, 7500.0, 3.5)),
        (["--model-preset", "zipformer-synth-student"], ("scaled_adam", 0.045, 7500.0, 3.5)),
        (MODEL_ARGS, ("adamw", 3e-3, 5000.0, 6.0)),
        ([*ZIP_ARGS, "--optimizer", "adamw", "--base-lr", "1e-3"], ("adamw", 1e-3, 5000.0, 6.0)),
    ):
        p = AttributeDict(vars(mod.get_parser().parse_args(argv)))
        resolve_optimizer_params(p, encoder_type_of(p))
        assert (p.optimizer, p.base_lr, p.lr_batches, p.lr_epochs) == want, argv
    with pytest.raises(SystemExit, match="--max-grad-norm applies to AdamW only; ScaledAdam clips"):
        mod.main([*ZIP_ARGS, "--max-grad-norm", "5", "--exp-dir", str(tmp_path)])
