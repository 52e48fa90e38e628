"""The paper's validation-driven schedule, as its Keras callbacks run it: lr x plateau_factor after
`plateau_patience` epochs without an improvement by more than `plateau_min_delta` (ReduceLROnPlateau, with its own
best; the counter restarts after each drop, so the lr falls at most once per `plateau_patience` epochs, and never
below `plateau_min_lr`, the paper's code's 1e-8), stop
after `early_stop_patience` epochs without any decrease (EarlyStopping, min_delta 0), the best checkpoint at the
lowest value (ModelCheckpoint).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from cytoself_jax.training.checkpoint import LoopState


def after_validation(
    loop: LoopState, val_loss: float, train_cfg: ml_collections.ConfigDict
) -> tuple[LoopState, bool]:
    """The loop state after epoch `loop.epoch` ended with val_loss (the monitored validation quantity); also
    whether this epoch is the new best.

    Epochs before train.select_from_epoch (1-based; absent in older runs: 1), or before the last epoch
    (train.max_epochs) in a shorter run, are a warm-up: never best, and they count towards neither patience; so
    every run that ends has a best epoch. Sets stop_reason on an early stop. The epoch budget is not part of the
    state: a resumed run may be given a larger train.max_epochs. train.plateau_min_delta absent from train_cfg: 0,
    one best for both counters; train.plateau_min_lr absent (runs saved before it existed): no floor."""
    epoch = loop.epoch + 1
    if epoch < min(train_cfg.get("select_from_epoch", 1), train_cfg.max_epochs):
        return dataclasses.replace(loop, epoch=epoch, stop_reason=""), False
    improved = val_loss < loop.best_val_loss
    if improved:
        loop = dataclasses.replace(loop, best_val_loss=val_loss, best_epoch=epoch, epochs_since_best=0)
    else:
        loop = dataclasses.replace(loop, epochs_since_best=loop.epochs_since_best + 1)
    if val_loss < loop.plateau_best - train_cfg.get("plateau_min_delta", 0.0):
        loop = dataclasses.replace(loop, plateau_best=val_loss, plateau_epochs=0)
    else:
        loop = dataclasses.replace(loop, plateau_epochs=loop.plateau_epochs + 1)
        floor = train_cfg.get("plateau_min_lr", 0.0)
        if loop.plateau_epochs >= train_cfg.plateau_patience and loop.learning_rate > floor:
            # Keras: new lr = max(lr * factor, min_lr), and no drop (nor counter reset) once lr is at min_lr
            loop = dataclasses.replace(loop, learning_rate=max(loop.learning_rate * train_cfg.plateau_factor, floor),
                                       plateau_epochs=0)
    stop = ""
    if loop.epochs_since_best >= train_cfg.early_stop_patience:
        stop = f"early stop: no validation improvement for {loop.epochs_since_best} epochs"
    return dataclasses.replace(loop, epoch=epoch, stop_reason=stop), improved
