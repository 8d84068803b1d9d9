"""The KD tuning driver (egs/librispeech/ASR/local/tune_kd.py): its choices and its flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_scripts import load_recipe_script


@pytest.fixture(scope="module")
def tune_kd():
    return load_recipe_script("local/tune_kd.py")


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
    base = tmp_path / "table"
    base.mkdir()
    settings = {"seeds": "42", "num_epochs": 6, "teacher_epochs": None, "train_args": "--x 1",
                "kd_scale": 0.5, "kd_sampling_scale": 1.0, "kd_temperature": 1.0,
                "kd_prune_range": 5, "kd_sample_temperature": 1.0}  # fmt: skip
    (base / "settings.json").write_text(json.dumps(settings))

    def fake_wer(kd):  # lambda 1 helps by 2, rho 2 by 0.3 (below min-gain), tau 2 hurts
        return (
            70.0
            - 2.0 * (kd["kd_scale"] == 1.0)
            - 0.3 * (kd["kd_sampling_scale"] == 2.0)
            + (kd["kd_temperature"] == 2.0)
        )

    commands = []

    def fake_run(cmd, cwd, env, stdout, stderr):
        commands.append(cmd)
        flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
        kd = {k: float(flag["--" + k.replace("_", "-")]) for k in tune_kd.KD_SETTINGS}
        run = Path(flag["--exp-root"]) / "spkd-n2" / "seed-42"
        run.mkdir(parents=True)
        dev = {"wer": fake_wer(kd), "ins": 1, "del": 2, "sub": 3}
        (run / "result.json").write_text(
            json.dumps({"wer": {"modified_beam_search": {"dev": dev}}})
        )

        class Done:
            returncode = 0

        return Done()

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
    # a second run finds every point and trains nothing
    commands.clear()
    tune_kd.main()
    assert commands == []
