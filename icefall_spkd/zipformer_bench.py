"""Benchmark helpers: Zipformer presets beside Conformer presets and the reference Zipformer.

Used by ``benchmark_training.py`` and ``benchmark_decoding.py``:

* a model name is a preset (``small``, ``zipformer-paper-student``, ...) or
  ``ref:<zipformer preset>``: the reference package's Zipformer2 encoder
  (``zipformer==0.1.3``, the Next-gen Kaldi team's copy of icefall's code,
  loaded through ``tests/zipformer_reference.py``; a test-only install) with
  the same configuration and weights as this package's preset, inside this
  package's transducer (same decoder, joiner and losses). Only the encoder
  differs, so the ratio of the two rows is the ratio of the two encoders' cost
  within the same training / decoding step.
* :func:`nearest_pairs` pairs every Zipformer row with the Conformer row of the
  closest parameter count, for the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

REF_PREFIX = "ref:"
_REPO = Path(__file__).resolve().parents[1]


def add_reference_argument(parser: argparse.ArgumentParser) -> None:
    """``--reference PRESET ...``: also time the reference package's Zipformer at these presets."""
    from icefall_spkd.models.presets import ZIPFORMER_PRESETS

    parser.add_argument(
        "--reference",
        type=str,
        nargs="*",
        default=[],
        choices=sorted(ZIPFORMER_PRESETS),
        help="Also time the reference package's Zipformer encoder (zipformer==0.1.3, a test "
        "install) at these presets' configurations: rows ref:<preset>.",
    )


def is_zipformer(name: str) -> bool:
    """A Zipformer row (this package's or the reference's)."""
    return name.startswith(REF_PREFIX) or name.startswith("zipformer")


def _reference_module() -> Any:
    path = _REPO / "tests" / "zipformer_reference.py"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: ref:<preset> rows need the repository's tests/ folder")
    if "zipformer_reference" in sys.modules:
        return sys.modules["zipformer_reference"]
    spec = importlib.util.spec_from_file_location("zipformer_reference", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["zipformer_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


def build_bench_model(name: str, vocab_size: int) -> nn.Module:
    """The model of a benchmark row (see the module docstring); random weights, seeded by the caller."""
    from icefall_spkd.models import build_model, resolve_zipformer_config

    if not name.startswith(REF_PREFIX):
        return build_model({"model_preset": name, "vocab_size": vocab_size})
    preset = name[len(REF_PREFIX):]
    if not preset.startswith("zipformer"):
        raise SystemExit(f"{name}: ref: rows take a Zipformer preset (zipformer-...)")
    cfg = resolve_zipformer_config({"model_preset": preset, "vocab_size": vocab_size})
    try:
        ref = _reference_module().reference_asr_model(
            {k: v for k, v in cfg.items() if k not in ("encoder_type", "model_preset")}
        )
    except BaseException as e:  # pytest's Skipped when the package is not installed
        raise SystemExit(
            f"{name}: the reference package is not usable ({type(e).__name__}: {e}); install it with "
            "pip install --no-deps zipformer==0.1.3 atdataset==0.2.6"
        ) from None
    model = build_model(dict(cfg, encoder_type="zipformer"))
    model.load_state_dict(ref.state_dict(), strict=False)
    model.encoder_embed = ref.encoder_embed
    model.encoder = ref.encoder
    # icefall's AsrModel.forward_encoder (N, T, C) in and out; it uses the modules above.
    ref_forward_encoder = types.MethodType(type(ref).forward_encoder, model)
    model.forward_encoder = ref_forward_encoder
    return model


def nearest_pairs(params: Dict[str, int]) -> List[Tuple[str, str]]:
    """``(zipformer row, conformer row)`` pairs, each Zipformer row with the closest Conformer by parameters."""
    conformers = [n for n in params if not is_zipformer(n)]
    if not conformers:
        return []
    out = []
    for n in params:
        if is_zipformer(n) and not n.startswith(REF_PREFIX):
            best = min(conformers, key=lambda c: abs(params[c] - params[n]))
            out.append((n, best))
    return out


def set_steady_batch_count(model: nn.Module, batch_count: float) -> None:
    """Set every ScheduledFloat's batch count (a no-op for the Conformer)."""
    from icefall_spkd.models.scaling import set_batch_count

    set_batch_count(model, batch_count)


def threads_note() -> str:
    """Torch's intra-op threads, for the report."""
    return f"torch threads {torch.get_num_threads()}"
