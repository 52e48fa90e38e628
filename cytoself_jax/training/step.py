"""The jitted train and eval steps, data-parallel over a mesh (batch split along 'data', state replicated)."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from cytoself_jax.models.quantizer import MAINTENANCE, apply_codebook_replacements, code_histogram
from cytoself_jax.training.losses import config_loss_terms, total_loss
from cytoself_jax.mesh import batch_sharding, replicated
from cytoself_jax.train_state import TrainState, make_optimizer

Metrics = dict[str, jax.Array]


def loss_and_grads(model, loss_cfg: ml_collections.ConfigDict, state: TrainState, batch: dict, key: jax.Array,
                   data_variance: Optional[float] = None):
    """The training loss of one batch and its gradient wrt the params. loss_cfg: config.loss (weights and
    settings); data_variance: the training split's pixel variance (dataset.json).

    Returns ((loss, (terms, new model_state, perplexity_local, perplexity_global)), grads)."""
    key = jax.random.fold_in(key, state.step)  # keys depend on the step alone, so resume is exact
    terms_of = config_loss_terms(loss_cfg, data_variance)

    def loss_fn(params):
        out, new_model_state = model.apply(
            {"params": params, **state.model_state},
            batch["image"],
            train=True,
            rngs={"dropout": key},
            mutable=list(state.model_state.keys()),
        )
        terms = terms_of(out, batch["image"], batch["label"])
        aux = (terms, new_model_state, out.vq_local.perplexity, out.vq_global.perplexity)
        return total_loss(terms, loss_cfg), aux

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def make_train_step(
    model, loss_cfg: ml_collections.ConfigDict, mesh: Mesh, data_variance: Optional[float] = None
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]]:
    """(state, batch, key) -> (state, metrics). The state is donated; metrics are float32 scalars, among them
    'finite' (1.0 when loss and gradients are finite), which the loop checks without stalling the device, and
    with code restarts on 'codebook_restarts_<level>' (codes restarted since training started).
    data_variance: the training split's pixel variance (dataset.json), for config.loss.reconstruction_variance."""
    tx = make_optimizer(0.0)  # the learning rate itself comes from opt_state
    config_loss_terms(loss_cfg, data_variance)  # refuse bad loss settings here, not inside the trace

    def step(state: TrainState, batch: dict, key: jax.Array) -> tuple[TrainState, Metrics]:
        (loss, (terms, model_state, ppl_local, ppl_global)), grads = loss_and_grads(
            model, loss_cfg, state, batch, key, data_variance
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # codebook rows the quantizers replaced in this step (k-means init, restarts) override the update
        params, model_state = apply_codebook_replacements(params, model_state)
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            **terms,
            "perplexity_local": ppl_local,
            "perplexity_global": ppl_global,
            "grad_norm": grad_norm,
            "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32),
        }
        for level in ("local", "global"):  # codes restarted so far, when restarts are on
            stats = model_state.get(MAINTENANCE, {}).get(f"vq_{level}", {})
            if "restarts" in stats:
                metrics[f"codebook_restarts_{level}"] = stats["restarts"].astype(jnp.float32)
        new_state = TrainState(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        return new_state, metrics

    rep = replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(rep, batch_sharding(mesh), rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )


def make_eval_step(
    model, loss_cfg: ml_collections.ConfigDict, data_variance: Optional[float] = None
) -> Callable[[TrainState, dict], Metrics]:
    """(state, batch) -> metrics of one batch: the loss terms, per classifier head the number
    of correct top-1 predictions ('correct_<level>'), and per codebook how often each code was used
    ('codes_<level>': float32 (num_codes,), summed over the batch's positions). Shardings follow the inputs, so
    a final partial batch that cannot be split over the devices runs replicated instead. data_variance: as for
    make_train_step (the same constant for validation as for training)."""
    spec = model.spec
    terms_of = config_loss_terms(loss_cfg, data_variance)

    def step(state: TrainState, batch: dict) -> Metrics:
        out = model.apply({"params": state.params, **state.model_state}, batch["image"], train=False)
        terms = terms_of(out, batch["image"], batch["label"])
        metrics = {"loss": total_loss(terms, loss_cfg), **terms}
        for level, vq, num_codes in (("local", out.vq_local, spec.vq_local.num_codes),
                                     ("global", out.vq_global, spec.vq_global.num_codes)):
            metrics[f"codes_{level}"] = jnp.sum(code_histogram(vq.indices, num_codes), axis=0).astype(jnp.float32)
        for level, logits in out.logits.items():
            metrics[f"correct_{level}"] = jnp.sum(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return metrics

    return jax.jit(step)
