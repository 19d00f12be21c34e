"""Timing and memory helpers shared by the benchmark scripts (not a test).

Fairness rules they implement: every runner is warmed up once, then runs in rounds of A B .. B A
(each round reverses the order, so neither side always goes first or last while the machine's load
drifts); each runner gets 2 samples per round; results are min / median / max and the *paired*
ratio (sample i of one runner against sample i of the other, taken in the same round). Peak memory
is measured in a separate process per runner (`peak_rss`), never in the timing run.
"""
from __future__ import annotations

import ctypes
import gc
import importlib.util
import sys
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def interleaved(runners: dict[str, Callable[[], object]], repeat: int,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each runner over `repeat` ABBA rounds (after one warm-up call each);
    {} for repeat 0."""
    if repeat <= 0:
        return {}
    for fn in runners.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for _ in range(repeat):
        for name in names + names[::-1]:
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def spread(seconds: list[float], unit: float = 1e3, suffix: str = "ms") -> str:
    """'median [min, max] unit'."""
    med, lo, hi = (v * unit for v in (statistics.median(seconds), min(seconds), max(seconds)))
    return f"{med:9.2f} {suffix} [{lo:8.2f}, {hi:8.2f}]"


def paired_ratio(a: list[float], b: list[float]) -> str:
    """Median [min, max] of a[i] / b[i]."""
    r = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss(fn: Callable[[], object]) -> tuple[int, object]:
    """(peak resident set during fn() minus the resident set before it, fn's result) on Linux.
    Meant for a fresh process that runs fn once. glibc keeps freed heap pages resident, and a
    forward could reuse what building the model freed without raising the resident set; so the
    free pages are first handed back to the kernel (gc, then glibc's malloc_trim where present)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may be understated
        pass
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current resident set
    out = fn()
    return _status("VmHWM") - base, out


def cpu_bf16_note() -> str:
    """How bf16 runs on this CPU, for labelling bf16 rows: EMULATED without bf16 matmul units
    (several times slower than fp32), else which units /proc/cpuinfo lists."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "bf16 units unknown (no /proc/cpuinfo)"
    units = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if not units:
        return "EMULATED: no bf16 matmul units on this CPU"
    return f"CPU lists {', '.join(units)}"


PACK_NAME = "flowdit_bench_pack"


def import_pack():
    """The repository imported as a package (as ComfyUI imports a custom_nodes folder), so the
    benchmarks can time the nodes' own paths."""
    if PACK_NAME not in sys.modules:
        root = Path(__file__).resolve().parents[2]
        spec = importlib.util.spec_from_file_location(
            PACK_NAME, root / "__init__.py", submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]
