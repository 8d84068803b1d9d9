"""Import a recipe script (``egs/librispeech/ASR/...``) as a module, for tests of its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

RECIPE = Path(__file__).resolve().parent.parent / "egs/librispeech/ASR"


def load_recipe_script(relpath: str) -> ModuleType:
    """``load_recipe_script("local/run_table.py")``: the script, executed as a fresh module."""
    path = RECIPE / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
