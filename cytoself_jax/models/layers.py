"""Building blocks shared by the encoders and decoders, and the model package's error type."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cytoself_jax.models.dense_conv import DenseConv
from cytoself_jax.models.depthwise import DepthwiseConv

# PyTorch BatchNorm2d defaults (eps 1e-5, momentum 0.1); Flax's momentum is the weight of the old statistics.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# torchvision EfficientNet initialises convolutions with kaiming_normal(mode="fan_out").
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ModelConfigError(ValueError):
    """A model configuration field or a model input does not have the expected value or shape."""


def conv_layer(features: int, kernel_size: int, strides: int, padding: str, groups: int, use_bias: bool,
               kernel_init: Any, dtype: Any, in_features: int, name: str) -> nn.Module:
    """The convolution module for (B, H, W, in_features) inputs: nn.Conv's parameters and results, computed on the
    CPU backend by the formulations XLA's CPU runs fastest (GPUs keep cuDNN's): depthwise convolutions as
    shifted slices (depthwise.py, ~10x faster than XLA's grouped convolution), dense ones with a kernel gradient
    that stays on Eigen's path (dense_conv.py)."""
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu and groups == features == in_features > 1 and padding == "SAME" and not use_bias:
        return DepthwiseConv(kernel_size, strides, kernel_init, dtype, name=name)
    if on_cpu and groups == 1:
        return DenseConv(features, kernel_size, strides, padding, use_bias, kernel_init, dtype, name=name)
    return nn.Conv(features, (kernel_size, kernel_size), strides=strides, padding=padding, feature_group_count=groups,
                   use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, name=name)


class ConvBN(nn.Module):
    """Conv (padding 'SAME' unless `padding` says 'VALID'; no bias unless `bias`) -> BatchNorm -> optional SiLU, NHWC.

    'SAME' padding differs from the PyTorch reference's symmetric k//2 padding on stride-2 convolutions on even
    inputs (XLA pads the extra pixel at the end instead of both sides); output sizes are the same, ceil(in/stride).
    affine=False gives BatchNorm without learned scale/offset, as in the reference decoder. bias=True keeps the
    convolution's bias before the BatchNorm, as Keras' Conv2D default in the paper's decoders (redundant, but it
    keeps the paper's parameter count).
    """

    features: int
    kernel_size: int
    strides: int = 1
    groups: int = 1
    activation: bool = True
    affine: bool = True
    bias: bool = False
    padding: str = "SAME"
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = conv_layer(self.features, self.kernel_size, self.strides, self.padding, self.groups, self.bias,
                          self.kernel_init, self.dtype, x.shape[-1], name="conv")
        x = conv(x)
        # Flax computes the batch statistics in float32 even for bfloat16 inputs; under jit with the batch
        # sharded over devices they are statistics of the global batch.
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            use_bias=self.affine,
            use_scale=self.affine,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.silu(x) if self.activation else x
