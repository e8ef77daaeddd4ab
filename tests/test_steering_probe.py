"""scripts/steering_probe.py: the steering gains it reports, against a policy and a critic of known gains."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script

from td3_jax.envs import observation


SCALES = [
    observation.ObservationConfig(),
    observation.ObservationConfig(deviation_scale_m=0.25, heading_scale_rad=0.05),
    observation.ObservationConfig(previous_action=True),
]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("actor_gain, critic_gain", [(0.0, 0.2), (0.25, 0.05), (-0.1, 0.0)])
def test_reports_the_gains_of_a_linear_actor_and_a_quadratic_critic(actor_gain, critic_gain, scale):
    probe = load_script("steering_probe")
    rng = np.random.default_rng(0)
    count = 64
    images = np.zeros((count, 8, 8, 4), np.uint8)
    vectors = np.zeros((count, observation.HEADER + 2), np.float32)
    vectors[:, 1] = rng.uniform(-1.0, 1.0, count) / scale.deviation_scale_m
    vectors[:, 2] = rng.uniform(-0.2, 0.2, count) / scale.heading_scale_rad

    def deviation_and_heading(vectors):
        return vectors[:, 1] * scale.deviation_scale_m, vectors[:, 2] * scale.heading_scale_rad

    def policy(images, vectors):  # steer = gain * deviation + 0.3 per 0.1 rad of heading
        deviation, heading = deviation_and_heading(vectors)
        return np.stack([actor_gain * deviation + 3.0 * heading, np.full(len(vectors), 0.5)], axis=1)

    def q_fn(images, vectors, actions):  # prefers steer = critic_gain * deviation + 0.1 per 0.1 rad
        deviation, heading = deviation_and_heading(vectors)
        assert np.all(actions[:, 1] == 0.5)  # searched at the policy's pedal
        return -((actions[:, 0] - critic_gain * deviation - heading) ** 2)

    episode_of = np.repeat([0, 1], count // 2)
    gains = probe.probe(policy, q_fn, images, vectors, episode_of, offset_m=0.5, scale=scale, reference=policy)
    assert gains["actor_steer_per_deviation"] == pytest.approx(actor_gain, abs=1e-5)
    assert gains["actor_steer_per_heading"] == pytest.approx(0.3, abs=1e-5)
    assert all(gains[f"reference_{key}"] == gains[f"actor_{key}"] for key in ("steer_mean", "steer_per_deviation"))
    steer = policy(images, vectors)[:, 0]
    within = np.abs(np.diff(steer))[np.arange(count - 1) != count // 2 - 1]  # not across the episode change
    assert gains["actor_steer_change"] == pytest.approx(within.mean())
    grid = probe.STEER_GRID[1] - probe.STEER_GRID[0]  # the critic's preference is searched on a grid
    assert gains["critic_steer_per_deviation"] == pytest.approx(critic_gain, abs=grid)
    assert gains["critic_steer_per_heading"] == pytest.approx(0.1, abs=grid)


@pytest.mark.parametrize("scale", SCALES)
def test_a_car_moved_or_turned_left_sees_the_route_points_where_they_would_be(scale):
    probe = load_script("steering_probe")
    points = np.array([[5.0, 0.0], [10.0, 1.0], [20.0, -2.0]])  # vehicle frame, m: x forward, y left
    previous = np.array([[0.3, -0.6]])
    vector = observation.build_vector(np.array([8.0]), np.array([0.1]), np.array([0.05]), points[None], scale, previous)
    moved = probe.moved_left(vector, 0.5, scale)
    speed, deviation, heading, moved_points = observation.parse_vector(moved[0], scale)
    assert (speed, deviation, heading) == pytest.approx((8.0, 0.6, 0.05))
    np.testing.assert_allclose(moved_points, points - [0.0, 0.5], atol=1e-5)
    turned = probe.turned_left(vector, 0.1, scale)
    _, deviation, heading, turned_points = observation.parse_vector(turned[0], scale)
    assert (deviation, heading) == pytest.approx((0.1, 0.15))
    np.testing.assert_allclose(np.hypot(*turned_points.T), np.hypot(*points.T), rtol=1e-5)  # a rotation
    bearing = np.arctan2(turned_points[:, 1], turned_points[:, 0]) - np.arctan2(points[:, 1], points[:, 0])
    np.testing.assert_allclose(bearing, -0.1, atol=1e-5)  # every point 0.1 rad further right
    if scale.previous_action:  # the previous action is not moved
        for vectors in (moved, turned):
            np.testing.assert_array_equal(vectors[:, -observation.ACTION_ENTRIES:], previous.astype(np.float32))


@pytest.mark.parametrize("scale", SCALES)
def test_pure_pursuit_steers_back_towards_the_lane_centre(scale):
    from td3_jax.envs.config import LaneSimConfig

    probe = load_script("steering_probe")
    points = np.stack([np.arange(1.0, 26.0) * 2.0, np.zeros(25)], axis=1)  # a straight lane ahead
    previous = np.full((4, 2), 0.9)  # never a look-ahead point
    vectors = observation.build_vector(
        np.full(4, 8.0), np.zeros(4), np.zeros(4), np.repeat(points[None], 4, axis=0), scale, previous
    )
    assert observation.speed_and_points(vectors[0], scale)[1].shape == points.shape
    steer = probe.pure_pursuit(LaneSimConfig(), scale)
    assert np.all(steer(None, vectors)[:, 0] == 0.0)
    assert np.all(steer(None, probe.moved_left(vectors, 0.5, scale))[:, 0] > 0.0)  # left of the centre: steer right
    assert np.all(steer(None, probe.turned_left(vectors, 0.1, scale))[:, 0] > 0.0)


def test_an_added_centring_gain_steers_a_biased_policy_back_and_its_returns_are_the_env_s():
    """A pursuit policy that also steers 0.1 to the right holds right of the centre; c * deviation added to
    its steering (+ right, the deviation + left) brings it back; the drive's bookkeeping is the env's."""
    from td3_jax.envs.config import LaneSimConfig
    from td3_jax.envs.lanesim.sim import LaneSimEnv

    probe = load_script("steering_probe")
    scale = observation.ObservationConfig(deviation_scale_m=0.25, previous_action=True)
    cfg = LaneSimConfig(route_length_m=60.0, action_repeat=2)
    pursuit = probe.pure_pursuit(cfg, scale)

    def biased(images, vectors):
        action = pursuit(images, vectors)
        return np.stack([action[:, 0] + 0.1, np.full(len(action), 0.3)], axis=1)

    env = LaneSimEnv(cfg, observation_cfg=scale)
    drives = {gain: probe.drive_with_added_gain(env, biased, scale, gain, 2, 5, 0.9) for gain in (0.0, 1.0)}
    assert drives[0.0]["lateral_mean_m"] < -0.1
    assert abs(drives[1.0]["lateral_mean_m"]) < abs(drives[0.0]["lateral_mean_m"]) / 2
    assert drives[1.0]["lateral_rmse_m"] < drives[0.0]["lateral_rmse_m"]

    returns, discounted, decisions = [], [], []
    for episode in range(2):  # the gain-0 drive, by hand
        obs, _ = env.reset(seed=5 + episode)
        rewards = []
        while True:
            obs, reward, terminated, truncated, _ = env.step(biased(None, obs["vector"][None])[0].astype(np.float32))
            rewards.append(reward)
            if terminated or truncated:
                break
        returns.append(sum(rewards))
        discounted.append(sum(0.9**t * r for t, r in enumerate(rewards)))
        decisions.append(len(rewards))
    assert drives[0.0]["return"] == pytest.approx(np.mean(returns))
    assert drives[0.0]["discounted_return"] == pytest.approx(np.mean(discounted))
    assert drives[0.0]["decisions"] == np.mean(decisions)
    assert drives[0.0]["success"] == 1.0


class LateralToy:
    """A car's lateral deviation d (m): steering s moves it to d - s, the reward is -(d - s)^2, then a seeded drift
    moves it before the next decision. Deterministic from its seed, and copyable like the embedded simulator."""

    steps = 40

    def __init__(self, scale):
        self.scale = scale

    def _obs(self):
        vector = observation.build_vector(np.array([8.0]), np.array([self.deviation]), np.array([0.0]),
                                          np.zeros((1, 1, 2)), self.scale)[0]
        return {"image": np.zeros((4, 4, 1), np.uint8), "vector": vector}

    def reset(self, *, seed):
        self.rng, self.t = np.random.default_rng(seed), 0
        self.deviation = self.rng.uniform(-1.0, 1.0)
        return self._obs(), {}

    def step(self, action):
        self.deviation -= float(action[0])
        reward = -self.deviation**2
        self.deviation += self.rng.uniform(-0.5, 0.5)
        self.t += 1
        return self._obs(), reward, False, self.t == self.steps, {}


def test_monte_carlo_branches_equal_replays_and_find_the_preferred_offset():
    probe = load_script("steering_probe")
    scale = observation.ObservationConfig()
    gain, critic_gain, discount = 0.85, 0.7, 0.9

    def deviation(vectors):
        return vectors[:, 1] * scale.deviation_scale_m

    def policy(images, vectors):
        return np.stack([gain * deviation(vectors), np.zeros(len(vectors))], axis=1)

    def q_fn(images, vectors, actions):  # prefers steering critic_gain * deviation
        return -((actions[:, 0] - critic_gain * deviation(vectors)) ** 2)

    # Against a replay from the reset: every branch is what driving the route again with that offset returns.
    env = LateralToy(scale)
    obs, _ = env.reset(seed=3)
    for _ in range(5):
        obs, *_ = env.step(policy(None, obs["vector"][None])[0])
    action = policy(None, obs["vector"][None])[0]
    returns = probe.branch_returns(env, policy, obs, action, horizon=10, discount=discount)
    assert env.t == 5  # the branches drove copies
    for offset, branch_return in zip(probe.BRANCH_OFFSETS, returns):
        replay = LateralToy(scale)
        replay_obs, _ = replay.reset(seed=3)
        for _ in range(5):
            replay_obs, *_ = replay.step(policy(None, replay_obs["vector"][None])[0])
        expected = 0.0
        for t in range(10):
            steer = policy(None, replay_obs["vector"][None])[0] + ([offset, 0.0] if t == 0 else 0.0)
            replay_obs, reward, *_ = replay.step(steer)
            expected += discount**t * reward
        assert branch_return == pytest.approx(expected)

    # One decision's return is -(d - steer)^2: the returns prefer an offset of (1 - gain) d, the critic (critic_gain
    # - gain) d, both searched on the offsets' grid.
    found = probe.critic_against_returns(
        LateralToy(scale), policy, q_fn, scale, episodes=6, seed=0, every=2, horizon=1, discount=discount
    )
    assert found["states"] == 6 * LateralToy.steps // 2
    assert found["return_preferred_per_deviation"] == pytest.approx(1 - gain, abs=0.04)
    assert found["q_preferred_per_deviation"] == pytest.approx(critic_gain - gain, abs=0.04)
    assert found["q_change"][list(probe.BRANCH_OFFSETS).index(0.0)] == 0.0


def test_branches_of_the_embedded_simulator_equal_replays_from_the_reset():
    """The copies the probe drives are the simulator the user trains on (frame stack, traffic and random streams
    included): each branch returns what driving the route again from its reset returns."""
    from td3_jax.envs import make_env
    from td3_jax.envs.config import EnvConfig, LaneSimConfig

    probe = load_script("steering_probe")
    env_cfg = EnvConfig(backend="lanesim", lanesim=LaneSimConfig(route_length_m=80.0, action_repeat=2))
    pursuit = probe.pure_pursuit(env_cfg.lanesim, env_cfg.observation)

    def policy(images, vectors):
        return np.stack([pursuit(images, vectors)[:, 0], np.full(len(vectors), 0.4)], axis=1).astype(np.float32)

    def drive_to(env, decisions):
        obs, _ = env.reset(seed=11)
        for _ in range(decisions):
            obs, *_ = env.step(policy(obs["image"][None], obs["vector"][None])[0])
        return obs

    env = make_env(env_cfg)
    obs = drive_to(env, 6)
    image_before = obs["image"].copy()
    returns = probe.branch_returns(env, policy, obs, policy(obs["image"][None], obs["vector"][None])[0], 8, 0.9)
    continued, *_ = env.step(policy(obs["image"][None], obs["vector"][None])[0])  # the original drives on, unmoved
    for offset, branch_return in zip(probe.BRANCH_OFFSETS, returns):
        replay = make_env(env_cfg)
        replay_obs = drive_to(replay, 6)
        np.testing.assert_array_equal(replay_obs["image"], image_before)
        expected = 0.0
        for t in range(8):
            action = policy(replay_obs["image"][None], replay_obs["vector"][None])[0]
            action[0] = np.clip(action[0] + (offset if t == 0 else 0.0), -1.0, 1.0)
            replay_obs, reward, terminated, truncated, _ = replay.step(action)
            expected += 0.9**t * reward
            if offset == 0.0 and t == 0:
                np.testing.assert_array_equal(replay_obs["image"], continued["image"])
            if terminated or truncated:
                break
        assert branch_return == pytest.approx(expected, rel=1e-6)
    assert len(set(np.round(returns, 6))) > 1  # the offsets changed the drives
