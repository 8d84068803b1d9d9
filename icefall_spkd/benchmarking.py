"""Shared helpers for the benchmark scripts in ``egs/librispeech/ASR/spkd_transducer/``.

Timing
  :func:`synchronize` / :func:`time_call` time a call with ``time.perf_counter``
  and a CUDA synchronisation before and after (a no-op on CPU), so the time
  covers the queued GPU work too. :func:`summarize` turns repeated timings into
  a :class:`Stats` (median, quartiles, IQR, min, max); the quartiles use linear
  interpolation between order statistics (numpy's default, ``statistics.quantiles``
  with ``method="inclusive"``).

Peak memory
  On CUDA, :func:`cuda_peak_memory` resets the allocator's peak counter and
  reports ``max_memory_allocated() - memory_allocated_before``: the extra
  tensor memory the call needed at its peak.

  On CPU there is no allocator counter for torch tensors (``tracemalloc`` only
  sees Python's allocator), so the peak *resident set size* growth of a process
  is measured instead. :class:`PeakRSS` resets the kernel's RSS high-water mark
  (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), notes the current RSS, and
  after the call reads the high-water mark (``VmHWM``, the same value as
  ``resource.getrusage(...).ru_maxrss``). When the reset is not possible the
  high-water mark may still hold an earlier, larger peak; the result then says
  so (``reset_ok=False``) and the growth is only a lower bound.

  :func:`subprocess_peak_memory` runs one call in a *fresh* Python process
  (``python -m icefall_spkd.benchmarking --child SPEC``), so what one method
  left behind in the allocator or the page cache cannot hide the next
  method's peak. The call is described by a factory, ``"pkg.module:function"``
  or ``"/path/to/file.py:function"``, called with JSON keyword arguments and
  returning the zero-argument callable to measure; the factory's own set-up
  (building a model, making inputs) is excluded from the measurement.

Machine description
  :func:`machine_info` / :func:`format_machine_info` give the header the
  scripts print first: CPU model, cores, torch threads, torch version, the
  pruned-RNN-T backend (``icefall_spkd.pruned_rnnt.BACKEND_NAME``) and the GPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = [
    "MALLOC_ENV",
    "PeakMemory",
    "PeakRSS",
    "Stats",
    "add_common_arguments",
    "cuda_peak_memory",
    "current_rss_bytes",
    "format_bytes",
    "format_machine_info",
    "load_factory",
    "load_note",
    "machine_info",
    "peak_rss_bytes",
    "quantile",
    "resolve_device",
    "run_interleaved",
    "setup_torch",
    "subprocess_peak_memory",
    "summarize",
    "synchronize",
    "time_call",
]


# --------------------------------------------------------------------------- #
# Statistics
# --------------------------------------------------------------------------- #
def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) with linear interpolation between order statistics.

    Same as ``numpy.quantile(values, q)`` (method ``"linear"``).
    """
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    xs = sorted(float(v) for v in values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        """Inter-quartile range ``q3 - q1``."""
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """``iqr / median`` (0 when the median is 0)."""
        return self.iqr / self.median if self.median else 0.0

    def fmt(self, scale: float = 1.0, unit: str = "", digits: int = 3) -> str:
        """``"median (IQR q1-q3)"`` with the values multiplied by ``scale``."""
        return (
            f"{self.median * scale:.{digits}f}{unit} "
            f"(IQR {self.q1 * scale:.{digits}f}-{self.q3 * scale:.{digits}f})"
        )


def summarize(values: Sequence[float]) -> Stats:
    """Median, first/third quartile, min and max of ``values`` (non-empty)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    return Stats(
        n=len(values),
        median=quantile(values, 0.5),
        q1=quantile(values, 0.25),
        q3=quantile(values, 0.75),
        min=float(min(values)),
        max=float(max(values)),
    )


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #
def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work on ``device`` (no-op for CPU or when CUDA is absent)."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[..., Any], *args: Any, device: torch.device | str | None = None, **kwargs: Any
) -> tuple[float, Any]:
    """Run ``fn(*args, **kwargs)`` once; return ``(seconds, result)``, synchronising CUDA before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - start, result


def run_interleaved(
    fns: Dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    between: Optional[Callable[[], None]] = None,
) -> Dict[str, List[float]]:
    """Time several methods side by side.

    Each round runs every method once; the order rotates from round to round
    so that no method always runs first (after the other's cache effects) or
    always last. ``warmup`` rounds run first and are discarded.

    Args:
      fns: name -> zero-argument callable.
      repeats: timed rounds.
      warmup: untimed rounds before them.
      device: for CUDA synchronisation.
      between: optional call (untimed) before every timed call, e.g. ``gc.collect``.
    Returns:
      name -> list of ``repeats`` durations in seconds, in round order.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if between is not None:
                between()
            dt, _ = time_call(fns[name], device=device)
            times[name].append(dt)
    return times


# --------------------------------------------------------------------------- #
# Peak memory
# --------------------------------------------------------------------------- #
def format_bytes(n: Optional[float]) -> str:
    """Human-readable size in MiB/GiB (``"n/a"`` for None)."""
    if n is None:
        return "n/a"
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> Optional[int]:
    """Current resident set size of this process in bytes (Linux; None elsewhere)."""
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """The RSS high-water mark of this process in bytes (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; True on success (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Peak extra memory of one measured call.

    ``peak_bytes`` is the growth over ``baseline_bytes`` (RSS or CUDA allocated
    memory just before the call). ``kind`` is ``"rss"`` or ``"cuda"``.
    ``reset_ok=False`` (RSS only) means the high-water mark could not be reset,
    so ``peak_bytes`` is a lower bound.
    """

    peak_bytes: int
    baseline_bytes: int
    kind: str
    reset_ok: bool = True


class PeakRSS:
    """Context manager measuring the peak RSS growth of this process inside the ``with`` block.

    Example::

        with PeakRSS() as m:
            work()
        print(m.result.peak_bytes)

    Only meaningful when nothing else in the process allocates at the same
    time; run it in a fresh process (:func:`subprocess_peak_memory`) to keep
    the baseline free of earlier work.
    """

    def __init__(self) -> None:
        self.result: Optional[PeakMemory] = None
        self._baseline = 0
        self._reset_ok = False

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._reset_ok = reset_peak_rss()
        rss = current_rss_bytes()
        self._baseline = rss if rss is not None else peak_rss_bytes()
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _proc_status_kib("VmHWM")
        peak = hwm * 1024 if hwm is not None else peak_rss_bytes()
        self.result = PeakMemory(
            peak_bytes=max(0, peak - self._baseline),
            baseline_bytes=self._baseline,
            kind="rss",
            reset_ok=self._reset_ok,
        )


def cuda_peak_memory(fn: Callable[[], Any], device: torch.device | str) -> PeakMemory:
    """Peak extra CUDA tensor memory of ``fn()``: ``max_memory_allocated - memory_allocated`` before."""
    device = torch.device(device)
    gc.collect()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return PeakMemory(peak_bytes=peak - base, baseline_bytes=base, kind="cuda")


def load_factory(spec: str) -> Callable[..., Callable[[], Any]]:
    """Resolve ``"pkg.module:function"`` or ``"/path/to/file.py:function"`` to the function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"factory spec must be 'module:function' or 'file.py:function', got {spec!r}")
    if target.endswith(".py"):
        mod_name = "_bench_factory_" + os.path.splitext(os.path.basename(target))[0]
        file_spec = importlib.util.spec_from_file_location(mod_name, target)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"cannot load {target}")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[mod_name] = module
        file_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name)


def _child_main(spec_json: str) -> None:
    """Child side of :func:`subprocess_peak_memory`: prints one JSON line prefixed ``PEAK_MEMORY``."""
    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    fn = load_factory(spec["factory"])(**spec.get("kwargs", {}))
    for _ in range(int(spec.get("warmup", 1))):
        fn()
    with PeakRSS() as m:
        fn()
    assert m.result is not None
    print("PEAK_MEMORY " + json.dumps(asdict(m.result)), flush=True)


# glibc raises its mmap threshold (up to 32 MiB) each time a mmap-ed block is
# freed, after which blocks of that size come from the heap and stay resident
# after being freed: a warm-up call would then pre-pay the measured call's
# peak and hide it. Fixing the thresholds (which turns that adaptation off)
# makes freed tensors leave the RSS, so the measured growth is real.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def subprocess_peak_memory(
    factory: str,
    kwargs: Optional[Dict[str, Any]] = None,
    warmup: int = 1,
    threads: Optional[int] = None,
    timeout: Optional[float] = None,
) -> PeakMemory:
    """Peak RSS growth of one call, measured in a fresh Python process.

    The child imports ``factory`` (see :func:`load_factory`), calls it with
    ``kwargs`` to get a zero-argument callable ``fn``, runs ``fn`` ``warmup``
    times (so one-off allocations such as thread pools are not counted), then
    measures one more ``fn()`` with :class:`PeakRSS`.

    Args:
      factory: ``"pkg.module:function"`` or ``"/path/file.py:function"``.
      kwargs: JSON-serialisable keyword arguments for the factory.
      warmup: untimed calls before the measured one.
      threads: ``torch.set_num_threads`` in the child (None: torch's default).
      timeout: seconds before the child is killed (None: no limit).

    The child runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    fixed (see :data:`MALLOC_ENV`; values already in the environment win).
    Returns:
      The child's :class:`PeakMemory`.
    Raises:
      RuntimeError: the child failed (its stderr is included).
    """
    spec = {"factory": factory, "kwargs": kwargs or {}, "warmup": warmup, "threads": threads}
    env = dict(os.environ)
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    proc = subprocess.run(
        [sys.executable, "-m", "icefall_spkd.benchmarking", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MEMORY "):
            return PeakMemory(**json.loads(line[len("PEAK_MEMORY ") :]))
    raise RuntimeError(
        f"peak-memory child for {factory} failed (exit {proc.returncode}):\n"
        f"{proc.stderr[-4000:]}"
    )


# --------------------------------------------------------------------------- #
# Machine and command line
# --------------------------------------------------------------------------- #
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device | str = "cpu") -> Dict[str, Any]:
    """What the benchmark ran on: CPU, cores, torch threads, torch version, RNN-T backend, GPU."""
    from icefall_spkd import pruned_rnnt

    device = torch.device(device)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 0
    info: Dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rnnt_backend": pruned_rnnt.BACKEND_NAME,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        pass
    return info


def format_machine_info(info: Dict[str, Any]) -> str:
    """Multi-line ``# key: value`` header for :func:`machine_info`."""
    lines = ["# Machine"]
    lines += [f"#   {k}: {v}" for k, v in info.items()]
    if "load_avg_1m" in info and info["load_avg_1m"] > 0.5 * max(1, info.get("usable_cpus") or 1):
        lines.append(
            "#   WARNING: the machine is busy (load average high for its cores); "
            "timings will be noisy, and with several torch threads OpenMP barriers can "
            "inflate them many times over (try --num-threads 1)"
        )
    return "\n".join(lines)


def load_note() -> str:
    """``"# load average (1 min) at end: X on N usable CPUs"``, to compare with the header's."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "# load average: unavailable"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return f"# load average (1 min) at end: {load:.2f} on {cpus} usable CPUs"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--num-threads`` and ``--seed``, shared by the benchmark scripts."""
    parser.add_argument(
        "--device",
        type=str,
        default="cpu",
        choices=["cpu", "cuda"],
        help="Where to run (cuda uses the current CUDA device).",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch.set_num_threads; 0 (default) = all usable cores.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed for weights and data.")


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for and missing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def setup_torch(num_threads: int, seed: int) -> int:
    """Set torch's intra-op threads (0 = all usable cores) and seed; return the thread count."""
    if num_threads <= 0:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    return num_threads


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="Child process of subprocess_peak_memory.")
    _parser.add_argument("--child", type=str, required=True, help="JSON spec (internal).")
    _child_main(_parser.parse_args().child)
