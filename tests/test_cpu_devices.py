"""train.py's CPU split: the host device count it sets before JAX starts, and that it never overrides the user's."""
import pytest

from cytoself_jax import cpu_devices


@pytest.mark.parametrize("cores, batch, expected", [(2, 32, 2), (6, 32, 4), (12, 36, 6), (16, 64, 8), (1, 32, 1),
                                                    (4, 7, 1)])
def test_the_largest_divisor_of_the_batch_up_to_the_cores(monkeypatch, cores, batch, expected):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: cores)
    assert cpu_devices.split_cpu_for(batch) == expected
    flags = cpu_devices.os.environ["XLA_FLAGS"]
    assert flags.startswith("--xla_cpu_enable_fast_math=false")  # the user's flags are kept
    assert (f"--xla_force_host_platform_device_count={expected}" in flags) == (expected > 1)


def test_a_device_count_in_xla_flags_is_the_users_choice(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 16)
    assert cpu_devices.split_cpu_for(32) == 3
    assert cpu_devices.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
