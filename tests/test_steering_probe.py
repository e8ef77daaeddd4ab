"""scripts/steering_probe.py: the steering gains it reports, against a policy and a critic of known gains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from td3_jax.envs import observation


def _steering_probe():
    path = Path(__file__).resolve().parents[1] / "scripts" / "steering_probe.py"
    spec = importlib.util.spec_from_file_location("steering_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("actor_gain, critic_gain", [(0.0, 0.2), (0.25, 0.05), (-0.1, 0.0)])
def test_reports_the_gains_of_a_linear_actor_and_a_quadratic_critic(actor_gain, critic_gain):
    probe = _steering_probe()
    rng = np.random.default_rng(0)
    count = 64
    images = np.zeros((count, 8, 8, 4), np.uint8)
    vectors = np.zeros((count, observation.HEADER + 2), np.float32)
    vectors[:, 1] = rng.uniform(-1.0, 1.0, count) / observation.DEVIATION_SCALE
    vectors[:, 2] = rng.uniform(-0.2, 0.2, count) / observation.HEADING_SCALE

    def deviation_and_heading(vectors):
        return vectors[:, 1] * observation.DEVIATION_SCALE, vectors[:, 2] * observation.HEADING_SCALE

    def policy(images, vectors):  # steer = gain * deviation + 0.3 per 0.1 rad of heading
        deviation, heading = deviation_and_heading(vectors)
        return np.stack([actor_gain * deviation + 3.0 * heading, np.full(len(vectors), 0.5)], axis=1)

    def q_fn(images, vectors, actions):  # prefers steer = critic_gain * deviation + 0.1 per 0.1 rad
        deviation, heading = deviation_and_heading(vectors)
        assert np.all(actions[:, 1] == 0.5)  # searched at the policy's pedal
        return -((actions[:, 0] - critic_gain * deviation - heading) ** 2)

    gains = probe.probe(policy, q_fn, images, vectors, offset_m=0.5)
    assert gains["actor_steer_per_deviation"] == pytest.approx(actor_gain, abs=1e-5)
    assert gains["actor_steer_per_heading"] == pytest.approx(0.3, abs=1e-5)
    grid = probe.STEER_GRID[1] - probe.STEER_GRID[0]  # the critic's preference is searched on a grid
    assert gains["critic_steer_per_deviation"] == pytest.approx(critic_gain, abs=grid)
    assert gains["critic_steer_per_heading"] == pytest.approx(0.1, abs=grid)
