"""The process's peak resident memory, as eval records it per stage and the benchmarks report it."""
from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_rss_mib() -> float:
    """peak_rss_bytes in MiB, rounded to 0.1."""
    return round(peak_rss_bytes() / 2**20, 1)
