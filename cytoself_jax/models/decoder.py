"""Residual upsampling decoders of cytoself, NHWC. Every BatchNorm here has no learned affine and every
convolution but the optional final one has no bias, as in the reference's decoder."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cytoself_jax.models.layers import ConvBN, ModelConfigError


class ResidualUnit(nn.Module):
    """The reference's residual unit: SiLU(x + BN(conv3x3(SiLU(BN(conv3x3(x)))))), channels unchanged."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        h = ConvBN(features, 3, affine=False, dtype=self.dtype, name="conv1")(x, train)
        h = ConvBN(features, 3, affine=False, activation=False, dtype=self.dtype, name="conv2")(h, train)
        return nn.silu(h + x)


class DecoderBlock(nn.Module):
    """Bilinear upsampling to exactly `size` (h, w) -> residual units at the input width -> conv3x3-BN-SiLU to
    `features` channels. (B, h0, w0, C) -> (B, h, w, features)."""

    size: tuple[int, int]
    features: int
    residual_units: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        # Half-pixel centres, i.e. PyTorch's bilinear upsampling with align_corners=False.
        x = jax.image.resize(x, (x.shape[0], *self.size, x.shape[-1]), method="bilinear")
        for i in range(self.residual_units):
            x = ResidualUnit(dtype=self.dtype, name=f"res{i}")(x, train)
        return ConvBN(self.features, 3, affine=False, dtype=self.dtype, name="out")(x, train)


class Decoder(nn.Module):
    """DecoderBlocks to sizes[i] with features[i] channels, then, when out_features is set, a linear 3x3 conv
    (with bias) to out_features channels. (B, h, w, C) -> (B, *sizes[-1], out_features or features[-1]).

    remat: keep only each block's convolution outputs for the backward pass and recompute the rest (upsampling,
    BatchNorm, SiLU): the same FLOPs in the convolutions, a fraction of the activation memory. Same parameters.
    """

    sizes: Sequence[tuple[int, int]]
    features: Sequence[int]
    out_features: Optional[int] = None
    residual_units: int = 2
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if len(self.sizes) != len(self.features):
            raise ModelConfigError(f"Decoder: features: expected {len(self.sizes)} entries (one per size), got {self.features}")
        # static_argnums counts self: 2 is `train`, a Python bool that selects the BatchNorm mode
        block = DecoderBlock
        if self.remat:
            block = nn.remat(DecoderBlock, static_argnums=(2,), policy=jax.checkpoint_policies.dots_saveable)
        for i, (size, features) in enumerate(zip(self.sizes, self.features)):
            x = block(tuple(size), features, self.residual_units, dtype=self.dtype, name=f"block{i}")(x, train)
        if self.out_features is not None:
            x = nn.Conv(self.out_features, (3, 3), padding="SAME", dtype=self.dtype, name="out")(x)
        return x
