"""Dense 2-D convolution with its kernel gradient written so that XLA's CPU backend takes its fast path.

Autodiff writes a convolution's kernel gradient as one more convolution whose window is the whole feature map
and whose contracted dimension is the batch. XLA's CPU backend hands that convolution to YNNPACK whenever it has
more than 16 channels, and YNNPACK runs it 2.5-3x slower than Eigen's convolution does: in the PyTorch
reference's model at demo sizes the kernel gradients were a third of the training step's op time
(bench/profile_step.py; bench/README.md, "Where our CPU step loses"). Here the kernel gradient is

- for a 1x1, stride-1 convolution, one matrix product over batch and pixels;
- otherwise the same convolution with input and kernel dilated by 2 and a stride of 2: the same sums (every
  product lands on the undilated positions), but YNNPACK declines dilated inputs, so Eigen runs it. Eigen
  contracts over the batch, so this pays only with at least MIN_BATCH images per device; below that, and when
  YNNPACK would decline anyway (at most 16 channels), autodiff's own form is kept.

The forward pass and the input's gradient are lax.conv_general_dilated's and its autodiff's; the kernel's
gradient equals autodiff's up to float rounding (tests/test_dense_conv.py). Used on the CPU backend only.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Eigen's convolution contracts the kernel gradient over the images of one device: with fewer it loses to
# YNNPACK (2 images of 100x100: 3.5x slower; 16 of 48x48: 2.3x faster).
MIN_BATCH = 8
# XLA's CPU backend leaves convolutions with fewer channels (input and output) than this to Eigen already.
YNNPACK_MIN_CHANNELS = 17

Padding = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """lax.conv_general_dilated(x, kernel, (stride, stride), padding) in NHWC / HWIO: x (B, H, W, Ci), kernel
    (kh, kw, Ci, Co), padding ((top, bottom), (left, right)) -> (B, H', W', Co)."""
    return _conv(x, kernel, stride, padding)


def _forward(x, kernel, stride, padding):
    return _conv(x, kernel, stride, padding), (x, kernel)


def kernel_gradient(x: jax.Array, g: jax.Array, kernel_shape: Sequence[int], stride: int, padding: Padding,
                    devices: int = 1) -> jax.Array:
    """d(sum(conv2d(x, k) * g)) / dk, (kh, kw, Ci, Co) in x's dtype, for x (B, H, W, Ci) and the output's
    cotangent g (B, H', W', Co). `devices`: how many data-parallel devices share the batch (B/devices images each);
    it only chooses the formulation."""
    kh, kw, ci, co = kernel_shape
    if (kh, kw, stride) == (1, 1, 1) and padding == ((0, 0), (0, 0)):
        with jax.named_scope("kernel_gradient"):
            return lax.dot_general(x.reshape(-1, ci), g.reshape(-1, co), (((0,), (0,)), ((), ()))).reshape(kernel_shape)
    if x.dtype != jnp.float32 or max(x.shape[0] // devices, co) < YNNPACK_MIN_CHANNELS \
            or x.shape[0] // devices < MIN_BATCH:
        return jax.vjp(lambda k: _conv(x, k, stride, padding), jnp.zeros(kernel_shape, x.dtype))[1](g)[0]
    # channels act as the batch, images as the contracted features, g as a kernel the size of the output map;
    # the name scope lets bench/profile_step.py tell it from the input's gradient
    (pt, pb), (pl, pr) = padding
    with jax.named_scope("kernel_gradient"):
        dk = lax.conv_general_dilated(
            jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (2, 2),
            ((2 * pt, 2 * pb), (2 * pl, 2 * pr)), lhs_dilation=(2, 2), rhs_dilation=(2 * stride, 2 * stride),
            dimension_numbers=_DIMENSIONS)
    # (Ci, kh', kw', Co): 'SAME' padding of a strided convolution can leave more positions than the kernel has
    return jnp.transpose(dk[:, :kh, :kw], (1, 2, 0, 3))


def _backward(stride, padding, residuals, g):
    x, kernel = residuals
    dx = jax.vjp(lambda x: _conv(x, kernel, stride, padding), x)[1](g)[0]
    dk = kernel_gradient(x, g, kernel.shape, stride, padding, jax.device_count())
    return dx, dk.astype(kernel.dtype)


conv2d.defvjp(_forward, _backward)


class DenseConv(nn.Module):
    """nn.Conv(features, (k, k), strides, padding 'SAME' or 'VALID', optional bias) with the same parameters
    ('kernel' (k, k, Ci, features) and 'bias' (features,), float32) computed by conv2d. (B, H, W, Ci) -> (B, H',
    W', features)."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: str = "SAME"
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        pads = lax.padtype_to_pads(x.shape[1:3], (k, k), (self.strides, self.strides), self.padding)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, tuple(map(tuple, pads)))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(self.dtype)
        return y
