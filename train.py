"""Train cytoself: python train.py --config=configs/full.py [--config.some.field=value] [--resume]."""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in config.workdir from its latest checkpoint.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # orbax and grain log every checkpoint step at INFO through absl; keep the console for our own progress
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    from cytoself_jax.training.loop import NonFiniteLossError, train
    from cytoself_jax.data.store import StoreError

    config = _CONFIG.value
    try:
        result = train(config, resume=_RESUME.value)
    except (ValueError, FileExistsError, FileNotFoundError, NonFiniteLossError, StoreError) as e:
        sys.exit(f"error: {e}")
    print(f"{result.loop.stop_reason}. best epoch {result.loop.best_epoch} "
          f"(val loss {result.loop.best_val_loss:.4f}); run directory: {result.run_dir}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
