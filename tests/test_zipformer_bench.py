"""benchmark_training.py / benchmark_decoding.py with Zipformer rows and reference rows (one tiny run each)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR" / "spkd_transducer"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), RECIPE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_row_is_the_reference_encoder_with_the_same_weights() -> None:
    pytest.importorskip("zipformer_reference").load_reference()  # skips when not installed
    from icefall_spkd.models import build_model
    from icefall_spkd.zipformer_bench import build_bench_model, nearest_pairs

    torch.manual_seed(0)
    ref_row = build_bench_model("ref:zipformer-synth-student", 50).eval()
    ours = build_model({"model_preset": "zipformer-synth-student", "vocab_size": 50}).eval()
    assert type(ref_row.encoder).__module__.startswith("zipformer.")  # the reference's module
    ours.load_state_dict(ref_row.state_dict())  # same names and shapes
    x, x_lens = torch.randn(2, 150, 80), torch.tensor([150, 111])
    with torch.no_grad():
        a, a_lens = ref_row.forward_encoder(x, x_lens)
        b, b_lens = ours.forward_encoder(x, x_lens)
    assert torch.equal(a_lens, b_lens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    pairs = nearest_pairs({"tiny": 1_000_000, "small": 6_000_000, "zipformer-x": 5_000_000, "ref:zipformer-x": 5})
    assert pairs == [("zipformer-x", "small")]


@pytest.mark.slow
def test_benchmarks_print_zipformer_ratios(capsys) -> None:
    pytest.importorskip("zipformer_reference").load_reference()  # skips when not installed
    common = ["--presets", "tiny", "zipformer-synth-student", "--reference", "zipformer-synth-student",
              "--num-threads", "1", "--min-duration", "1", "--max-duration", "1.5"]  # fmt: skip
    _script("benchmark_training").main(
        [*common, "--max-duration-per-batch", "1.5", "--warmup-steps", "1", "--steps", "1", "--min-steps", "1"]
    )
    out = capsys.readouterr().out
    assert re.search(r"^ref:zipformer-synth-student +0\.\d\dM +1 .* scaled_adam$", out, re.M), out
    assert re.search(r"^tiny +1\.03M .* adamw$", out, re.M)
    assert re.search(r"# ratio zipformer-synth-student / tiny \(closest Conformer by parameters\): [\d.]+x", out)
    assert re.search(r"# ratio zipformer-synth-student / ref:zipformer-synth-student .*: [\d.]+x", out)
    _script("benchmark_decoding").main([*common, "--num-utts", "2", "--batch-size", "2", "--methods", "greedy_search"])
    out = capsys.readouterr().out
    assert "# RTF ratio zipformer-synth-student / tiny" in out
    assert "# RTF ratio zipformer-synth-student / ref:zipformer-synth-student" in out
