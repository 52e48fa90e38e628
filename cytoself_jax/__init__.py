"""cytoself-jax: self-supervised protein localization embeddings (Kobayashi et al. 2022) in JAX/Flax."""
