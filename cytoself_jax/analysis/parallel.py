"""Independent pieces of an evaluation (the probe's regularisation paths, the UMAPs of several seeds) run in worker
processes, one per core: the same results, in the same order, as a plain loop."""
from __future__ import annotations

from typing import Any, Callable


def in_processes(fn: Callable, argument_lists: list[tuple], desc: str = "", unit: str = "it",
                 progress: bool = False) -> list[Any]:
    """[fn(*args) for args in argument_lists], in worker processes (one per core, at most one per task; joblib's
    loky workers, reused between calls) when there are several tasks and cores, with a progress bar (`desc`,
    `unit`) when `progress`. fn must be a module-level function and deterministic in its arguments."""
    from joblib import Parallel, cpu_count, delayed
    from tqdm.auto import tqdm

    workers = min(len(argument_lists), cpu_count())  # joblib's count respects CPU affinity and cgroup quotas
    if workers < 2:
        results = (fn(*args) for args in argument_lists)
    else:  # results arrive in order as they are done
        results = Parallel(n_jobs=workers, return_as="generator")(delayed(fn)(*args) for args in argument_lists)
    return list(tqdm(results, total=len(argument_lists), desc=desc, unit=unit, disable=not progress))
