"""Test setup: CPU backend with 8 virtual devices, so sharding is exercised without a GPU."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

from pathlib import Path

import pytest

SHARED_YEAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "yeast-lu2019"


@pytest.fixture
def yeast_dir() -> Path:
    """The real yeast crops beside the checkout (../shared); tests using it skip where it is absent."""
    if not (SHARED_YEAST / "images").is_dir():
        pytest.skip(f"real yeast data not found at {SHARED_YEAST} (only present in the developers' and CI's checkout)")
    return SHARED_YEAST
