"""The KD tuning driver (egs/librispeech/ASR/local/tune_kd.py): its choices and its flow."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from recipe_scripts import load_recipe_script


@pytest.fixture(scope="module")
def tune_kd():
    return load_recipe_script("local/tune_kd.py")


def _base_root(tmp_path: Path, **settings) -> Path:
    """A finished run_table.py root as tune_kd reads it: its settings.json only."""
    base = tmp_path / "table"
    base.mkdir()
    defaults = {"seeds": "42", "num_epochs": 6, "teacher_epochs": None, "train_args": "",
                "kd_scale": 0.5, "kd_sampling_scale": 0.5, "kd_temperature": 1.0,
                "kd_prune_range": 5, "kd_sample_temperature": 1.0}  # fmt: skip
    (base / "settings.json").write_text(json.dumps({**defaults, **settings}))
    return base


def _fake_run_table(dev_of, commands: list):
    """A stand-in for ``subprocess.run`` of run_table.py: records the command and writes the
    point's result.json with ``dev_of(flags) -> (row, dev WER stats)``."""

    def run(cmd, cwd, env, stdout, stderr):
        commands.append(cmd)
        flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
        row, dev = dev_of(flag)
        d = Path(flag["--exp-root"]) / row / "seed-42"
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps({"wer": {"modified_beam_search": {"dev": dev}}}))
        return SimpleNamespace(returncode=0)

    return run


def test_parse_stage(tune_kd):
    assert tune_kd.parse_stage("kd_scale=0.25,1") == ("kd_scale", [0.25, 1.0])
    assert tune_kd.parse_stage("kd-prune-range=3,8") == ("kd_prune_range", [3, 8])
    with pytest.raises(SystemExit, match="SETTING"):
        tune_kd.parse_stage("lr=0.1")
    with pytest.raises(SystemExit, match="ints"):
        tune_kd.parse_stage("kd_prune_range=3.5")


def test_choose_needs_a_gain_of_min_gain(tune_kd):
    assert tune_kd.choose(0.5, 70.0, {0.25: 71.0, 1.0: 69.0}, 0.5) == 1.0
    assert tune_kd.choose(0.5, 70.0, {0.25: 71.0, 1.0: 69.6}, 0.5) == 0.5  # within noise: keep
    assert tune_kd.choose(0.5, 70.0, {0.25: 68.0, 1.0: 69.0}, 0.0) == 0.25
    assert tune_kd.choose(0.5, 70.0, {}, 0.5) == 0.5


def test_coordinate_search_moves_along_the_stages(tune_kd, monkeypatch, tmp_path):
    """Fake training: dev WER is a known function of the settings; the search must follow it."""
    base = _base_root(tmp_path, train_args="--x 1", kd_sampling_scale=1.0)

    def fake_wer(kd):  # lambda 1 helps by 2, rho 2 by 0.3 (below min-gain), tau 2 hurts
        return (
            70.0
            - 2.0 * (kd["kd_scale"] == 1.0)
            - 0.3 * (kd["kd_sampling_scale"] == 2.0)
            + (kd["kd_temperature"] == 2.0)
        )

    def dev_of(flag):
        kd = {k: float(flag["--" + k.replace("_", "-")]) for k in tune_kd.KD_SETTINGS}
        return "spkd-n2", {"wer": fake_wer(kd), "ins": 1, "del": 2, "sub": 3}

    commands = []
    fake_run = _fake_run_table(dev_of, commands)
    monkeypatch.setattr(tune_kd.subprocess, "run", fake_run)
    argv = ["tune_kd.py", "--base-root", str(base), "--tune-root", str(tmp_path / "tune"),
            "--stage", "kd_scale=0.25,1.0", "--stage", "kd_sampling_scale=2.0",
            "--stage", "kd_temperature=1.0,2.0"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    tune_kd.main()
    # start + 2 + 1 + 1 (tau 1.0 is the current value: not retrained)
    assert len(commands) == 5
    first = commands[0]
    assert first[first.index("--train-args") + 1] == "--x 1" and "--teacher-epochs" not in first
    assert first[first.index("--test-sets") + 1] == "dev"  # tuning never decodes the test sets
    text = (tmp_path / "tune" / "TUNING.md").read_text()
    assert "Chosen: lambda 1.0, rho 1.0, tau 1.0, R 5" in text
    # a second run asks the driver about the same points again (it skips what is done)
    first_round = [c[c.index("--exp-root") + 1] for c in commands]
    commands.clear()
    tune_kd.main()
    assert [c[c.index("--exp-root") + 1] for c in commands] == first_round


def test_widen_and_best(tune_kd):
    assert tune_kd.widen([0.5, 1, 2], 2, 2.0) == 4.0
    assert tune_kd.widen([0.5, 1, 2], 0.5, 2.0) == 0.25
    assert tune_kd.widen([0.5, 1, 2], 1, 2.0) is None
    assert tune_kd.best_lambda({0.5: 70.0, 1.0: 69.0, 2.0: 69.0}) == 1.0  # tie: the smaller
    assert tune_kd.parse_grid("2,0.5,1,1") == [0.5, 1.0, 2.0]
    with pytest.raises(SystemExit, match="two positive"):
        tune_kd.parse_grid("1")
    with pytest.raises(SystemExit, match="spkd-n2's lambda"):
        tune_kd.tunable_rows("pkd,pkd-eq")
    with pytest.raises(SystemExit, match="not a KD row"):
        tune_kd.tunable_rows("baseline")


def test_lambda_per_method_widens_at_the_edges(tune_kd, monkeypatch, tmp_path):
    """Fake dev WERs with known minima: PKD's lies past the grid's top (found by widening),
    SP-KD's inside it, full-lattice KD's below anything the widening may reach."""
    import math

    base = _base_root(tmp_path, row_kd_scale={"pkd": 3.0})
    optimum = {"pkd": 8.0, "spkd-n2": 1.0, "full-kd": 0.001}

    def fake_wer(row, lam):  # a parabola in log2(lambda) around the row's optimum
        return 60.0 + (math.log2(lam) - math.log2(optimum[row])) ** 2

    def dev_of(flag):
        assert "--row-kd-scale" not in flag  # a point sets the lambda with --kd-scale
        assert flag["--test-sets"] == "dev" and flag["--kd-sampling-scale"] == "0.5"
        row = flag["--rows"]
        dev = {"wer": fake_wer(row, float(flag["--kd-scale"])), "ins": 1, "del": 2, "sub": 3,
               "ref_words": 100}  # fmt: skip
        return row, dev

    commands = []
    fake_run = _fake_run_table(dev_of, commands)
    monkeypatch.setattr(tune_kd.subprocess, "run", fake_run)
    tune_root = tmp_path / "tune"
    argv = ["tune_kd.py", "--base-root", str(base), "--tune-root", str(tune_root),
            "--rows", "pkd,spkd-n2,full-kd", "--lambda-grid", "0.25,0.5,1,2,4",
            "--max-widen", "2", "--jobs", "2"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    tune_kd.main()
    tried = sorted((c[c.index("--rows") + 1], float(c[c.index("--kd-scale") + 1])) for c in commands)
    grid = [0.25, 0.5, 1.0, 2.0, 4.0]
    assert tried == sorted(
        [("pkd", v) for v in grid + [8.0, 16.0]]  # 4 at the edge -> 8 -> 16 is worse: stop
        + [("spkd-n2", v) for v in grid]  # inside: no widening
        + [("full-kd", v) for v in grid + [0.125, 0.0625]]  # max-widen 2, still at the edge
    )
    record = json.loads((tune_root / "lambdas.json").read_text())
    assert record["row_kd_scale"] == {"pkd": 8.0, "spkd-n2": 1.0, "full-kd": 0.0625}
    assert record["at_grid_edge"] == ["full-kd"]
    assert record["kd_settings"]["kd_sampling_scale"] == 0.5
    text = (tune_root / "TUNING.md").read_text()
    assert "| 0.0625 (grid edge) |" in text and "= 1.5." in text  # pkd-eq: 1 x (1 + 0.5)
    # resumable: a second run asks the driver about the same points, no new ones
    commands.clear()
    tune_kd.main()
    assert sorted((c[c.index("--rows") + 1], float(c[c.index("--kd-scale") + 1])) for c in commands) == tried
    # the table driver takes the lambdas
    run_table = load_recipe_script("local/run_table.py")
    args = run_table.get_parser().parse_args(
        ["--kd-sampling-scale", "0.5", "--kd-scales-from", str(tune_root / "lambdas.json")]
    )
    assert run_table.resolve_row_scales(args) == {"full-kd": 0.0625, "pkd": 8.0, "spkd-n2": 1.0}
    # ... but not with another rho than they were tuned with
    args.kd_sampling_scale = 1.0
    with pytest.raises(SystemExit, match="kd_sampling_scale"):
        run_table.resolve_row_scales(args)


def test_a_point_holding_other_decoding_wers_is_decoded_again(tune_kd, monkeypatch, tmp_path):
    """A point linked from the base root holds that root's WERs (beam 8 there); tuning compares
    beam-4 WERs, so the point must go through the driver (which decodes it at beam 4) before
    its WER is read. The stale beam-8 WER here would win the search; the beam-4 one loses."""
    base = _base_root(tmp_path, num_epochs=2, kd_scale=2.0)
    beam4 = {1.0: 45.0, 2.0: 44.0, 4.0: 43.0}  # the best is 4
    tune_root = tmp_path / "tune"
    linked = tune_root / "pkd" / "lambda2.0-rho0.5-tau1.0-R5-stau1.0" / "pkd" / "seed-42"
    linked.mkdir(parents=True)
    stale = {"wer": 40.0, "ins": 1, "del": 2, "sub": 3, "ref_words": 100}  # beam 8, base root
    (linked / "result.json").write_text(json.dumps({"wer": {"modified_beam_search": {"dev": stale}}}))

    def dev_of(flag):
        dev = {"wer": beam4[float(flag["--kd-scale"])], "ins": 1, "del": 2, "sub": 3,
               "ref_words": 100}  # fmt: skip
        return "pkd", dev

    commands = []
    fake_run = _fake_run_table(dev_of, commands)
    monkeypatch.setattr(tune_kd.subprocess, "run", fake_run)
    argv = ["tune_kd.py", "--base-root", str(base), "--tune-root", str(tune_root),
            "--rows", "pkd", "--lambda-grid", "1,2,4", "--max-widen", "0"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    tune_kd.main()
    beams = [c[c.index("--beam-size") + 1] for c in commands]
    assert beams == [str(tune_kd.TUNE_BEAM_SIZE)] * 3
    record = json.loads((tune_root / "lambdas.json").read_text())
    assert record["dev_wer"]["pkd"] == {"1": 45.0, "2": 44.0, "4": 43.0}
    assert record["row_kd_scale"] == {"pkd": 4.0}
