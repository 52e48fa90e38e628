"""The CPU dense convolution (own kernel gradient) against autodiff of lax's convolution and a numpy loop."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cytoself_jax.models import dense_conv
from cytoself_jax.models.dense_conv import DenseConv, conv2d, kernel_gradient
from cytoself_jax.models.layers import ConvBN


def _numpy_kernel_gradient(x, g, kernel_shape, stride, padding):
    """dk[i, j, c, o] = sum over images and output pixels of xpad[b, s*y + i, s*x + j, c] * g[b, y, x, o]."""
    kh, kw, _, _ = kernel_shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *padding, (0, 0)))
    g = np.asarray(g, np.float64)
    oh, ow = g.shape[1:3]
    dk = np.zeros(kernel_shape)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            dk[i, j] = np.einsum("bhwc,bhwo->co", patch, g)
    return dk


CASES = [  # (batch, size, kernel, stride, padding, channels in, out)
    (8, 7, 3, 1, "SAME", 3, 20), (8, 8, 3, 2, "SAME", 4, 18), (8, 9, 3, 2, "SAME", 20, 5), (9, 6, 3, 1, "VALID", 17, 17),
    (8, 6, 1, 1, "SAME", 5, 19), (8, 7, 1, 2, "SAME", 6, 20), (2, 6, 3, 1, "SAME", 4, 30), (8, 5, 3, 1, "SAME", 4, 6),
]


@pytest.mark.parametrize("batch,size,kernel,stride,padding,cin,cout", CASES)
def test_kernel_gradient_equals_a_numpy_loop_in_every_formulation(batch, size, kernel, stride, padding, cin, cout):
    # the cases cover the matrix product (1x1), the dilated convolution (>= MIN_BATCH images, > 16 channels) and
    # autodiff's own form (2 images; at most 16 channels)
    rng = np.random.default_rng(batch + size * 10 + kernel * 100 + stride)
    x = jnp.asarray(rng.standard_normal((batch, size, size + 1, cin)), jnp.float32)
    pads = tuple(map(tuple, lax.padtype_to_pads(x.shape[1:3], (kernel, kernel), (stride, stride), padding)))
    kernel_shape = (kernel, kernel, cin, cout)
    out_shape = jax.eval_shape(lambda x: conv2d(x, jnp.zeros(kernel_shape), stride, pads), x).shape
    g = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    ours = jax.jit(kernel_gradient, static_argnums=(2, 3, 4))(x, g, kernel_shape, stride, pads)
    chex.assert_shape(ours, kernel_shape)
    chex.assert_trees_all_close(ours, _numpy_kernel_gradient(x, g, kernel_shape, stride, pads).astype(np.float32),
                                rtol=1e-4, atol=1e-4)


def test_dilated_form_is_taken_only_where_it_pays():
    x, g = jnp.zeros((8, 6, 6, 4)), jnp.zeros((8, 6, 6, 20))
    pads = ((1, 1), (1, 1))

    def convolutions(devices, x=x, g=g):
        text = jax.jit(lambda x, g: kernel_gradient(x, g, (3, 3, 4, g.shape[-1]), 1, pads, devices)).lower(x, g).as_text()
        return text.count("lhs_dilate = [2, 2]")

    assert convolutions(1) == 1
    assert convolutions(2) == 0  # 4 images per device: below MIN_BATCH
    assert dense_conv.MIN_BATCH == 8
    assert convolutions(1, g=jnp.zeros((8, 6, 6, 16))) == 0  # 16 channels: XLA's CPU keeps it on Eigen already
    assert convolutions(1, x=x.astype(jnp.bfloat16), g=g.astype(jnp.bfloat16)) == 0


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (1, "VALID")])
def test_values_and_gradients_equal_autodiff_of_lax(stride, padding):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.standard_normal((8, 9, 8, 5)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 5, 24)), jnp.float32)
    pads = tuple(map(tuple, lax.padtype_to_pads(x.shape[1:3], (3, 3), (stride, stride), padding)))

    def lax_conv(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    weights = jnp.asarray(rng.standard_normal(lax_conv(x, k).shape), jnp.float32)
    ours = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(weights * jnp.sin(conv2d(x, k, stride, pads))), (0, 1)))
    theirs = jax.value_and_grad(lambda x, k: jnp.sum(weights * jnp.sin(lax_conv(x, k))), (0, 1))
    chex.assert_trees_all_close(ours(x, k), theirs(x, k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding,bias", [("SAME", False), ("VALID", True)])
def test_dense_conv_keeps_flax_conv_parameters_and_results(padding, bias):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 7, 6)), jnp.float32)
    ours = DenseConv(10, 3, strides=1, padding=padding, use_bias=bias)
    flax_conv = nn.Conv(10, (3, 3), padding=padding, use_bias=bias)
    variables = ours.init(jax.random.PRNGKey(0), x)
    reference = flax_conv.init(jax.random.PRNGKey(0), x)
    chex.assert_trees_all_equal(variables, reference)  # same names, shapes and initial values
    chex.assert_trees_all_close(ours.apply(variables, x), flax_conv.apply(reference, x), atol=1e-5)


class _FlaxConvBN(nn.Module):
    """ConvBN as it was built before dense_conv: flax's nn.Conv under the same name."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(12, (3, 3), strides=2, use_bias=False, name="conv")(x)
        return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x)


def test_conv_bn_keeps_the_parameters_and_results_of_flax_conv():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 8)), jnp.float32)
    ours = ConvBN(12, 3, strides=2, activation=False)
    variables = ours.init(jax.random.PRNGKey(0), x, False)
    reference = _FlaxConvBN().init(jax.random.PRNGKey(0), x)
    chex.assert_trees_all_equal(variables, reference)  # same tree, same initial values: old runs keep loading
    chex.assert_trees_all_close(ours.apply(variables, x, False), _FlaxConvBN().apply(reference, x), atol=1e-5)
