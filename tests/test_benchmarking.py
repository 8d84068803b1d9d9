"""Tests of icefall_spkd.benchmarking: statistics on known lists, peak-memory helpers.

No test asserts on a measured duration (those are machine-dependent); the
timing helpers are only checked for their bookkeeping.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
import torch

from icefall_spkd.benchmarking import (
    Stats,
    format_bytes,
    load_factory,
    machine_info,
    quantile,
    run_interleaved,
    subprocess_peak_memory,
    summarize,
)

ALLOC_BYTES = 256 * 1024**2


# Factories loaded by the peak-memory child process (by file path).
def make_alloc(nbytes: int) -> Callable[[], Any]:
    """A callable that allocates, touches and frees ``nbytes`` of tensor memory."""

    def fn() -> float:
        t = torch.ones(nbytes // 4, dtype=torch.float32)  # ones: every page is written
        return float(t[-1])

    return fn


def make_noop() -> Callable[[], Any]:
    """A callable that allocates nothing worth measuring."""

    def fn() -> float:
        return float(torch.zeros(4).sum())

    return fn


def test_quantile_matches_linear_interpolation() -> None:
    xs = [7.0, 1.0, 3.0, 5.0]  # sorted: 1 3 5 7
    assert quantile(xs, 0.0) == 1.0
    assert quantile(xs, 1.0) == 7.0
    assert quantile(xs, 0.5) == pytest.approx(4.0)
    assert quantile(xs, 0.25) == pytest.approx(2.5)  # pos 0.75 between 1 and 3
    assert quantile(xs, 0.75) == pytest.approx(5.5)
    assert quantile([2.0], 0.3) == 2.0
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_summarize_known_list() -> None:
    s = summarize([5, 1, 4, 2, 3])
    assert s == Stats(n=5, median=3.0, q1=2.0, q3=4.0, min=1.0, max=5.0)
    assert s.iqr == 2.0
    assert s.rel_iqr == pytest.approx(2.0 / 3.0)
    assert s.fmt(scale=1000, unit=" ms", digits=0) == "3000 ms (IQR 2000-4000)"
    with pytest.raises(ValueError):
        summarize([])


def test_run_interleaved_counts_and_rotates_order() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = run_interleaved(fns, repeats=3, warmup=1)
    assert set(times) == {"a", "b", "c"}
    assert all(len(v) == 3 and all(t >= 0 for t in v) for v in times.values())
    # one warm-up round in order, then rounds starting with a, b, c in turn
    assert calls == list("abc" + "abc" + "bca" + "cab")


def test_format_bytes() -> None:
    assert format_bytes(None) == "n/a"
    assert format_bytes(3 * 1024**2) == "3.0 MiB"
    assert format_bytes(2 * 1024**3) == "2.00 GiB"


def test_load_factory_by_module_and_file() -> None:
    assert load_factory("icefall_spkd.benchmarking:summarize") is summarize
    fn = load_factory(f"{os.path.abspath(__file__)}:make_noop")()
    assert fn() == 0.0
    with pytest.raises(ValueError):
        load_factory("no_colon_here")


def test_machine_info_has_backend_and_threads() -> None:
    info = machine_info("cpu")
    assert info["rnnt_backend"] in ("k2", "fast_rnnt")
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_subprocess_peak_memory_sees_a_big_allocation() -> None:
    here = os.path.abspath(__file__)
    big = subprocess_peak_memory(f"{here}:make_alloc", {"nbytes": ALLOC_BYTES}, threads=1)
    small = subprocess_peak_memory(f"{here}:make_noop", threads=1)
    assert big.kind == small.kind == "rss"
    # The big call's peak growth is (about) the tensor; the no-op's is far below it.
    assert big.peak_bytes > small.peak_bytes + ALLOC_BYTES // 2
    assert big.peak_bytes > 0.8 * ALLOC_BYTES
    assert small.peak_bytes < ALLOC_BYTES // 4


def test_subprocess_peak_memory_reports_child_failure() -> None:
    with pytest.raises(RuntimeError, match="failed"):
        subprocess_peak_memory("icefall_spkd.benchmarking:no_such_function")


def test_kd_step_benchmark_runs_and_shares_nodes_only_where_asked(capsys) -> None:
    """Smoke run of spkd_transducer/benchmark_kd.py: every method is timed and printed.

    (That node sharing leaves the loss unchanged is tested in test_kd.py; here
    the students' dropout makes the printed losses differ slightly.)
    """
    from recipe_scripts import load_recipe_script

    mod = load_recipe_script("spkd_transducer/benchmark_kd.py")
    mod.main(["-B", "2", "-T", "30", "-U", "8", "-V", "20", "--steps", "1", "--warmup", "0",
              "--profile-steps", "0", "--num-samples", "2", "--num-threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith(("spkd-", "pkd"))}
    assert set(lines) == {"pkd", "spkd-N2", "spkd-N2-unshared"}
    assert lines["spkd-N2"][5] != "-" and lines["spkd-N2-unshared"][5] == "-"  # node share column
    assert float(lines["spkd-N2"][-1]) == pytest.approx(float(lines["spkd-N2-unshared"][-1]), rel=0.05)
    assert "SUMMARY kd-step" in out and "spkd-N2-unshared" in out.split("SUMMARY")[1]
