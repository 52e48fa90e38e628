"""Persistent compilation caches, shared by train.py, eval.py, the benchmarks and the tests: JAX's, and numba's for
the UMAP libraries.

XLA compiles each distinct program once per process; with this cache the compiled programs are written to disk
and the next process (a second run of the demo, eval after training, the next pytest run) loads them instead of
compiling again. The cache key covers the program, the devices, jax/jaxlib versions and XLA flags, so one folder
serves every config and machine setting safely. umap-learn and pynndescent compile several hundred numba functions
in every process that makes a UMAP (about 10 s of a small eval on a 2-core CPU) and cache none of them; numba's own
cache (keyed by the source file and its modification time, the signature, the CPU and numba's version) keeps them
in a `numba` folder inside the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from cytoself_jax.user_cache import user_cache_dir

# Where the cache lives unless CYTOSELF_JAX_CACHE says otherwise (empty or "off": no persistent cache).
ENV_VAR = "CYTOSELF_JAX_CACHE"
# Programs that compile faster than this are not written (loading a file costs ~ms; the cache stays small).
MIN_COMPILE_S = 0.2


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/cytoself_jax/jax, else ~/.cache/cytoself_jax/jax."""
    return user_cache_dir() / "jax"


def _configured_folder() -> Path | None:
    """The cache folder $CYTOSELF_JAX_CACHE names, else default_cache_dir(); None when it says "off" or is empty."""
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip().lower() in ("", "off", "0", "none"):
        return None
    return Path(env or default_cache_dir()).expanduser()


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in `path` (default: $CYTOSELF_JAX_CACHE, else
    default_cache_dir()); returns the folder, or None when CYTOSELF_JAX_CACHE is "off" or empty. Call before the
    first jit compilation; safe to call again (the last folder wins)."""
    import jax  # here, not at the top: UMAP worker processes import this module without needing jax

    folder = Path(path).expanduser() if path is not None else _configured_folder()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


_UMAP_PACKAGES = ("umap", "pynndescent")
_UMAP_SKIPPED = ("plot", "parametric", "aligned", "tests")  # optional extras (bokeh, tensorflow) and test modules
_umap_cache_folder: list[Path | None] = [None]  # the folder this process's UMAP functions cache into


def enable_umap_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Make umap-learn's and pynndescent's numba functions cache their machine code in `path` (default: the `numba`
    folder inside enable_compilation_cache's folder, with the same switch; a NUMBA_CACHE_DIR of the user's wins),
    so only the first UMAP on a machine compiles them. Returns the folder, or None when the cache is off. Call
    before the first UMAP of the process; safe to call again."""
    import importlib
    import pkgutil

    import numba
    from numba.core.registry import CPUDispatcher

    if path is None:
        root = _configured_folder()
        if root is None:
            return None
        path = root / "numba"
    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or path).expanduser()
    if folder == _umap_cache_folder[0]:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile in every process rather than fail
        return None
    numba.config.CACHE_DIR = str(folder)  # read when a function's cache is made, below
    for package in _UMAP_PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if any(word in info.name for word in _UMAP_SKIPPED):
                continue
            try:
                module = importlib.import_module(info.name)
            except ImportError:  # a module needing an optional dependency
                continue
            for function in vars(module).values():
                if isinstance(function, CPUDispatcher) and function.__module__ == module.__name__:
                    function.enable_caching()
    _umap_cache_folder[0] = folder
    return folder
