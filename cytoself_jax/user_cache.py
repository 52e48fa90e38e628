"""The user's cache folder of this package: $XDG_CACHE_HOME/cytoself_jax, else ~/.cache/cytoself_jax (compiled
programs in jax/, pixel checks of read-only crop stores in pixels/). Importing it imports nothing heavy."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/cytoself_jax, else ~/.cache/cytoself_jax (not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cytoself_jax"
