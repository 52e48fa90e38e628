"""The cytoself training objective: reconstruction, local-map prediction, VQ and identification terms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def loss_terms(output, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Unweighted scalar float32 loss terms of one batch.

    output: a CytoselfOutput for images (B,H,W,C) with integer protein labels (B,).
    reconstruction: MSE(reconstruction, input) / var(input), the batch variance making it scale-free.
    local_prediction: MSE of decoder2's reconstruction of the local quantized map; the map is a target, so its
    gradient is stopped (decoder2 learns to predict it; the local encoder is not pulled towards decoder2).
    """
    images = images.astype(jnp.float32)
    recon = output.reconstruction.astype(jnp.float32)
    terms = {
        "reconstruction": jnp.mean((recon - images) ** 2) / (jnp.var(images) + 1e-8),
        "local_prediction": jnp.mean(
            (output.local_prediction.astype(jnp.float32) - jax.lax.stop_gradient(output.vq_local.quantized.astype(jnp.float32))) ** 2
        ),
        "vq_local": output.vq_local.loss,
        "vq_global": output.vq_global.loss,
    }
    for level, logits in output.logits.items():
        terms[f"classification_{level}"] = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels
        ).mean()
    return terms


def total_loss(terms: dict[str, jax.Array], weights: ml_collections.ConfigDict) -> jax.Array:
    """Weighted sum of the terms; config.loss weights group them by kind (vq_*, classification_*)."""
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + weights[name.split("_")[0] if name.startswith(("vq_", "classification_")) else name] * value
    return total
