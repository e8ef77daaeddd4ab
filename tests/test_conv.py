"""The matmul convolution equals lax.conv: forward, input and kernel gradients."""

from __future__ import annotations

import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from td3_jax.core import conv

from td3_jax.core import networks
from td3_jax.core.hparams import EncoderConfig, NetworkConfig


def _reference(x, kernel, stride):
    return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@st.composite
def _conv_case(draw):
    """A random (input shape, kernel shape, stride, seed) with a non-empty output."""
    kernel_size = draw(st.integers(1, 5))
    stride = draw(st.integers(1, 4))
    height = draw(st.integers(kernel_size, kernel_size + 9))
    width = draw(st.integers(kernel_size, kernel_size + 9))
    batch = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 3))
    features = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return (batch, height, width, channels), (kernel_size, kernel_size, channels, features), stride, seed


def _random(shapes, seed):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(key, shape, jnp.float32) for key, shape in zip(keys, shapes)]


def _assert_close_float32(got, expected):
    """Equal up to float32 summation-order error, relative to the array's scale."""
    scale = float(jnp.max(jnp.abs(expected))) + 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5 * scale)


@functools.partial(jax.jit, static_argnames="stride")
def _outputs_and_gradients(x, kernel, stride):
    """For "matmul" and "xla": (output, d/dx, d/dkernel) of a nonlinear loss of the output."""

    def results(impl):
        # sin() gives every output element its own cotangent.
        loss = lambda x, kernel: jnp.sum(jnp.sin(conv.conv2d(x, kernel, stride, impl)))
        return (conv.conv2d(x, kernel, stride, impl), *jax.grad(loss, argnums=(0, 1))(x, kernel))

    return results("matmul"), results("xla")


def _assert_matches_reference(x_shape, kernel_shape, stride, seed):
    x, kernel = _random([x_shape, kernel_shape], seed)
    got, expected = _outputs_and_gradients(x, kernel, stride)
    for got_array, expected_array in zip(got, expected):
        chex.assert_equal_shape([got_array, expected_array])
        _assert_close_float32(got_array, expected_array)


@settings(max_examples=15, deadline=None)
@given(_conv_case())
def test_matmul_conv_matches_lax_conv_on_random_shapes(case):
    _assert_matches_reference(*case)


@pytest.mark.parametrize(
    "x_shape, kernel_shape, stride",
    [
        ((2, 84, 84, 4), (8, 8, 4, 3), 4),  # Nature-CNN layer 1 geometry ("shift")
        ((2, 20, 20, 5), (4, 4, 5, 6), 2),  # layer 2 ("shift")
        ((2, 9, 9, 6), (3, 3, 6, 5), 1),  # layer 3 ("im2col")
    ],
)
def test_matmul_conv_matches_lax_conv_on_nature_cnn_geometry(x_shape, kernel_shape, stride):
    _assert_matches_reference(x_shape, kernel_shape, stride, seed=0)


@pytest.mark.parametrize("stride, kernel_size", [(4, 8), (2, 4), (1, 3)])
def test_matmul_conv_matches_lax_conv_on_batches_processed_in_chunks(stride, kernel_size):
    batch = 2 * conv.BATCH_CHUNK  # two lax.map steps
    _assert_matches_reference((batch, 3 * kernel_size, 2 * kernel_size, 2), (kernel_size, kernel_size, 2, 3), stride, seed=4)


def test_matmul_conv_matches_inside_jit_and_cond():
    x, kernel = _random([(2, 12, 12, 3), (4, 4, 3, 2)], 1)

    @jax.jit
    def run(x, kernel):
        return lax.cond(True, lambda: conv.conv2d(x, kernel, 2, "matmul"), lambda: jnp.zeros((2, 5, 5, 2)))

    np.testing.assert_allclose(run(x, kernel), _reference(x, kernel, 2), rtol=1e-5, atol=1e-5)


def test_resolve_impl_picks_matmul_on_cpu_only():
    assert conv.resolve_impl("auto", "cpu") == "matmul"
    assert conv.resolve_impl("auto", "gpu") == "xla"
    assert conv.resolve_impl("xla", "cpu") == "xla"
    with pytest.raises(ValueError, match="conv_impl"):
        conv.resolve_impl("fft")


def test_encoder_parameters_and_outputs_do_not_depend_on_conv_impl():
    image = jax.random.randint(jax.random.key(2), (2, 36, 36, 4), 0, 256).astype(jnp.uint8)  # 36 -> 8 -> 3 -> 1
    vector = jnp.zeros((2, 3), jnp.float32)
    outputs, trees = [], []
    for impl in ("xla", "matmul"):
        config = NetworkConfig(encoder=EncoderConfig(conv_impl=impl))
        actor = networks.Actor(config)
        variables = actor.init(jax.random.key(3), image, vector)
        trees.append(jax.tree.map(jnp.shape, variables))
        outputs.append(actor.apply(variables, image, vector))
    assert trees[0] == trees[1]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
