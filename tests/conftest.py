"""Test setup: CPU backend with 8 virtual devices, so sharding is exercised without a GPU."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The tests' programs are tiny: compiling them costs far more than running them, and LLVM's optimisation level 0
# halves the compile time of the tiny model's train step (41 s -> 21 s on the 2-core machine, the same loss after
# 25 steps). Commands the tests start inherit the flag; a user's XLA_FLAGS that set a level are kept.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from cytoself_jax.compile_cache import ENV_VAR, enable_compilation_cache

# Many tests build the same small models: with JAX's persistent cache each distinct program compiles once per
# session, not once per test. The tests' cache is their own (never the user's ~/.cache/cytoself_jax nor a
# $CYTOSELF_JAX_CACHE of theirs): a temporary folder made by the pytest process that starts the session and
# removed when it exits; its xdist workers inherit it through the environment (so a program compiled by one worker
# is not compiled again by the other), and so do train.py and eval.py started by tests.
_SESSION_VAR = "CYTOSELF_JAX_TEST_CACHE"
if _SESSION_VAR not in os.environ or "PYTEST_XDIST_WORKER" not in os.environ:
    _TEST_CACHE = Path(tempfile.mkdtemp(prefix="cytoself-jax-test-cache-"))
    atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)
    os.environ[_SESSION_VAR] = str(_TEST_CACHE)
os.environ[ENV_VAR] = os.environ[_SESSION_VAR]
enable_compilation_cache()

SHARED_YEAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "yeast-lu2019"


@pytest.fixture
def yeast_dir() -> Path:
    """The real yeast crops beside the checkout (../shared); tests using it skip where it is absent."""
    if not (SHARED_YEAST / "images").is_dir():
        pytest.skip(f"real yeast data not found at {SHARED_YEAST} (only present in the developers' and CI's checkout)")
    return SHARED_YEAST


def tiny_config(workdir: Path, data_path: Path):
    """A complete experiment config with a very small model, for tests on 32x32 two-channel crops."""
    from cytoself_jax.config import paper_config

    c = paper_config()
    c.workdir = str(workdir)
    c.data.path = str(data_path)
    c.data.num_workers = 0
    c.data.split_fractions = (0.6, 0.2, 0.2)
    m = c.model
    m.encoder_local.update(stem_features=8, stem_stride=2, stages=((1, 3, 1, 8, 1), (2, 3, 2, 8, 1)))
    m.encoder_global.update(stem_features=8, stem_stride=1, stages=((2, 3, 2, 16, 1), (2, 3, 2, 16, 1)))
    m.vq_local.update(num_codes=32, code_dim=8, num_splits=1)
    m.vq_global.update(num_codes=32, code_dim=8, num_splits=2)
    m.decoder_min_features = 8  # the paper decoder at the code width (8); pytorch_reference uses the two below
    m.decoder_global_features = (16,)
    m.decoder_local_features = (16, 8)
    m.residual_units = 1
    m.head_hidden = 16
    c.train.batch_size = 8
    c.train.eval_batch_size = 16
    c.train.max_epochs = 2
    c.train.select_from_epoch = 1  # every epoch may be the best (the tests' runs are 1-2 epochs long)
    c.train.log_every_steps = 1
    return c


def nan_training_batches(monkeypatch, from_epoch: int = 0) -> None:
    """Make the training loop's training batches all-NaN from epoch `from_epoch` (0-based) on, so that its loss and
    gradients turn non-finite there. Unlike a NaN loss weight, this leaves the run's programs as they are (those
    of tiny_config, compiled once per session) instead of adding a train step to compile."""
    import numpy as np

    from cytoself_jax.training import loop

    make_dataset = loop.make_dataset

    def poisoned(*args, **kwargs):
        batches = make_dataset(*args, **kwargs)
        if not kwargs["train"] or kwargs["epoch"] < from_epoch:
            return batches
        return ({**batch, "image": np.full_like(batch["image"], np.nan)} for batch in batches)

    monkeypatch.setattr(loop, "make_dataset", poisoned)


@pytest.fixture(scope="session")
def tiny_store_path(tmp_path_factory) -> Path:
    """A 96-crop store: 4 proteins x 3 fields x 8 crops of 32x32 (protein, nucleus, distance), each protein a
    bright blob at its own position so the identification task has something to learn."""
    import numpy as np
    import pandas as pd

    from cytoself_jax.data.store import write_store

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    images, rows = [], []
    for p in range(4):
        cy, cx = 8 + 16 * (p // 2), 8 + 16 * (p % 2)
        for f in range(3):
            for _ in range(8):
                blob = np.exp(-((yy - cy - rng.normal(0, 1)) ** 2 + (xx - cx - rng.normal(0, 1)) ** 2) / 20.0)
                nucleus = ((yy - 16) ** 2 + (xx - 16) ** 2 < 36).astype(np.float32)
                distance = 6.0 - np.sqrt((yy - 16) ** 2 + (xx - 16) ** 2)
                protein = blob + 0.1 * rng.random((32, 32))
                images.append(np.stack([protein, nucleus + 0.05 * rng.random((32, 32)), distance], -1))
                rows.append({"protein": f"P{p}", "fov": f"P{p}/{f}", "family": "left" if p % 2 == 0 else "right"})
    path = tmp_path_factory.mktemp("tiny") / "store"
    write_store(path, np.asarray(images, np.float32), pd.DataFrame(rows), ("protein", "nucleus", "distance"))
    return path
