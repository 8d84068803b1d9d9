"""CPU speed of the Zipformer against the reference ``zipformer==0.1.3`` (opt-in).

Run with ``ZIPFORMER_SPEED=1 pytest -s tests/test_zipformer_speed.py``. One
thread; CPU time of the process (``time.process_time``), so other load on a
shared machine disturbs it less than wall time. Same weights, same batch (4
utterances, 34.75 s of audio), the ``zipformer-paper-student`` preset; the
reference with its default ``torch.compile``'d activations (compiled during
the warm-up step). Training step = encoder forward + backward of a squared
output (the transducer loss is the same code for both); eval = encoder forward
under ``no_grad``. Prints audio seconds per CPU second and the ratio; fails if
ours is more than 10% slower than the reference in either.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

if os.environ.get("ZIPFORMER_SPEED") != "1":
    pytest.skip("opt-in benchmark: set ZIPFORMER_SPEED=1", allow_module_level=True)

from zipformer_reference import reference_asr_model  # noqa: E402

from icefall_spkd.models import build_model, resolve_zipformer_config, set_batch_count  # noqa: E402


def _step(model, x, x_lens, train: bool) -> None:
    if train:
        model.train()
        out, _ = model.forward_encoder(x, x_lens)
        out.pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.no_grad():
            model.forward_encoder(x, x_lens)


def test_cpu_speed_against_reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = resolve_zipformer_config({"model_preset": "zipformer-paper-student"})
        cfg = {k: v for k, v in cfg.items() if k not in ("encoder_type", "model_preset")}
        torch.manual_seed(0)
        ref = reference_asr_model(cfg)
        mine = build_model(dict(cfg, encoder_type="zipformer"))
        mine.load_state_dict(ref.state_dict())
        for m in (ref, mine):
            set_batch_count(m, 5000.0)
        x = torch.randn(4, 925, 80)
        x_lens = torch.tensor([925, 900, 850, 800])
        audio = x_lens.sum().item() / 100.0
        for train in (True, False):
            best = {}
            for m in (ref, mine):
                _step(m, x, x_lens, train)  # warm-up (and the reference's compilation)
            for _ in range(3):  # interleaved, best of 3
                for name, m in (("reference", ref), ("ours", mine)):
                    t0 = time.process_time()
                    _step(m, x, x_lens, train)
                    best[name] = min(best.get(name, float("inf")), time.process_time() - t0)
            mode = "train step" if train else "eval"
            print(
                f"{mode}: reference {audio / best['reference']:.1f}, ours {audio / best['ours']:.1f} "
                f"audio s per CPU s; ours/reference speed {best['reference'] / best['ours']:.2f}"
            )
            assert best["ours"] <= 1.1 * best["reference"], (mode, best)
    finally:
        torch.set_num_threads(threads)
