"""The tests' compilation cache is a temporary folder of their own, inherited by the commands they start."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from cytoself_jax.compile_cache import ENV_VAR, default_cache_dir, enable_compilation_cache


def test_the_tests_cache_is_their_own_and_commands_they_start_inherit_it():
    folder = Path(jax.config.jax_compilation_cache_dir)
    assert folder.is_dir()
    assert folder.is_relative_to(Path(tempfile.gettempdir())) and folder.name.startswith("cytoself-jax-test-cache-")
    assert folder != default_cache_dir()
    assert os.environ[ENV_VAR] == str(folder)
    started = subprocess.run([sys.executable, "-c", "from cytoself_jax.compile_cache import enable_compilation_cache;"
                              "print(enable_compilation_cache())"], capture_output=True, text=True, check=True)
    assert started.stdout.strip() == str(folder)


def test_off_and_the_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cytoself_jax" / "jax"
    for off in ("off", "", "0"):
        monkeypatch.setenv(ENV_VAR, off)
        assert enable_compilation_cache() is None
    session = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "moved"))
    try:
        assert enable_compilation_cache() == tmp_path / "moved" and (tmp_path / "moved").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "moved")
    finally:
        enable_compilation_cache(session)
