"""The process's resident memory, as eval records it per stage and the benchmarks report it."""
from __future__ import annotations

import resource
import sys


def maxrss_bytes(ru_maxrss: int) -> int:
    """A getrusage/wait4 ru_maxrss in bytes (it is KiB on Linux, bytes on macOS)."""
    return int(ru_maxrss) if sys.platform == "darwin" else int(ru_maxrss) * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mib() -> float:
    """peak_rss_bytes in MiB, rounded to 0.1."""
    return round(peak_rss_bytes() / 2**20, 1)


def anonymous_rss_mib() -> float | None:
    """This process's anonymous resident memory now (heap, arrays; not the pages of memory-mapped files such as a
    crop store, which the system can drop at any time), in MiB rounded to 0.1; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return None
