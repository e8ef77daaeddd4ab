"""PyTorch comparison points for `td3-jax bench`. Host-side; needs the `bench` extra.

- `TorchTD3`: the td3_jax update re-implemented in PyTorch with the identical
  architecture and maths (Nature CNN with per-element LayerNorm over (C, H, W)
  and leaky ReLU in each network, twin Q heads, target networks including their
  encoders, global-norm clip then Adam with a cnn and an mlp learning rate,
  delayed actor whose loss sees the updated critic's detached features,
  Polyak targets on actor steps). The same FLOPs as `td3.update`; it skips
  only the logging-only norms.
- `sb3_train_step`: Stable-Baselines3's TD3 "CnnPolicy" train step, what a user
  would otherwise pick (NatureCNN without LayerNorm, ReLU, [400, 300] heads,
  image-only observations; its replay sampling is part of its train step).

Import this module only when torch is installed.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from td3_jax.core.hparams import TD3Config

LEAKY_RELU_SLOPE = 0.01
LAYER_NORM_EPSILON = 1e-5


class _Encoder(nn.Module):
    def __init__(self, stack: int, features: int):
        super().__init__()
        layers, channels, size = [], stack, 84
        for out, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            size = (size - kernel) // stride + 1
            layers += [nn.Conv2d(channels, out, kernel, stride), nn.LayerNorm([out, size, size], LAYER_NORM_EPSILON)]
            layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE))
            channels = out
        layers += [nn.Flatten(), nn.Linear(channels * size * size, features)]
        layers += [nn.LayerNorm(features, LAYER_NORM_EPSILON), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
        self.net = nn.Sequential(*layers)

    def forward(self, image_nchw_uint8: torch.Tensor) -> torch.Tensor:
        return self.net(image_nchw_uint8.float() / 127.5 - 1.0)


def _mlp(inputs: int, hidden: tuple[int, ...], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, out))


class _Actor(nn.Module):
    def __init__(self, config: TD3Config, stack: int, vector_dim: int):
        super().__init__()
        net = config.network
        self.encoder = _Encoder(stack, net.encoder.features)
        self.head = _mlp(net.encoder.features + vector_dim, net.actor_hidden, net.action_dim)

    def forward(self, image, vector):
        return torch.tanh(self.head(torch.cat([self.encoder(image), vector], -1)))


class _Critic(nn.Module):
    def __init__(self, config: TD3Config, stack: int, vector_dim: int):
        super().__init__()
        net = config.network
        self.encoder = _Encoder(stack, net.encoder.features)
        inputs = net.encoder.features + vector_dim + net.action_dim
        self.q1 = _mlp(inputs, net.critic_hidden, 1)
        self.q2 = _mlp(inputs, net.critic_hidden, 1)

    def q_values(self, features, vector, action):
        x = torch.cat([features, vector, action], -1)
        return self.q1(x)[:, 0], self.q2(x)[:, 0]


def _adam_groups(module: nn.Module, optimizer_config) -> torch.optim.Adam:
    cnn = [p for name, p in module.named_parameters() if name.startswith("encoder.")]
    mlp = [p for name, p in module.named_parameters() if not name.startswith("encoder.")]
    return torch.optim.Adam(
        [{"params": cnn, "lr": optimizer_config.cnn_lr}, {"params": mlp, "lr": optimizer_config.mlp_lr}],
        weight_decay=optimizer_config.weight_decay,
    )


class TorchTD3:
    """The td3_jax update in PyTorch (same architecture and maths), for timing.

    Args:
      config: the td3_jax config whose architecture and hyperparameters to copy.
      stack: frames per observation stack.
      vector_dim: size of the vector state.
    """

    def __init__(self, config: TD3Config = TD3Config(), stack: int = 4, vector_dim: int = 53):
        self.config = config
        self.actor = _Actor(config, stack, vector_dim)
        self.critic = _Critic(config, stack, vector_dim)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = _adam_groups(self.actor, config.actor_optimizer)
        self.critic_optimizer = _adam_groups(self.critic, config.critic_optimizer)
        self.step = 0

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts by part, to check the architecture against td3_jax's."""
        count = lambda module: sum(p.numel() for p in module.parameters())
        return {
            "actor_encoder": count(self.actor.encoder),
            "actor_head": count(self.actor.head),
            "critic_heads": count(self.critic.q1) + count(self.critic.q2),
        }

    def update(self, frames: torch.Tensor, vector, action, reward, next_vector, terminated) -> None:
        """One TD3 update from a packed batch; frames is (B, S+1, 84, 84) uint8 (NCHW)."""
        config = self.config
        image, next_image = frames[:, :-1], frames[:, 1:]
        with torch.no_grad():
            next_action = self.actor_target(next_image, next_vector)
            noise = (torch.randn_like(next_action) * config.policy_noise).clamp(-config.noise_clip, config.noise_clip)
            next_action = (next_action + noise).clamp(-1.0, 1.0)
            next_q1, next_q2 = self.critic_target.q_values(
                self.critic_target.encoder(next_image), next_vector, next_action
            )
            target = reward + config.discount * (1.0 - terminated) * torch.minimum(next_q1, next_q2)
        q1, q2 = self.critic.q_values(self.critic.encoder(image), vector, action)
        critic_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), config.critic_optimizer.max_grad_norm)
        self.critic_optimizer.step()

        if self.step % config.policy_freq == 0:
            with torch.no_grad():
                features = self.critic.encoder(image)
            x = torch.cat([features, vector, self.actor(image, vector)], -1)
            actor_loss = -self.critic.q1(x).mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actor.parameters(), config.actor_optimizer.max_grad_norm)
            self.actor_optimizer.step()
            with torch.no_grad():
                for online, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                    online_params, target_params = list(online.parameters()), list(target_net.parameters())
                    torch._foreach_lerp_(target_params, online_params, config.tau)
        self.step += 1


def torch_batch(batch) -> tuple[torch.Tensor, ...]:
    """A td3_jax one-step PackedBatch of NumPy arrays as torch tensors (its frames-first frames are NCHW)."""
    frames = torch.from_numpy(np.asarray(batch.frames))
    rest = (batch.vector, batch.action, batch.reward, batch.next_vector, batch.terminated)
    return (frames, *(torch.from_numpy(np.asarray(x)) for x in rest))


def sb3_train_step(batch_size: int, stack: int = 4, seed: int = 0) -> Callable[[], None]:
    """A closure running one Stable-Baselines3 TD3 CnnPolicy gradient step.

    The replay buffer is filled with random frames; `policy_delay` is 2 and the
    model runs on the CPU, so consecutive calls alternate critic-only and
    critic + actor steps, as `TorchTD3.update` and `td3.update` do.
    """
    import gymnasium
    from stable_baselines3 import TD3
    from stable_baselines3.common.logger import configure

    class _ImageEnv(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(0, 255, (stack, 84, 84), np.uint8)
        action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    capacity = 2 * batch_size
    model = TD3(
        "CnnPolicy", _ImageEnv(), buffer_size=capacity, batch_size=batch_size, learning_starts=0,
        policy_delay=2, device="cpu", seed=seed,
    )
    model.set_logger(configure(None, []))
    rng = np.random.default_rng(seed)
    for _ in range(capacity):
        obs, next_obs = (rng.integers(0, 256, (1, stack, 84, 84), dtype=np.uint8) for _ in range(2))
        action = rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        model.replay_buffer.add(obs, next_obs, action, rng.standard_normal(1), np.zeros(1), [{}])
    return lambda: model.train(gradient_steps=1, batch_size=batch_size)
