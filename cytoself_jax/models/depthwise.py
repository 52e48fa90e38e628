"""Depthwise convolution as a sum of shifted, per-channel-scaled slices, with its own gradient, for XLA's CPU.

XLA's CPU backend runs grouped convolutions with feature_group_count = channels (the encoders' depthwise kxk
convolutions) through a slow generic path, and their gradients slower still: at the demo's sizes a 3x3 stride-2
depthwise layer's forward + backward takes ~10x longer than the k*k multiply-adds below, which XLA fuses into
one loop each (bench/README.md, "Where our CPU step loses"). The gradient is written out (custom VJP) because
autodiff of strided slices makes k*k scattered pads: the input's gradient is the same tap sum over the
cotangent dilated by the stride and the kernel flipped; the kernel's, one reduction over stacked taps.
Products are accumulated in float32. Results equal lax.conv_general_dilated's (SAME padding) to rounding.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
    """(output size, (before, after)) of XLA's 'SAME' padding: the odd pixel after."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return out, (pad // 2, pad - pad // 2)


def _tap(xp: jax.Array, i: int, j: int, stride: int, out_hw: tuple[int, int]) -> jax.Array:
    """xp[:, i + stride*y, j + stride*x, :] for the output positions (y, x)."""
    b, _, _, c = xp.shape
    oh, ow = out_hw
    return lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                     (1, stride, stride, 1))


def _tap_sum(xp: jax.Array, kernel: jax.Array, stride: int, out_hw: tuple[int, int]) -> jax.Array:
    """sum over (i, j) of the (i, j) tap of xp times kernel[i, j, 0, :], float32 (B, oh, ow, C)."""
    kh, kw = kernel.shape[:2]
    terms = (( _tap(xp, i, j, stride, out_hw) * kernel[i, j, 0]).astype(jnp.float32)
             for i in range(kh) for j in range(kw))
    return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution, 'SAME' padding: x (B, H, W, C), kernel (kh, kw, 1, C) -> (B, ceil(H/s), ceil(W/s), C)
    in x's dtype; equals lax.conv_general_dilated(..., feature_group_count=C)."""
    return _forward(x, kernel, stride)[0]


def _forward(x, kernel, stride):
    (oh, ph), (ow, pw) = (_same_padding(x.shape[1], kernel.shape[0], stride),
                          _same_padding(x.shape[2], kernel.shape[1], stride))
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    return _tap_sum(xp, kernel, stride, (oh, ow)).astype(x.dtype), (x, kernel)


def _backward(stride, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    (oh, ph), (ow, pw) = _same_padding(h, kh, stride), _same_padding(w, kw, stride)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    hp, wp = xp.shape[1:3]
    # kernel: each tap's input patch times the cotangent, summed over batch and positions (one reduction)
    taps = jnp.stack([_tap(xp, i, j, stride, (oh, ow)) for i in range(kh) for j in range(kw)], axis=3)
    dk = jnp.sum((taps * g[:, :, :, None, :]).astype(jnp.float32), axis=(0, 1, 2)).reshape(kh, kw, 1, -1)
    # input: the cotangent dilated by the stride and padded, tap-summed with the flipped kernel at stride 1
    zero = jnp.zeros((), g.dtype)
    gp = lax.pad(g, zero, ((0, 0, 0), (kh - 1, hp - (oh - 1) * stride - 1, stride - 1),
                           (kw - 1, wp - (ow - 1) * stride - 1, stride - 1), (0, 0, 0)))
    dxp = _tap_sum(gp, kernel[::-1, ::-1], 1, (hp, wp))
    dx = dxp[:, ph[0]:ph[0] + h, pw[0]:pw[0] + w]
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv.defvjp(_forward, _backward)


class DepthwiseConv(nn.Module):
    """nn.Conv(features=C, kernel (k, k), strides, 'SAME', feature_group_count=C, no bias) with the same parameter
    ('kernel', (k, k, 1, C), float32) computed by depthwise_conv. (B, H, W, C) -> (B, H', W', C)."""

    kernel_size: int
    strides: int = 1
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, 1, x.shape[-1]), jnp.float32)
        return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)
