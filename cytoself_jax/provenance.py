"""What code wrote a result: a hash of this package's source and the versions of the libraries results depend
on. The traced-program cache keys programs by it, and eval/embed reuse only output written by the same code."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Sequence

_PACKAGE = Path(__file__).parent


@lru_cache(maxsize=1)
def source_sha256() -> str:
    """sha256 over every .py file of the package (relative names and bytes, in sorted order)."""
    source = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        source.update(str(path.relative_to(_PACKAGE)).encode())
        source.update(path.read_bytes())
    return source.hexdigest()


def versions(names: Sequence[str]) -> dict[str, str]:
    """Installed version of each distribution ('' when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


# The libraries whose versions can change an evaluation's numbers or files.
ANALYSIS_LIBRARIES = ("cytoself-jax", "jax", "jaxlib", "flax", "numpy", "scipy", "scikit-learn", "umap-learn",
                      "pynndescent", "anndata", "scanpy", "leidenalg", "copairs", "pandas", "matplotlib", "plotly")


def code_identity() -> dict:
    """The package source hash and the analysis libraries' versions, recorded in every eval/embed output."""
    return {"source_sha256": source_sha256(), "versions": versions(ANALYSIS_LIBRARIES)}
