"""Train cytoself: python train.py --config=configs/full.py [--config.some.field=value] [--resume].

Bad input ends the program with one line on stderr, 'error: <file or flag>: <field>: <what was expected>', and
exit status 2 (command line) or 1 (data, config values, training failures). Ctrl-C (status 130) and SIGTERM, how
clusters preempt jobs (status 143), stop the run cleanly: a checkpoint save in progress completes, and the last line
says which checkpoint --resume continues from. SIGTERM first saves the run at the next step boundary (mid-epoch:
--resume continues the epoch at its next batch); Ctrl-C stops at once, --resume continuing from the latest
checkpoint (the epoch's end, or a mid-epoch one of config.train.checkpoint_every_steps/_minutes).
"""

from __future__ import annotations

import logging
import re
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in config.workdir from its latest checkpoint.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host: call jax.distributed.initialize() first (coordinator, process count and id from the cluster "
    "environment: SLURM's srun, Open MPI, Kubernetes; see bench/README.md, 'Multi-host data parallelism').")


def _usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown_field(argv: list[str], err: Exception) -> str:
    """A one-line message for an override of a field the config lacks (ml_collections raises a KeyError or
    AttributeError wrapping "'name'\\nDid you mean ...")."""
    text = str(err.args[0] if err.args else err)
    key = re.search(r"'([^'\\]+)", text)
    name = key.group(1) if key else "?"
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and name in a.split("=")[0].split(".")),
                "--config.?")
    return (f"{flag}: no field {name!r} in the config{f' (did you mean {hint.group(1)!r}?)' if hint else ''}; "
            "see the config file and cytoself_jax/config.py for the fields")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors instead of tracebacks."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.workdir  # a config file that failed to load raises on first use
    except flags.Error as e:  # a config file that raised comes with its traceback: keep the first and last lines
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        _usage_error(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except OSError as e:  # config_flags: the config file is missing or unreadable
        _usage_error(f"--config: cannot load the config file ({str(e).strip().splitlines()[-1].strip()})")
    except (AttributeError, KeyError) as e:  # config_flags: --config.<field> names no field of the config
        _usage_error(_unknown_field(argv, e))
    if len(rest) > 1:
        _usage_error(f"unexpected arguments {rest[1:]} (config fields are set as --config.<field>=<value>)")
    return rest


def main(argv: list[str]) -> None:
    # orbax and grain log every checkpoint step at INFO through absl; keep the console for our own progress
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    # A failed checkpoint write (a full disk) makes asyncio log a traceback for each of orbax's pending write tasks;
    # the run reports the failure itself, in one line
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from cytoself_jax.compile_cache import enable_compilation_cache
    from cytoself_jax.cpu_devices import split_cpu_for

    # Before any JAX call: on a CPU, one device per core runs the batch's shares side by side (no effect on GPUs)
    split_cpu_for(_CONFIG.value.train.batch_size)
    from cytoself_jax.training.checkpoint import describe_latest
    from cytoself_jax.training.loop import NonFiniteLossError, RunStoppedError, train
    from cytoself_jax.training.signals import Terminated, raise_terminated

    enable_compilation_cache()  # a second run, and eval after it, load the compiled programs instead of compiling
    if _DISTRIBUTED.value:
        import jax

        import orbax.checkpoint  # noqa: F401 - defines the flag below

        jax.distributed.initialize()  # before any other JAX call: the mesh then spans every host's devices
        # orbax's save barriers as coordination-service waits, not device collectives: gloo's give up after 30 s,
        # shorter than the first process may spend writing a checkpoint while the others wait
        flags.FLAGS.experimental_orbax_use_distributed_barrier = True
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        result = train(_CONFIG.value, resume=_RESUME.value)
    except (ValueError, OSError, NonFiniteLossError, RunStoppedError) as e:  # input checks raise ValueError subclasses
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, Terminated) as e:  # a checkpoint save in progress was completed first
        terminated = isinstance(e, Terminated)
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: {describe_latest(_CONFIG.value.workdir)}",
              file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    if result.already_finished:
        print(f"{result.run_dir}: this run is already finished; nothing to train (evaluate it with "
              f"eval.py --ckpt {result.run_dir})")
    print(f"{result.loop.stop_reason}. best epoch {result.loop.best_epoch} "
          f"(val loss {result.loop.best_val_loss:.4f}); run directory: {result.run_dir}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
