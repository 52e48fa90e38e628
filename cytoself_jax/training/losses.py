"""The cytoself training objective: reconstruction, local-map prediction, VQ and identification terms."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

LOCAL_PREDICTION_TARGETS = ("z_local", "quantized_local")
RECONSTRUCTION_VARIANCES = ("dataset", "batch")
# The defaults of config.loss fields added after runs were first saved: what the code did before they existed.
LOSS_FIELD_DEFAULTS = {"local_prediction_target": "quantized_local", "reconstruction_variance": "batch"}
# The validation quantities model selection can follow (config.train.monitor).
MONITORS = ("loss", "loss_without_vq")
# Terms left out of the monitored quantity 'loss_without_vq'.
VQ_TERMS = ("vq_local", "vq_global")


def loss_setting(loss_cfg: ml_collections.ConfigDict, field: str) -> str:
    """config.loss.<field> (local_prediction_target or reconstruction_variance), or its default for runs saved
    before the field existed; raises ValueError naming the field for an unknown value."""
    value = loss_cfg.get(field, LOSS_FIELD_DEFAULTS[field])
    allowed = LOCAL_PREDICTION_TARGETS if field == "local_prediction_target" else RECONSTRUCTION_VARIANCES
    if value not in allowed:
        raise ValueError(f"config.loss.{field}: expected one of {allowed}, found {value!r}")
    return value


def loss_terms(output, images: jax.Array, labels: jax.Array, *, data_variance: Optional[float] = None,
               local_target: str = "z_local") -> dict[str, jax.Array]:
    """Unweighted scalar float32 loss terms of one batch.

    output: a CytoselfOutput for images (B,H,W,C) with integer protein labels (B,).
    reconstruction: MSE(reconstruction, input) / data_variance, the pixel variance of the training split (a
    constant, so the validation loss does not depend on the batch); data_variance=None divides by the batch's own
    variance instead (runs saved before the constant existed).
    local_prediction: MSE of decoder2's output against local_target: 'z_local' (the paper: encoder1's output before
    quantization, gradients flowing into both) or 'quantized_local' (the stop-gradient quantized local map).
    """
    images = images.astype(jnp.float32)
    recon = output.reconstruction.astype(jnp.float32)
    variance = jnp.var(images) + 1e-8 if data_variance is None else data_variance
    if local_target == "z_local":
        target = output.z_local.astype(jnp.float32)
    elif local_target == "quantized_local":
        target = jax.lax.stop_gradient(output.vq_local.quantized.astype(jnp.float32))
    else:
        raise ValueError(f"config.loss.local_prediction_target: expected one of {LOCAL_PREDICTION_TARGETS}, "
                         f"found {local_target!r}")
    terms = {
        "reconstruction": jnp.mean((recon - images) ** 2) / variance,
        "local_prediction": jnp.mean((output.local_prediction.astype(jnp.float32) - target) ** 2),
        "vq_local": output.vq_local.loss,
        "vq_global": output.vq_global.loss,
    }
    for level, logits in output.logits.items():
        terms[f"classification_{level}"] = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels
        ).mean()
    return terms


def config_loss_terms(loss_cfg: ml_collections.ConfigDict, data_variance: Optional[float]):
    """loss_terms with the settings of config.loss bound: (output, images, labels) -> terms. data_variance: the
    training split's pixel variance (dataset.json), used when config.loss.reconstruction_variance is 'dataset'."""
    target = loss_setting(loss_cfg, "local_prediction_target")
    if loss_setting(loss_cfg, "reconstruction_variance") == "batch":
        data_variance = None
    elif data_variance is None or not data_variance > 0:
        raise ValueError("config.loss.reconstruction_variance='dataset' needs the training split's pixel variance "
                         f"(dataset.json 'data_variance'), found {data_variance!r}")

    def terms(output, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        return loss_terms(output, images, labels, data_variance=data_variance, local_target=target)

    return terms


def total_loss(terms: dict[str, jax.Array], weights: ml_collections.ConfigDict) -> jax.Array:
    """Weighted sum of the terms; config.loss weights group them by kind (vq_*, classification_*)."""
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + weights[name.split("_")[0] if name.startswith(("vq_", "classification_")) else name] * value
    return total


def monitored_value(metrics: dict[str, float], weights: ml_collections.ConfigDict, monitor: str) -> float:
    """The validation quantity that model selection follows: 'loss' (the total) or 'loss_without_vq' (the total
    less the weighted VQ terms)."""
    if monitor == "loss":
        return metrics["loss"]
    if monitor == "loss_without_vq":
        return metrics["loss"] - sum(weights["vq"] * metrics[t] for t in VQ_TERMS)
    raise ValueError(f"config.train.monitor: expected one of {MONITORS}, found {monitor!r}")
