"""local/wer_by_speaker.py: WER per speaker of a recogs file, counted by hand."""

from __future__ import annotations

import pytest

from icefall_spkd.wer import write_recogs
from tests.recipe_scripts import load_recipe_script

SPEAKERS = """; ID | ENGINE | VOICE | HELD OUT | SUBSETS
101  | flite    | rms          | False    | train,dev
3609 | espeak   | en-029+f3    | True     | test-other
"""


def test_wer_per_speaker_by_hand(tmp_path, capsys):
    script = load_recipe_script("local/wer_by_speaker.py")
    recogs = tmp_path / "recogs-test-other.txt"
    write_recogs(
        recogs,
        [
            ("101-4000-0000", "A B C", "A X C"),  # speaker 101: 1 sub of 3
            ("101-4000-0001", "D E", "D E F"),  # 1 ins of 2 -> 101: 2 errors / 5 words
            ("3609-4000-0000", "A B C D", "A"),  # 3 deletions of 4
        ],
    )
    speakers = tmp_path / "SPEAKERS.TXT"
    speakers.write_text(SPEAKERS)
    assert script.main(["--speakers", str(speakers), "--recogs", str(recogs)]) == 0
    out = capsys.readouterr().out
    assert "| 101 | flite rms | 2 | 5 | 40.00 | 1 / 0 / 1 |" in out
    assert "| 3609 | espeak en-029+f3 | 1 | 4 | 75.00 | 0 / 3 / 0 |" in out
    # without --speakers the voice column is a dash
    assert script.main(["--recogs", str(recogs)]) == 0
    assert "| 3609 | - | 1 | 4 | 75.00 | 0 / 3 / 0 |" in capsys.readouterr().out


def test_bad_inputs_stop_with_one_line(tmp_path):
    script = load_recipe_script("local/wer_by_speaker.py")
    with pytest.raises(SystemExit, match="no such file; decode first"):
        script.main(["--recogs", str(tmp_path / "missing.txt")])
    bad = tmp_path / "SPEAKERS.TXT"
    bad.write_text("just some words\n")
    recogs = tmp_path / "r.txt"
    write_recogs(recogs, [("1-2-3", "A", "A")])
    with pytest.raises(SystemExit, match="SPEAKERS.TXT:1: expected 'ID | ...'"):
        script.main(["--speakers", str(bad), "--recogs", str(recogs)])
