"""The table driver's resumption logic (egs/librispeech/ASR/local/run_table.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from recipe_scripts import load_recipe_script


@pytest.fixture(scope="module")
def run_table():
    return load_recipe_script("local/run_table.py")


def _train_cmd(run_table, monkeypatch, tmp_path, key, argv=()):
    """The train.py command the driver would run for ``key`` in ``tmp_path`` (None: nothing)."""
    calls = []
    monkeypatch.setattr(run_table, "_run", lambda cmd, dry, log=None: calls.append(cmd))
    args = run_table.get_parser().parse_args(["--num-epochs", "4", *argv])
    run_table.train(args, key, 7, tmp_path, tmp_path / "teacher.pt")
    return calls[0] if calls else None


def _touch(path: Path, mtime: float) -> None:
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_fresh_run_starts_at_the_beginning(run_table, monkeypatch, tmp_path):
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "baseline")
    assert _flag(cmd, "--start-epoch") is None and _flag(cmd, "--start-batch") is None
    assert _flag(cmd, "--seed") == "7" and _flag(cmd, "--model-preset") == "tiny"
    assert "--teacher-checkpoint" not in cmd


def test_resumes_after_the_newest_epoch(run_table, monkeypatch, tmp_path):
    _touch(tmp_path / "epoch-1.pt", 100)
    _touch(tmp_path / "epoch-2.pt", 200)
    _touch(tmp_path / "checkpoint-50.pt", 150)  # older than epoch-2: ignored
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "baseline")
    assert _flag(cmd, "--start-epoch") == "3" and _flag(cmd, "--start-batch") is None


def test_resumes_from_a_newer_mid_epoch_checkpoint(run_table, monkeypatch, tmp_path):
    _touch(tmp_path / "epoch-2.pt", 200)
    _touch(tmp_path / "checkpoint-180.pt", 300)
    _touch(tmp_path / "checkpoint-120.pt", 250)
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "baseline")
    assert _flag(cmd, "--start-batch") == "180" and _flag(cmd, "--start-epoch") is None


def test_finished_run_is_not_retrained(run_table, monkeypatch, tmp_path):
    _touch(tmp_path / "epoch-4.pt", 100)
    assert _train_cmd(run_table, monkeypatch, tmp_path, "baseline") is None


def test_kd_rows_get_the_teacher_and_their_flags(run_table, monkeypatch, tmp_path):
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "spkd-n4", ["--kd-scale", "0.3"])
    assert _flag(cmd, "--teacher-checkpoint") == str(tmp_path / "teacher.pt")
    assert _flag(cmd, "--kd-scale") == "0.3"
    assert _flag(cmd, "--kd-sampler") == "teacher" and _flag(cmd, "--kd-num-samples") == "4"


def test_averaging_fits_the_run_length(run_table):
    args = run_table.get_parser().parse_args(["--avg", "2"])
    assert run_table.averaging(args, 6) == (2, True)  # epochs 5..6 from epoch-4 and epoch-6
    assert run_table.averaging(args, 2) == (1, True)
    assert run_table.averaging(args, 1) == (1, False)  # no epoch-0: the last epoch as it is


def test_jobs_run_the_teacher_first_then_every_student_once(run_table, monkeypatch, tmp_path):
    """--jobs 2: teacher alone first, then each (row, seed) exactly once, one thread each."""
    import json
    import threading

    order, lock = [], threading.Lock()

    def fake_train(args, key, seed, exp_dir, teacher_ckpt):
        with lock:
            order.append((key, seed, run_table._THREADS.get("OMP_NUM_THREADS")))
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "train_time.json").write_text(json.dumps({"seconds": 1.0}))

    monkeypatch.setattr(run_table, "train", fake_train)
    monkeypatch.setattr(run_table, "export_teacher", lambda args, d: None)
    monkeypatch.setattr(
        run_table, "decode", lambda args, key, d, m, sets: {s: {"wer": 1.0} for s in sets}
    )
    monkeypatch.setattr(run_table, "count_params", lambda d, e: 10)
    monkeypatch.setattr(run_table, "num_batches", lambda d, e: 5)
    monkeypatch.setattr(run_table, "load_results", lambda root, order: [])
    monkeypatch.setattr(run_table, "summarise", lambda *a: None)
    monkeypatch.setattr(run_table, "render_markdown", lambda *a: "table")
    monkeypatch.setattr(run_table, "plot_chart", lambda *a: None)
    monkeypatch.setattr(run_table.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(run_table, "_THREADS", {})
    monkeypatch.setattr(
        "sys.argv",
        ["run_table.py", "--rows", "baseline,pkd", "--exp-root", str(tmp_path), "--jobs", "2",
         "--extra-seeds", "43", "--extra-seed-rows", "baseline"],
    )  # fmt: skip
    run_table.main()
    assert order[0] == ("teacher", 42, None)  # alone, before any student, all cores
    assert sorted(order[1:]) == [("baseline", 42, "1"), ("baseline", 43, "1"), ("pkd", 42, "1")]
    for key, seed in [("teacher", 42), ("baseline", 42), ("baseline", 43), ("pkd", 42)]:
        assert (tmp_path / key / f"seed-{seed}" / "result.json").exists()
    # a second run finds every result and trains nothing
    order.clear()
    run_table.main()
    assert order == []


def test_exp_root_made_with_other_settings_is_refused(run_table, tmp_path):
    args = run_table.get_parser().parse_args(["--bpe-model", "data/lang_bpe_50/bpe.model"])
    run_table.check_settings(args, tmp_path)
    run_table.check_settings(args, tmp_path)  # same settings: fine
    other = run_table.get_parser().parse_args(["--bpe-model", "data/lang_bpe_500/bpe.model"])
    with pytest.raises(SystemExit, match="bpe_model"):
        run_table.check_settings(other, tmp_path)
    rows_only = run_table.get_parser().parse_args(
        ["--bpe-model", "data/lang_bpe_50/bpe.model", "--rows", "baseline", "--jobs", "2"]
    )
    run_table.check_settings(rows_only, tmp_path)  # rows and jobs do not change results


def _finished_run(root: Path, key: str, seed: int, sets=("dev", "test-clean")) -> Path:
    import json

    d = root / key / f"seed-{seed}"
    d.mkdir(parents=True)
    wer = {"modified_beam_search": {s: {"wer": 50.0} for s in sets}}
    (d / "result.json").write_text(json.dumps({"row": key, "seed": seed, "wer": wer}))
    return d


def test_reuse_links_only_runs_made_with_the_settings_their_row_depends_on(run_table, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    made = run_table.get_parser().parse_args(["--kd-scale", "0.5"])
    run_table.check_settings(made, src)
    for key in ("teacher", "baseline", "pkd"):
        _finished_run(src, key, 42)
    # other KD settings: the teacher and the baseline are reused, the PKD run is not
    args = run_table.get_parser().parse_args(["--kd-scale", "1.0"])
    tasks = [("teacher", 42), ("baseline", 42), ("baseline", 43), ("pkd", 42)]
    run_table.link_reusable_runs(args, dst, tasks, [src])
    assert (dst / "teacher/seed-42").resolve() == (src / "teacher/seed-42").resolve()
    assert (dst / "baseline/seed-42").is_symlink()
    assert not (dst / "baseline/seed-43").exists()  # no such run in src: trained here
    assert not (dst / "pkd/seed-42").exists()
    # other student epochs: nothing the students made is reused, the teacher still is
    dst2 = tmp_path / "dst2"
    args2 = run_table.get_parser().parse_args(["--kd-scale", "0.5", "--num-epochs", "9"])
    run_table.link_reusable_runs(args2, dst2, tasks, [src])
    assert (dst2 / "teacher/seed-42").is_symlink()
    assert not (dst2 / "baseline/seed-42").exists() and not (dst2 / "pkd/seed-42").exists()


def test_a_finished_run_is_decoded_for_a_missing_test_set(run_table, monkeypatch, tmp_path):
    """A result without a requested set is decoded for it only; the old sets are kept."""
    import json

    d = _finished_run(tmp_path, "baseline", 42, sets=("dev",))
    (d / "train_time.json").write_text(json.dumps({"seconds": 3.0}))
    decoded = []

    def fake_decode(args, key, exp_dir, method, sets):
        decoded.append(sets)
        return {s: {"wer": 60.0} for s in sets}

    monkeypatch.setattr(run_table, "train", lambda *a: None)
    monkeypatch.setattr(run_table, "decode", fake_decode)
    monkeypatch.setattr(run_table, "count_params", lambda d, e: 10)
    monkeypatch.setattr(run_table, "num_batches", lambda d, e: 5)
    monkeypatch.setattr(run_table, "summarise", lambda *a: None)
    monkeypatch.setattr(run_table, "render_markdown", lambda *a: "table")
    monkeypatch.setattr(run_table, "plot_chart", lambda *a: None)
    argv = ["run_table.py", "--rows", "baseline", "--exp-root", str(tmp_path),
            "--decoding-methods", "modified_beam_search"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv + ["--test-sets", "dev"])
    run_table.main()
    assert decoded == []  # dev is there: nothing to do
    monkeypatch.setattr("sys.argv", argv + ["--test-sets", "test-other"])
    run_table.main()
    assert decoded == [["test-other"]]
    wer = json.loads((d / "result.json").read_text())["wer"]["modified_beam_search"]
    assert wer == {"dev": {"wer": 50.0}, "test-other": {"wer": 60.0}}
