"""Multi-host data parallelism on real processes: `train.py --distributed` started twice on this machine as
SLURM's srun would (2 processes x 4 CPU devices, coordinator on 127.0.0.1), against one process with 8 devices."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import tiny_config

from cytoself_jax.training.checkpoint import Checkpointer
from cytoself_jax.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.py"
STEPS = 2  # per epoch
TIMEOUT_S = 1800  # compiling on a loaded 2-core machine is slow; a hung collective must still end the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(run_dir: Path, store: Path, log_dir: Path) -> None:
    """One epoch of STEPS steps by 2 processes of 4 CPU devices each, with srun's environment."""
    port = _free_port()
    # 4 CPU devices per process, with the tests' other XLA flags (conftest.py: optimisation level 0, which halves
    # the compile time of the train step each process compiles)
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count=4".strip(),
               # what srun sets and jax.distributed.initialize() reads; the port override picks a free port
               "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "JAX_COORDINATOR_PORT": str(port)}
        cmd = [sys.executable, str(REPO / "train.py"), f"--config={TINY_CONFIG}", f"--config.workdir={run_dir}",
               f"--config.data.path={store}", "--config.train.max_epochs=1",
               f"--config.train.max_steps_per_epoch={STEPS}", "--distributed"]
        logs.append((log_dir / f"process{rank}.log").open("w"))
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            p.kill()  # SIGKILL: jax's preemption handler catches SIGTERM
            p.wait()
        for f in logs:
            f.close()
    if codes != [0, 0]:
        tails = "\n".join(f"--- process {r}:\n" + (log_dir / f"process{r}.log").read_text()[-2000:] for r in range(2))
        raise AssertionError(f"2-process training failed (exit codes {codes}):\n{tails}")


def _step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "step"}


def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path, tiny_store_path):
    assert jax.device_count() == 8 and jax.process_count() == 1
    # The reference: one process with 8 devices, 2 epochs straight.
    reference_config = tiny_config(tmp_path / "one", tiny_store_path)
    reference_config.train.max_steps_per_epoch = STEPS
    reference = train(reference_config, progress=False)
    expected = _step_losses(tmp_path / "one")
    assert sorted(expected) == [1, 2, 3, 4]

    # Epoch 1 by two processes (one writes the run's files), epoch 2 resumed by this single process.
    _train_two_processes(tmp_path / "two", tiny_store_path, tmp_path)
    first = _step_losses(tmp_path / "two")
    assert sorted(first) == [1, 2]
    np.testing.assert_allclose([first[s] for s in (1, 2)], [expected[s] for s in (1, 2)], rtol=1e-5)
    assert Checkpointer(tmp_path / "two").step("latest") == STEPS

    resumed_config = tiny_config(tmp_path / "two", tiny_store_path)
    resumed_config.train.max_steps_per_epoch = STEPS
    resumed = train(resumed_config, resume=True, progress=False)
    after = _step_losses(tmp_path / "two")
    assert sorted(after) == [1, 2, 3, 4]
    np.testing.assert_allclose([after[s] for s in (3, 4)], [expected[s] for s in (3, 4)], rtol=1e-4)
    assert int(resumed.state.step) == int(reference.state.step) == 2 * STEPS
    # Reduction order differs (gloo between processes): Adam moves a parameter whose gradient is ~0 by up to
    # +-lr per step either way, so parameters agree to 2 * lr * steps, losses far closer.
    bound = 2 * reference_config.train.learning_rate * 2 * STEPS
    chex.assert_trees_all_close(jax.device_get(resumed.state.params), jax.device_get(reference.state.params),
                                atol=bound)
