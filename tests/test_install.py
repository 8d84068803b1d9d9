"""The set-up installs the library, so recipe scripts work from any directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_library_imports_outside_the_repository(tmp_path):
    # From the repository root the source folder itself would be importable and
    # hide a missing install; from elsewhere only an installed package is found.
    out = subprocess.run(
        [sys.executable, "-c", "import icefall_spkd; print(icefall_spkd.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().parent == REPO / "icefall_spkd"
