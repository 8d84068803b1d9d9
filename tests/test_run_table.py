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
    monkeypatch.setattr(run_table, "load_results", lambda root, order: {})
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


def _finished_run(
    root: Path, key: str, seed: int, sets=("dev", "test-clean"), suffix: str = ""
) -> Path:
    import json

    d = root / key / f"seed-{seed}"
    d.mkdir(parents=True)
    wer = {"modified_beam_search": {s: {"wer": 50.0} for s in sets}}
    made_with = {"modified_beam_search": suffix}
    (d / "result.json").write_text(
        json.dumps({"row": key, "seed": seed, "wer": wer, "decode_suffix": made_with})
    )
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

    args = run_table.get_parser().parse_args([])
    suffix = run_table.decode_suffix(args, "baseline", "modified_beam_search")
    d = _finished_run(tmp_path, "baseline", 42, sets=("dev",), suffix=suffix)
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


def test_results_of_another_beam_size_are_not_reused(run_table, monkeypatch, tmp_path):
    """A run whose result.json holds a method's WERs at another beam size (as when a
    root with other decoding settings links it) is decoded again with this root's."""
    import json

    beam8 = run_table.decode_suffix(
        run_table.get_parser().parse_args(["--beam-size", "8"]), "pkd", "modified_beam_search"
    )
    d = _finished_run(tmp_path, "baseline", 42, sets=("dev",), suffix=beam8)
    (d / "train_time.json").write_text(json.dumps({"seconds": 3.0}))
    decoded = []

    def fake_decode(args, key, exp_dir, method, sets):
        decoded.append((args.beam_size, sets))
        return {s: {"wer": 40.0 + args.beam_size} for s in sets}

    rendered = []

    def fake_summarise(results, method, sets):
        rendered.append(results["baseline"][0]["wer"][method]["dev"]["wer"])

    for name, fake in (("train", lambda *a: None), ("decode", fake_decode),
                       ("count_params", lambda d, e: 10), ("num_batches", lambda d, e: 5),
                       ("summarise", fake_summarise), ("render_markdown", lambda *a: "table"),
                       ("plot_chart", lambda *a: None)):  # fmt: skip
        monkeypatch.setattr(run_table, name, fake)
    argv = ["run_table.py", "--rows", "baseline", "--exp-root", str(tmp_path),
            "--decoding-methods", "modified_beam_search", "--test-sets", "dev"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv + ["--beam-size", "4"])
    run_table.main()
    assert decoded == [(4, ["dev"])]
    result = json.loads((d / "result.json").read_text())
    assert result["wer"]["modified_beam_search"] == {"dev": {"wer": 44.0}}
    assert result["decode_suffix"]["modified_beam_search"].endswith("-beam-size-4")
    monkeypatch.setattr("sys.argv", argv + ["--beam-size", "4"])
    run_table.main()
    assert decoded == [(4, ["dev"])]  # recorded with this setting now: reused
    # the beam-8 WERs were kept beside the beam-4 ones: a beam-8 root (the one that
    # linked the run) needs no decoding and renders its own numbers, whoever wrote last
    monkeypatch.setattr("sys.argv", argv + ["--beam-size", "8"])
    run_table.main()
    assert decoded == [(4, ["dev"])]
    assert rendered == [44.0, 44.0, 50.0]


def test_pkd_control_and_per_row_lambdas_reach_train_py(run_table, monkeypatch, tmp_path):
    """pkd-eq trains PKD at lambda_spkd * (1 + rho); per-row lambdas override --kd-scale."""
    base = ["--kd-scale", "0.5", "--kd-sampling-scale", "1.0"]
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "pkd-eq", base)
    assert cmd.count("--kd-scale") == 1 and _flag(cmd, "--kd-scale") == "1.0"  # 0.5 * 2
    assert _flag(cmd, "--kd-loss") == "pkd" and _flag(cmd, "--kd-sampler") == "none"
    (tmp_path / "lambdas.json").write_text('{"row_kd_scale": {"pkd": 4.0, "spkd-n2": 2.0}}')
    argv = ["--kd-sampling-scale", "0.5", "--kd-scales-from", str(tmp_path / "lambdas.json")]
    args = run_table.get_parser().parse_args(argv)
    assert run_table.resolve_row_scales(args) == {"pkd": 4.0, "spkd-n2": 2.0}
    args = run_table.get_parser().parse_args(argv + ["--row-kd-scale", "spkd-n2=1.0"])
    scales = run_table.resolve_row_scales(args)
    assert scales == {"pkd": 4.0, "spkd-n2": 1.0}  # the command line wins
    for key, lam in [("pkd", "4.0"), ("spkd-n2", "1.0"), ("pkd-eq", "1.5"), ("spkd-n4", "0.5")]:
        (tmp_path / key).mkdir()
        cmd = _train_cmd(run_table, monkeypatch, tmp_path / key, key,
                         ["--kd-scale", "0.5", "--kd-sampling-scale", "0.5",
                          "--row-kd-scale", "pkd=4,spkd-n2=1"])  # fmt: skip
        assert _flag(cmd, "--kd-scale") == lam, key
    bad = run_table.get_parser().parse_args(["--row-kd-scale", "pkd-eq=3"])
    with pytest.raises(SystemExit, match="spkd-n2's"):
        run_table.resolve_row_scales(bad)


def test_reuse_compares_the_lambda_a_row_gets(run_table, tmp_path):
    """A PKD run made with --kd-scale 2 is the run --row-kd-scale pkd=2 asks for; SP-KD's is not."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_table.check_settings(run_table.get_parser().parse_args(["--kd-scale", "2.0"]), src)
    for key in ("pkd", "spkd-n2", "pkd-eq"):
        _finished_run(src, key, 42)
    args = run_table.get_parser().parse_args(["--kd-scale", "0.5", "--row-kd-scale", "pkd=2"])
    args.row_kd_scale = run_table.resolve_row_scales(args)
    tasks = [("pkd", 42), ("spkd-n2", 42), ("pkd-eq", 42)]
    run_table.link_reusable_runs(args, dst, tasks, [src])
    assert (dst / "pkd/seed-42").is_symlink()
    assert not (dst / "spkd-n2/seed-42").exists()  # made at lambda 2, wanted at 0.5
    assert not (dst / "pkd-eq/seed-42").exists()  # made at 2 * 2 = 4, wanted at 0.5 * 2 = 1


REFS = {f"u{i:02d}": [f"W{i}{j}" for j in range(5)] for i in range(20)}  # 20 x 5 words
# word substitutions per utterance on test-clean, for utterances u00..u09 (the rest correct)
ROW_ERRORS = {"teacher": 0, "baseline": 3, "pkd": 2, "pkd-eq": 1, "spkd-n2": 1}


def _fake_pipeline(run_table, monkeypatch):
    """train.py / export.py / decode.py replaced by fakes that write what the real ones would."""
    from icefall_spkd.wer import write_error_stats, write_recogs

    trained = []

    def fake_run(cmd, dry_run, log_file=None):
        flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
        exp_dir = Path(flag["--exp-dir"])
        exp_dir.mkdir(parents=True, exist_ok=True)
        key, seed = exp_dir.parent.name, int(exp_dir.name.split("-")[1])
        if cmd[1].endswith("train.py"):
            trained.append((key, seed, flag.get("--kd-scale")))
            (exp_dir / f"epoch-{flag['--num-epochs']}.pt").write_bytes(b"")
        elif cmd[1].endswith("export.py"):
            (exp_dir / "pretrained.pt").write_bytes(b"")
        else:  # decode.py
            method = flag["--decoding-method"]
            suffix = f"epoch-{flag['--epoch']}-avg-{flag['--avg']}"
            suffix += "-use-averaged-model" if flag["--use-averaged-model"] == "true" else ""
            suffix += f"-beam-size-{flag['--beam-size']}" if method == "modified_beam_search" else ""
            if "--lm-path" in flag:
                suffix += f"-lm-scale-{flag['--lm-scale']}"
                suffix += f"-token-bonus-{flag['--lm-token-bonus']}" if float(flag["--lm-token-bonus"]) else ""
                suffix += f"-ilm-scale-{flag['--ilm-scale']}" if "--ilm-scale" in flag else ""
                suffix += "-lexicon" if "--lm-lexicon" in flag else ""
            sets = cmd[cmd.index("--test-sets") + 1 :]
            n_err = ROW_ERRORS[key] + (seed - 42 if key == "baseline" else 0)
            results = [
                (c, ref, ["X"] * n_err + ref[n_err:] if int(c[1:]) < 10 else ref)
                for c, ref in REFS.items()
            ]
            for s in sets:
                (exp_dir / method).mkdir(exist_ok=True)
                write_recogs(exp_dir / method / f"recogs-{s}-{suffix}.txt", results)
                write_error_stats(exp_dir / method / f"errs-{s}-{suffix}.txt", s, results)

    monkeypatch.setattr(run_table, "_run", fake_run)
    monkeypatch.setattr(run_table, "count_params", lambda d, e: 1000)
    monkeypatch.setattr(run_table, "num_batches", lambda d, e: 10)
    monkeypatch.setattr(run_table, "plot_chart", lambda *a: None)
    return trained


def test_fair_table_from_fake_runs(run_table, monkeypatch, tmp_path):
    """Four rows with three seeds, per-row lambdas, CER, S/D/I and the bootstrap, end to end."""
    import json

    trained = _fake_pipeline(run_table, monkeypatch)
    argv = ["run_table.py", "--rows", "baseline,pkd,pkd-eq,spkd-n2", "--exp-root", str(tmp_path),
            "--extra-seeds", "43,44", "--test-sets", "dev,test-clean",
            "--decoding-methods", "greedy_search", "--kd-sampling-scale", "0.5",
            "--row-kd-scale", "pkd=4,spkd-n2=2", "--bootstrap-resamples", "2000"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    run_table.main()
    # the teacher once, each of the four rows with three seeds (the default --extra-seed-rows)
    assert sorted(trained) == sorted(
        [("teacher", 42, None)]
        + [(k, s, lam) for k, lam in [("baseline", None), ("pkd", "4.0"), ("pkd-eq", "3.0"),
                                      ("spkd-n2", "2.0")] for s in (42, 43, 44)]
    )  # fmt: skip
    res = json.loads((tmp_path / "pkd-eq/seed-43/result.json").read_text())
    assert res["kd"]["kd_scale"] == 3.0
    assert res["wer"]["greedy_search"]["test-clean"]["cer"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    lines = text.splitlines()
    row: dict = {}
    for ln in lines:  # the first table's line of each row (the bootstrap table comes after)
        if ln.startswith("| "):
            row.setdefault(ln.split(" | ")[0][2:], ln)
    # PKD: 2 substitutions in 10 of 20 five-word utterances = 20 % WER, all substitutions
    assert "| 20.00 ± 0.00 |" in row["PKD"] and "| 20.0 / 0.0 / 0.0 |" in row["PKD"]
    # baseline 30, 40, 50 %: mean 40, sample std 10; teacher 0: PKD closes half the gap
    assert "| 40.00 ± 10.00 |" in row["student baseline"]
    assert "+50.0" in row["PKD"] and "| 4 |" in row["PKD"]
    assert "| 2 (3) |" in row["SP-KD (teacher sampler, N=2)"]  # lambda 2, total 2 * 1.5
    # the bootstrap: SP-KD (10 errors) against PKD (20) and the control (10) on 100 words
    boot = [ln for ln in lines if ln.startswith("| SP-KD (teacher sampler, N=2) | PKD")]
    assert "| 42, 43, 44 | 20 | -10.00 |" in boot[0]
    assert "| 42, 43, 44 | 20 | +0.00 | [+0.00, +0.00] |" in boot[1]
    # any rows against any others, rendered again from the finished runs
    argv += ["--bootstrap-rows", "pkd", "--bootstrap-against", "baseline",
             "--results", str(tmp_path / "AGAINST_BASELINE.md")]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    run_table.main()
    boot = [ln for ln in (tmp_path / "AGAINST_BASELINE.md").read_text().splitlines()
            if " | 42, 43, 44 | 20 | " in ln]  # fmt: skip
    # PKD 20 % against the baseline's 30, 40, 50 %: -20 points, the only comparison
    assert len(boot) == 1 and boot[0].startswith("| PKD | student baseline | 42, 43, 44 | 20 | -20.00 |")


def test_lm_method_decodes_with_the_lm_and_keeps_both_results(run_table, monkeypatch, tmp_path):
    """modified_beam_search_lm: decode.py gets --lm-path/--lm-scale; both methods' WERs are kept."""
    import json

    _fake_pipeline(run_table, monkeypatch)
    decodes = []
    fake_run = run_table._run

    def spy(cmd, dry_run, log_file=None):
        if cmd[1].endswith("decode.py"):
            decodes.append(cmd)
        fake_run(cmd, dry_run, log_file)

    monkeypatch.setattr(run_table, "_run", spy)
    lm = tmp_path / "lm.pt"
    argv = ["run_table.py", "--rows", "baseline", "--exp-root", str(tmp_path / "exp"),
            "--test-sets", "dev", "--decoding-methods", "modified_beam_search,modified_beam_search_lm",
            "--lm-scale", "0.5", "--lm-token-bonus", "1.0", "--lm-path", str(lm),
            "--lm-lexicon", str(tmp_path / "words.txt"), "--beam-size", "8", "--ilm-scale", "0.2"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="needs --lm-path to an LM file"):
        run_table.main()
    lm.write_bytes(b"")
    with pytest.raises(SystemExit, match="--lm-lexicon .*words.txt: no such file"):
        run_table.main()
    (tmp_path / "words.txt").write_text("A B\n")
    run_table.main()
    assert len(decodes) == 2
    plain, fused = decodes
    assert "--lm-path" not in plain
    assert _flag(fused, "--decoding-method") == "modified_beam_search"
    assert _flag(fused, "--lm-path") == str(lm) and _flag(fused, "--lm-scale") == "0.5"
    assert _flag(fused, "--lm-token-bonus") == "1.0" and _flag(fused, "--ilm-scale") == "0.2"
    assert _flag(fused, "--lm-lexicon") == str(tmp_path / "words.txt")
    d = tmp_path / "exp/baseline/seed-42/modified_beam_search"
    name = "errs-dev-epoch-6-avg-2-use-averaged-model-beam-size-8-lm-scale-0.5-token-bonus-1.0-ilm-scale-0.2-lexicon.txt"
    assert (d / name).exists()
    d = d.parent
    wer = json.loads((d / "result.json").read_text())["wer"]
    assert set(wer) == {"modified_beam_search", "modified_beam_search_lm"}


def test_teacher_input_reaches_the_kd_rows_only(run_table, monkeypatch, tmp_path):
    cmd = _train_cmd(run_table, monkeypatch, tmp_path, "pkd", ["--kd-teacher-input", "clean"])
    assert _flag(cmd, "--kd-teacher-input") == "clean"
    assert "--kd-teacher-input" not in _train_cmd(
        run_table, monkeypatch, tmp_path, "baseline", ["--kd-teacher-input", "clean"]
    )
    # runs made before the flag existed were made with the augmented teacher input:
    # the teacher and baseline are reused for clean, the KD rows are not
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "settings.json").write_text('{"kd_scale": 2.0}')
    for key in ("teacher", "baseline", "pkd"):
        _finished_run(src, key, 42)
    args = run_table.get_parser().parse_args(["--kd-teacher-input", "clean"])
    run_table.link_reusable_runs(args, dst, [("teacher", 42), ("baseline", 42), ("pkd", 42)], [src])
    assert (dst / "teacher/seed-42").is_symlink() and (dst / "baseline/seed-42").is_symlink()
    assert not (dst / "pkd/seed-42").exists()
    args = run_table.get_parser().parse_args([])  # augmented, as the old runs
    run_table.link_reusable_runs(args, dst, [("pkd", 42)], [src])
    assert (dst / "pkd/seed-42").is_symlink()


def test_teacher_train_args_reach_the_teacher_only(run_table, monkeypatch, tmp_path):
    argv = ["--train-args", "--base-lr 5e-3", "--teacher-train-args", "--base-lr 2e-3 --use-ctc true"]
    for d in ("t", "t2", "baseline", "pkd"):
        (tmp_path / d).mkdir()
    teacher = _train_cmd(run_table, monkeypatch, tmp_path / "t", "teacher", argv)
    assert _flag(teacher, "--base-lr") == "2e-3" and _flag(teacher, "--use-ctc") == "true"
    for key in ("baseline", "pkd"):
        cmd = _train_cmd(run_table, monkeypatch, tmp_path / key, key, argv)
        assert _flag(cmd, "--base-lr") == "5e-3" and "--use-ctc" not in cmd
    # without it the teacher gets --train-args like every row
    teacher = _train_cmd(run_table, monkeypatch, tmp_path / "t2", "teacher", argv[:2])
    assert _flag(teacher, "--base-lr") == "5e-3"
    # a baseline does not depend on the teacher's arguments; the teacher and KD rows do
    assert "teacher_train_args" not in run_table.row_settings("baseline")
    assert "teacher_train_args" in run_table.row_settings("teacher")
    assert "teacher_train_args" in run_table.row_settings("pkd")
