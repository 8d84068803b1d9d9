"""Tests for icefall_spkd.checkpoint: atomic writes, averaging math, strict loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from icefall_spkd import checkpoint as ckpt
from icefall_spkd.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    update_averaged_model,
)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_atomic_save_survives_crash_mid_write(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "epoch-1.pt"
    atomic_torch_save({"model": {"w": torch.ones(3)}}, f)
    before = f.read_bytes()

    real_save = torch.save

    def crashing_save(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)  # bytes reach the temporary file ...
        fh.flush()
        raise KeyboardInterrupt("simulated crash mid-write")  # ... then we die

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"model": {"w": torch.zeros(1000)}}, f)
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert f.read_bytes() == before
    assert torch.equal(torch.load(f)["model"]["w"], torch.ones(3))
    # no temporary file is left behind
    assert sorted(os.listdir(tmp_path)) == ["epoch-1.pt"]


def test_atomic_save_replaces(tmp_path: Path) -> None:
    f = tmp_path / "a.pt"
    atomic_torch_save({"x": 1}, f)
    atomic_torch_save({"x": 2}, f)
    assert torch.load(f)["x"] == 2


def test_average_checkpoints_known_values(tmp_path: Path) -> None:
    files = []
    for i, v in enumerate([1.0, 2.0, 6.0]):
        f = tmp_path / f"epoch-{i + 1}.pt"
        torch.save(
            {"model": {"w": torch.full((2,), v), "n": torch.tensor(i, dtype=torch.int64)}}, f
        )
        files.append(f)
    avg = average_checkpoints(files)
    assert torch.allclose(avg["w"], torch.full((2,), 3.0))
    assert avg["w"].dtype == torch.float32
    assert avg["n"].item() == 0  # integer entries come from the first file


def test_running_average_and_interval_average(tmp_path: Path) -> None:
    """model_avg after n batches = mean of weights at p, 2p, ..., n; (start, end] recovered."""
    period = 2
    cur = nn.Linear(1, 1, bias=False)
    avg = nn.Linear(1, 1, bias=False).to(torch.float64)
    weights = {}
    saved = {}
    for b in range(1, 13):
        with torch.no_grad():
            cur.weight.fill_(float(b * b))  # weight at batch b is b^2
        weights[b] = float(b * b)
        if b % period == 0:
            update_averaged_model(cur, avg, b, period)
            expect = sum(weights[k] for k in range(period, b + 1, period)) / (b // period)
            assert avg.weight.item() == pytest.approx(expect)
        if b in (4, 12):
            f = tmp_path / f"checkpoint-{b}.pt"
            save_checkpoint(
                f, cur, model_avg=avg, params={"batch_idx_train": b, "average_period": period}
            )
            saved[b] = f
    out = average_checkpoints_with_averaged_model(saved[4], saved[12])
    expect = sum(weights[k] for k in (6, 8, 10, 12)) / 4
    assert out["weight"].item() == pytest.approx(expect)
    assert out["weight"].dtype == torch.float32  # dtype of the 'model' entry


def test_update_averaged_model_rejects_bad_index() -> None:
    m = nn.Linear(1, 1)
    with pytest.raises(ValueError):
        update_averaged_model(m, m, 3, 2)


def test_strict_load_names_keys(tmp_path: Path) -> None:
    m = _tiny()
    f = tmp_path / "epoch-1.pt"
    save_checkpoint(f, m, params={"batch_idx_train": 7})
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f, model=other)
    msg = str(e.value)
    assert "3.weight" in msg and "3.bias" in msg and str(f) in msg
    # unexpected keys
    smaller = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f, model=smaller)
    assert "2.weight" in str(e.value)
    # matching model loads and the rest of the checkpoint is returned
    m2 = _tiny()
    with torch.no_grad():
        m2[0].weight.zero_()
    rest = load_checkpoint(f, model=m2)
    assert torch.equal(m2[0].weight, m[0].weight)
    assert rest["batch_idx_train"] == 7
    assert "rng" in rest


def test_missing_file_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", model=_tiny())


def test_find_and_remove_checkpoints(tmp_path: Path) -> None:
    for b in (100, 20, 300, 4000):
        (tmp_path / f"checkpoint-{b}.pt").write_bytes(b"x")
    (tmp_path / "epoch-1.pt").write_bytes(b"x")
    names = [Path(f).name for f in find_checkpoints(tmp_path)]
    assert names == ["checkpoint-4000.pt", "checkpoint-300.pt", "checkpoint-100.pt", "checkpoint-20.pt"]
    assert [Path(f).name for f in find_checkpoints(tmp_path, iteration=-300)] == [
        "checkpoint-300.pt",
        "checkpoint-100.pt",
        "checkpoint-20.pt",
    ]
    assert [Path(f).name for f in find_checkpoints(tmp_path, iteration=300)] == [
        "checkpoint-4000.pt",
        "checkpoint-300.pt",
    ]
    remove_checkpoints(tmp_path, topk=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-300.pt", "checkpoint-4000.pt", "epoch-1.pt"]


def test_epoch_avg_rules_as_icefall(tmp_path: Path) -> None:
    """--epoch/--avg: plain mean of the last files (epochs before 1 left out), or the interval average."""
    from icefall_spkd.decoding import load_averaged_weights
    from icefall_spkd.utils import AttributeDict

    cur = nn.Linear(1, 1, bias=False)
    avg = nn.Linear(1, 1, bias=False).to(torch.float64)
    # One batch per epoch, averaging period 1: the weight after epoch e is 10 * e.
    for e in range(1, 4):
        with torch.no_grad():
            cur.weight.fill_(10.0 * e)
        update_averaged_model(cur, avg, e, 1)
        save_checkpoint(tmp_path / f"epoch-{e}.pt", cur, model_avg=avg,
                        params={"batch_idx_train": e, "average_period": 1})

    def weight(**kw) -> float:
        params = AttributeDict(exp_dir=tmp_path, iter=0, **kw)
        return load_averaged_weights(params)["weight"].item()

    assert weight(epoch=3, avg=2, use_averaged_model=False) == pytest.approx(25.0)  # (20 + 30) / 2
    assert weight(epoch=2, avg=5, use_averaged_model=False) == pytest.approx(15.0)  # epochs 1, 2 only
    # Averaged model over epochs (1, 3]: the weights after epochs 2 and 3.
    assert weight(epoch=3, avg=2, use_averaged_model=True) == pytest.approx(25.0)
    assert weight(epoch=3, avg=1, use_averaged_model=True) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="needs --epoch > --avg"):
        weight(epoch=3, avg=3, use_averaged_model=True)
