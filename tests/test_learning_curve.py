"""local/learning_curve.py on a tiny fake run: checkpoints, logs, decoding and the plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from recipe_scripts import load_recipe_script

from icefall_spkd.metrics import MetricsTracker
from icefall_spkd.wer import write_error_stats


@pytest.fixture(scope="module")
def lc():
    return load_recipe_script("local/learning_curve.py")


def _train_line(update: int, loss: float) -> str:
    """A training log line as train_loop.py writes it (MetricsTracker's own formatting)."""
    info = MetricsTracker({"frames": 100, "loss": 100 * (loss + 1), "simple_loss": 50.0})
    tot = MetricsTracker({"frames": 1000, "loss": 1000 * loss, "utterances": 30})
    return (
        f"2026-01-01 00:00:00,000 INFO [train_loop.py:163] Epoch 1, batch {update - 1}, "
        f"global_batch {update}, batch_loss {123.0:.10e}, loss[{info}], tot_loss[{tot}], "
        "batch size: 8, lr: 1.000e-03, grad_norm: 2.5"
    )


def _valid_line(update: int, loss: float) -> str:
    valid = MetricsTracker({"frames": 500, "loss": 500 * loss, "utterances": 10})
    return (
        f"2026-01-01 00:00:00,000 INFO [train_loop.py:253] Epoch 1, global_batch {update}, "
        f"validation: {valid}, best valid loss {loss:.4g} (epoch 1)"
    )


def _fake_run(root: Path) -> Path:
    """checkpoint-100/200/300.pt, epoch-1.pt at update 250, two logs (a resumption)."""
    exp = root / "exp"
    (exp / "log").mkdir(parents=True)
    for b in (100, 200, 300):
        torch.save({"batch_idx_train": b, "model": {}}, exp / f"checkpoint-{b}.pt")
    torch.save({"batch_idx_train": 250, "model": {}}, exp / "epoch-1.pt")
    torch.save({"batch_idx_train": 0, "model": {}}, exp / "epoch-0.pt")  # the start: not a point
    first = [_train_line(100, 3.0), _valid_line(100, 3.5), _train_line(200, 2.0)]
    # the resumed run logs update 200 again (its value wins) and goes on
    second = [_train_line(200, 1.9), _valid_line(200, 2.5), _valid_line(250, 2.2),
              _train_line(300, 1.5), _valid_line(300, 2.0), "unrelated line [x=1]"]  # fmt: skip
    (exp / "log" / "log-train-2026-01-01-00-00-00").write_text("\n".join(first) + "\n")
    (exp / "log" / "log-train-2026-01-01-01-00-00").write_text("\n".join(second) + "\n")
    return exp


def test_losses_from_the_logs(lc, tmp_path):
    exp = _fake_run(tmp_path)
    train, valid = lc.read_log_losses(exp)
    assert train == {100: 3.0, 200: 1.9, 300: 1.5}
    assert valid == {100: 3.5, 200: 2.5, 250: 2.2, 300: 2.0}


def test_losses_from_tensorboard_when_there_is_no_log(lc, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    exp = tmp_path / "exp"
    w = SummaryWriter(log_dir=str(exp / "tensorboard"))
    for step, tl, vl in [(10, 3.0, 3.2), (20, 2.0, 2.4)]:
        w.add_scalar("train/tot_loss", tl, step)
        w.add_scalar("train/valid_loss", vl, step)
    w.close()
    train, valid = lc.read_losses(exp)
    assert train == pytest.approx({10: 3.0, 20: 2.0})
    assert valid == pytest.approx({10: 3.2, 20: 2.4})


def test_checkpoints_become_points_by_update(lc, tmp_path):
    exp = _fake_run(tmp_path)
    assert lc.find_points(exp) == [
        (100, "iter", 100), (200, "iter", 200), (250, "epoch", 1), (300, "iter", 300)
    ]  # fmt: skip
    assert lc.find_points(exp, stride=2) == [(200, "iter", 200), (250, "epoch", 1)]


def test_decodes_each_checkpoint_once_and_plots(lc, monkeypatch, tmp_path):
    """decode.py faked: it writes the errs file decode.py would; dev WER falls with updates."""
    exp = _fake_run(tmp_path)
    decoded = []
    wrong = {100: 3, 200: 2, 250: 1, 300: 1}  # wrong words of 4 in the one dev utterance

    real_run = lc.subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if "spkd_transducer/decode.py" not in cmd:  # anything else (matplotlib's font cache)
            return real_run(cmd, *args, **kwargs)
        flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
        assert flag["--decoding-method"] == "greedy_search" and flag["--test-sets"] == "dev"
        assert flag["--avg"] == "1" and flag["--use-averaged-model"] == "false"
        assert flag["--model-preset"] == "tiny"
        kind = "iter" if "--iter" in flag else "epoch"
        num = int(flag[f"--{kind}"])
        decoded.append((kind, num))
        update = num if kind == "iter" else 250
        ref = ["ONE", "TWO", "THREE", "FOUR"]
        hyp = ["X"] * wrong[update] + ref[wrong[update] :]
        (exp / "greedy_search").mkdir(exist_ok=True)
        # the name decode.py gives it: errs-dev-<averaging suffix>.txt
        write_error_stats(exp / "greedy_search" / f"errs-dev-{kind}-{num}-avg-1.txt", "dev",
                          [("u1", ref, hyp)])  # fmt: skip

        class Done:
            returncode = 0

        return Done()

    monkeypatch.setattr(lc.subprocess, "run", fake_run)
    png = tmp_path / "curve.png"
    lc.main(["--exp-dir", str(exp), "--model-preset", "tiny", "--png", str(png)])
    assert sorted(decoded) == [("epoch", 1), ("iter", 100), ("iter", 200), ("iter", 300)]
    assert png.stat().st_size > 10_000  # a real figure
    lines = (exp / "learning_curve.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["updates", "dev_wer", "dev_cer", "train_loss", "valid_loss"]
    rows = [[float(x) for x in ln.split("\t")] for ln in lines[1:]]
    assert [r[0] for r in rows] == [100, 200, 250, 300]
    assert [r[1] for r in rows] == [75.0, 50.0, 25.0, 25.0]
    assert rows[0][3:] == [3.0, 3.5] and math.isnan(rows[2][3]) and rows[2][4] == 2.2
    # a second run decodes nothing
    decoded.clear()
    lc.main(["--exp-dir", str(exp), "--model-preset", "tiny", "--png", str(png)])
    assert decoded == []


def test_clear_errors(lc, tmp_path):
    with pytest.raises(SystemExit, match="no such directory"):
        lc.main(["--exp-dir", str(tmp_path / "nope"), "--png", str(tmp_path / "x.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no checkpoint"):
        lc.main(["--exp-dir", str(tmp_path / "empty"), "--png", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="--model-preset"):
        lc.main(["--exp-dir", "a", "--exp-dir", "b", "--model-preset", "tiny",
                 "--model-preset", "small", "--model-preset", "tiny"])  # fmt: skip
