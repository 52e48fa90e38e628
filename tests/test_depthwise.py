"""The CPU depthwise convolution (shifted taps, own gradient) against XLA's grouped convolution."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cytoself_jax.models.depthwise import depthwise_conv
from cytoself_jax.models.layers import ConvBN


def _grouped(x, kernel, stride):
    return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1], precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 1), (8, 3, 2), (7, 5, 2), (9, 5, 1), (6, 5, 2), (5, 3, 2)])
def test_values_and_gradients_equal_the_grouped_convolution(size, kernel, stride):
    rng = np.random.default_rng(size * 10 + kernel + stride)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 4)), jnp.float32)  # non-square: rows and columns
    k = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 4)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal(_grouped(x, k, stride).shape), jnp.float32)

    def loss(conv, x, k):
        return jnp.sum(weights * jnp.sin(conv(x, k, stride)))

    # jitted, as the model runs it (op by op, each of the k*k taps' slices and products would compile on its own)
    conv = jax.jit(depthwise_conv, static_argnums=2)
    chex.assert_trees_all_close(conv(x, k, stride), _grouped(x, k, stride), atol=1e-5)
    ours = jax.jit(jax.grad(lambda x, k: loss(depthwise_conv, x, k), argnums=(0, 1)))(x, k)
    xla = jax.grad(lambda x, k: loss(_grouped, x, k), argnums=(0, 1))(x, k)
    chex.assert_trees_all_close(ours, xla, rtol=1e-5, atol=1e-5)
    # in bfloat16 (float32 accumulation): the dtype is kept
    out = conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), stride)
    chex.assert_type(out, jnp.bfloat16)
    chex.assert_trees_all_close(out.astype(jnp.float32), _grouped(x, k, stride), atol=0.1, rtol=0.05)


def test_conv_bn_keeps_the_parameter_and_the_result_of_flax_conv():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 8)), jnp.float32)
    ours = ConvBN(8, 3, strides=2, groups=8)
    variables = ours.init(jax.random.PRNGKey(0), x, False)
    flax_conv = nn.Conv(8, (3, 3), strides=2, padding="SAME", feature_group_count=8, use_bias=False)
    reference = flax_conv.init(jax.random.PRNGKey(0), x)
    chex.assert_trees_all_equal_shapes(variables["params"]["conv"], reference["params"])
    y = ours.apply(variables, x, False)
    bn = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
    expected = nn.silu(bn.apply({"params": variables["params"]["bn"], "batch_stats": variables["batch_stats"]["bn"]},
                                flax_conv.apply({"params": variables["params"]["conv"]}, x)))
    chex.assert_trees_all_close(y, expected, atol=1e-5)
