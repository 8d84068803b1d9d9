"""Training safety: --max-grad-norm, --inf-check and the dump of a skipped batch.

Each test drives ``train_one_epoch`` on a tiny real transducer with hand-made
batches and checks the behaviour against a value computed independently:
the norm of the gradients AdamW actually receives (measured in the
optimizer's ``step``), the module that was deliberately broken, and the batch
that was fed in.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import List

import pytest
import torch
from torch import nn

from icefall_spkd.models.presets import build_model
from icefall_spkd.optim import Eden
from icefall_spkd.train_safety import InfCheck, TooManyBadBatches
from icefall_spkd.training import get_params, train_one_epoch


class _Cut:
    def __init__(self, cid: str) -> None:
        self.id = cid


class _FakeSP:
    def encode(self, texts, out_type=int):
        return [[3, 4, 5, 3] for _ in texts]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        dict(
            model_preset="tiny", encoder_dim=32, num_encoder_layers=1, num_heads=2,
            feedforward_dim=64, cnn_module_kernel=3, decoder_dim=32, joiner_dim=32,
            vocab_size=10, dropout=0.0,
        )
    )


def _params(exp_dir: Path, **kw):
    params = get_params()
    params.update(
        sp=_FakeSP(), prune_range=3, am_scale=0.0, lm_scale=0.25, simple_loss_scale=0.5,
        warm_step=10, use_fp16=False, use_bf16=False, max_bad_batches=2, average_period=100,
        save_every_n=100, keep_last_k=1, log_interval=1, valid_interval=0, exp_dir=exp_dir,
    )
    params.update(kw)
    return params


def _batches(n: int, prefix: str = "utt") -> List[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "inputs": 3.0 * torch.randn(2, 60, 80, generator=g),
            "supervisions": {
                "text": ["A B", "C D"],
                "cut": [_Cut(f"{prefix}-{i}-a"), _Cut(f"{prefix}-{i}-b")],
                "sequence_idx": torch.tensor([0, 1]),
                "num_frames": torch.tensor([60, 52]),
            },
        }
        for i in range(n)
    ]


class _RecordingAdamW(torch.optim.AdamW):
    """AdamW that measures the total gradient norm it is handed at every step."""

    def __init__(self, params, **kw) -> None:
        super().__init__(params, **kw)
        self.seen_norms: List[float] = []

    def step(self, closure=None):
        sq = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    sq += float((p.grad.double() ** 2).sum())
        self.seen_norms.append(math.sqrt(sq))
        return super().step(closure)


def _train(params, model, batches) -> _RecordingAdamW:
    opt = _RecordingAdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    train_one_epoch(params, model, opt, Eden(opt, 10, 2), batches, [], scaler)
    return opt


_LOGGED_NORM = re.compile(r"grad_norm: (\S+?)[ ,\n]")


def test_max_grad_norm_bounds_the_update(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO")
    # Unclipped: what the gradient norms are (and the logged norm is the real one).
    free = _train(_params(tmp_path), _model(), _batches(3))
    logged_free = [float(x) for x in _LOGGED_NORM.findall(caplog.text)]
    assert len(free.seen_norms) == 3 and len(logged_free) == 3
    for seen, logged in zip(free.seen_norms, logged_free):
        assert logged == pytest.approx(seen, rel=1e-3)
    limit = 0.25 * min(free.seen_norms)
    assert limit > 0

    caplog.clear()
    clipped = _train(_params(tmp_path, max_grad_norm=limit), _model(), _batches(3))
    logged = [float(x) for x in _LOGGED_NORM.findall(caplog.text)]
    # Same model, same first batch: the first pre-clip norm is the unclipped run's.
    assert logged[0] == pytest.approx(free.seen_norms[0], rel=1e-3)
    for seen, before in zip(clipped.seen_norms, logged):
        assert before > limit
        assert seen == pytest.approx(limit, rel=1e-4)  # bounded, and scaled (not zeroed)
    assert "clipped in 3 steps so far" in caplog.text


def test_inf_check_names_the_first_module_toy() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    with torch.no_grad():
        model[1][0].bias[2] = float("inf")
    check = InfCheck(model)
    out = model(torch.randn(3, 4))
    assert not torch.isfinite(out).all()
    # The broken Linear, not its parent Sequential, the ReLU after it or the model.
    assert check.first == "1.0 (Linear)"
    check.reset()
    with torch.no_grad():
        model[1][0].bias[2] = 0.0
    model(torch.randn(3, 4))
    assert check.first is None
    check.remove()


def test_inf_check_and_dump_in_training(tmp_path: Path, caplog) -> None:
    model = _model()
    # Break one Linear deep inside the encoder's first Conformer block.
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")]
    target = names[len(names) // 2]
    with torch.no_grad():
        model.get_submodule(target).bias.fill_(float("inf"))
    batches = _batches(2, prefix="bad")
    params = _params(tmp_path, inf_check=True, max_bad_batches=2)
    with pytest.raises(TooManyBadBatches, match="bad-1-a"):
        _train(params, model, batches)
    assert f"first module with a non-finite output: {target} (Linear)" in caplog.text
    # Both skipped batches were dumped with their cut ids and features.
    for i, b in enumerate(batches):
        f = tmp_path / f"batch-1-{i + 1}.pt"
        assert f.is_file(), sorted(p.name for p in tmp_path.iterdir())
        assert f"batch saved to {f}" in caplog.text
        rec = torch.load(f, weights_only=False)
        assert rec["cut_ids"] == [f"bad-{i}-a", f"bad-{i}-b"]
        assert torch.equal(rec["inputs"], b["inputs"])
        assert rec["supervisions"]["text"] == ["A B", "C D"]
        assert torch.equal(rec["supervisions"]["num_frames"], torch.tensor([60, 52]))
        assert not math.isfinite(rec["losses"]["loss"])
