"""The k2 / fast_rnnt switch in icefall_spkd.pruned_rnnt."""

from __future__ import annotations

import importlib
import sys

import pytest


def _reload_with(monkeypatch, **blocked: bool):
    """Re-import pruned_rnnt with the named backends made unimportable.

    monkeypatch puts the original module back afterwards, both in sys.modules
    and as the package attribute that ``from icefall_spkd import pruned_rnnt`` reads.
    """
    import icefall_spkd
    import icefall_spkd.pruned_rnnt as original

    monkeypatch.setattr(icefall_spkd, "pruned_rnnt", original)
    for name, block in blocked.items():
        if block:
            monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, "icefall_spkd.pruned_rnnt", raising=False)
    return importlib.import_module("icefall_spkd.pruned_rnnt")


def test_without_k2_fast_rnnt_is_used(monkeypatch):
    mod = _reload_with(monkeypatch, k2=True)
    assert mod.BACKEND_NAME == "fast_rnnt"
    import fast_rnnt

    assert mod.rnnt_loss_pruned is fast_rnnt.rnnt_loss_pruned


def test_without_either_the_error_says_how_to_install(monkeypatch):
    with pytest.raises(ImportError) as err:
        _reload_with(monkeypatch, k2=True, fast_rnnt=True)
    msg = str(err.value)
    assert "scripts/setup.sh" in msg and "k2" in msg and "fast_rnnt" in msg
