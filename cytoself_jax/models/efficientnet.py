"""EfficientNet-B0 style encoders (MBConv blocks) for the two halves of the cytoself encoder, NHWC.

Convolutions use XLA 'SAME' padding; the PyTorch reference pads symmetrically by k//2, which differs on
stride-2 convolutions of even-sized inputs (the extra padding pixel goes at the end, not both sides). Output
sizes agree: ceil(size / stride).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cytoself_jax.models.layers import ConvBN, he_fan_out

# (expand ratio, kernel size, stride of the first block, output channels, number of blocks)
Stage = tuple[int, int, int, int, int]


class MBConv(nn.Module):
    """Inverted residual block: [expand 1x1 conv-BN-SiLU] -> depthwise kxk conv-BN-SiLU -> squeeze-excitation
    (width = input channels / 4, SiLU, sigmoid) -> project 1x1 conv-BN, plus the input (with stochastic depth,
    per-sample drop-path on the 'dropout' rng) when stride is 1 and channels are unchanged."""

    expand: int
    kernel: int
    stride: int
    out_features: int
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        in_features = x.shape[-1]
        hidden = in_features * self.expand
        conv = dict(kernel_init=he_fan_out, dtype=self.dtype)
        h = x
        if self.expand != 1:
            h = ConvBN(hidden, 1, name="expand", **conv)(h, train)
        h = ConvBN(hidden, self.kernel, strides=self.stride, groups=hidden, name="depthwise", **conv)(h, train)

        s = jnp.mean(h, axis=(1, 2), keepdims=True)
        s = nn.silu(nn.Dense(max(1, in_features // 4), dtype=self.dtype, name="se_reduce")(s))
        s = nn.sigmoid(nn.Dense(hidden, dtype=self.dtype, name="se_expand")(s))
        h = h * s

        h = ConvBN(self.out_features, 1, activation=False, name="project", **conv)(h, train)
        if self.stride == 1 and in_features == self.out_features:
            # Drop whole samples' residual branches: the mask broadcasts over H, W, C.
            h = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)(h)
            h = h + x
        return h


class Encoder(nn.Module):
    """Stem 3x3 conv-BN-SiLU (stem_stride) -> MBConv stages -> 1x1 conv-BN-SiLU head to out_features.

    The head is the reference's (torchvision's ConvNormActivation with SiLU) and feeds the quantizer directly.
    Stochastic-depth rates grow linearly over the blocks: drop_path_rate * block_index / num_blocks.
    Input (B, H, W, C) -> (B, H', W', out_features) with H' = H reduced by ceil-division by every stride.
    """

    stem_features: int
    stem_stride: int
    stages: Sequence[Stage]
    out_features: int
    drop_path_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvBN(
            self.stem_features, 3, strides=self.stem_stride, kernel_init=he_fan_out, dtype=self.dtype, name="stem"
        )(x, train)
        num_blocks = sum(stage[4] for stage in self.stages)
        block = 0
        for expand, kernel, stride, features, repeats in self.stages:
            for r in range(repeats):
                x = MBConv(
                    expand,
                    kernel,
                    stride if r == 0 else 1,
                    features,
                    drop_path=self.drop_path_rate * block / num_blocks,
                    dtype=self.dtype,
                    name=f"block{block}",
                )(x, train)
                block += 1
        return ConvBN(self.out_features, 1, kernel_init=he_fan_out, dtype=self.dtype, name="head")(x, train)
