"""Building blocks shared by the encoders and decoders, and the model package's error type."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cytoself_jax.models.depthwise import DepthwiseConv

# PyTorch BatchNorm2d defaults (eps 1e-5, momentum 0.1); Flax's momentum is the weight of the old statistics.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# torchvision EfficientNet initialises convolutions with kaiming_normal(mode="fan_out").
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ModelConfigError(ValueError):
    """A model configuration field or a model input does not have the expected value or shape."""


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
        depthwise = self.groups == self.features == x.shape[-1] > 1 and self.padding == "SAME" and not self.bias
        if depthwise and jax.default_backend() == "cpu":
            # XLA's CPU grouped convolution is ~10x slower than this formulation (same parameter, same result);
            # GPUs keep cuDNN's depthwise convolution.
            conv = DepthwiseConv(self.kernel_size, self.strides, self.kernel_init, self.dtype, name="conv")
        else:
            conv = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
                           padding=self.padding, feature_group_count=self.groups, use_bias=self.bias,
                           kernel_init=self.kernel_init, dtype=self.dtype, name="conv")
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
