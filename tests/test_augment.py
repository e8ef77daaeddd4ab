"""Random-shift augmentation: every output is an edge-padded crop of its input, shifts are uniform and independent."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from conftest import TINY_VECTOR_DIM, random_batch, tiny_config
from td3_jax.core import augment
from td3_jax.core import td3
def edge_shifted(image: np.ndarray, pad: int, dy: int, dx: int) -> np.ndarray:
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[dy:dy + height, dx:dx + width]


def offsets_of(original: np.ndarray, shifted: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """The (dy, dx) in [0, 2 pad]^2 for which `shifted` is the edge-padded crop of each image."""
    found = []
    for image, out in zip(original, shifted):
        matches = [
            (dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
            if np.array_equal(edge_shifted(image, pad, dy, dx), out)
        ]
        assert matches, "an output is no shifted crop of its input"
        found.append(matches[0])
    return found


@pytest.mark.parametrize("pad", [1, 3])
def test_every_output_is_an_edge_padded_crop_and_all_shifts_occur(pad):
    rng = np.random.default_rng(pad)
    # Distinct random pixels make the matching offset unique.
    images = rng.integers(0, 256, (400, 9, 11, 2), dtype=np.uint8)
    shifted = np.asarray(augment.random_shift(jax.random.key(0), images, pad))
    chex.assert_shape(shifted, images.shape)
    chex.assert_type(shifted, np.uint8)
    offsets = offsets_of(images, shifted, pad)
    counts = np.zeros((2 * pad + 1, 2 * pad + 1))
    for dy, dx in offsets:
        counts[dy, dx] += 1
    assert (counts > 0).all(), f"some shifts never drawn: {counts}"


def test_pad_zero_is_identity_and_stacks_shift_independently():
    rng = np.random.default_rng(0)
    batch = random_batch(rng, batch_size=64)
    assert augment.random_shift(jax.random.key(0), batch.image, 0) is batch.image
    shifted = augment.shift_batch(jax.random.key(1), batch._replace(next_image=batch.image), 2)
    image_offsets = offsets_of(batch.image, np.asarray(shifted.image), 2)
    next_offsets = offsets_of(batch.image, np.asarray(shifted.next_image), 2)
    assert image_offsets != next_offsets


def test_shifted_update_is_reproducible_and_fuses_like_single_updates():
    rng = np.random.default_rng(0)
    config = tiny_config(image_shift_px=4)
    batches = [random_batch(rng) for _ in range(3)]
    state = td3.init_state(config, jax.random.key(0), vector_dim=TINY_VECTOR_DIM)
    sequential = state
    for batch in batches:
        sequential, _ = td3.update(sequential, batch)
    again = state
    for batch in batches:
        again, _ = td3.update(again, batch)
    chex.assert_trees_all_equal(again, sequential)
    fused, _ = td3.update_many(state, jax.tree.map(lambda *xs: np.stack(xs), *batches))
    chex.assert_trees_all_close(fused, sequential, rtol=1e-4, atol=1e-5)
    plain = td3.init_state(tiny_config(), jax.random.key(0), vector_dim=TINY_VECTOR_DIM)
    plain, _ = td3.update(plain, batches[0])
    one_shifted, _ = td3.update(state, batches[0])
    assert not np.allclose(
        np.asarray(jax.tree.leaves(plain.critic_params)[0]), np.asarray(jax.tree.leaves(one_shifted.critic_params)[0])
    )
