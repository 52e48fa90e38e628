"""JAX's persistent compilation cache, shared by train.py, eval.py, the benchmarks and the tests.

XLA compiles each distinct program once per process; with this cache the compiled programs are written to disk
and the next process (a second run of the demo, eval after training, the next pytest run) loads them instead of
compiling again. The cache key covers the program, the devices, jax/jaxlib versions and XLA flags, so one folder
serves every config and machine setting safely.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from cytoself_jax.user_cache import user_cache_dir

# Where the cache lives unless CYTOSELF_JAX_CACHE says otherwise (empty or "off": no persistent cache).
ENV_VAR = "CYTOSELF_JAX_CACHE"
# Programs that compile faster than this are not written (loading a file costs ~ms; the cache stays small).
MIN_COMPILE_S = 0.2


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/cytoself_jax/jax, else ~/.cache/cytoself_jax/jax."""
    return user_cache_dir() / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in `path` (default: $CYTOSELF_JAX_CACHE, else
    default_cache_dir()); returns the folder, or None when CYTOSELF_JAX_CACHE is "off" or empty. Call before the
    first jit compilation; safe to call again (the last folder wins)."""
    if path is None:
        env = os.environ.get(ENV_VAR)
        if env is not None and env.strip().lower() in ("", "off", "0", "none"):
            return None
        path = env or default_cache_dir()
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
