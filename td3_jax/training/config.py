"""The run configuration: YAML sections mapped strictly onto frozen dataclasses.

    algorithm:  TD3 and replay settings (the original's key names)
    networks:   encoder and head architecture, per-group learning rates
    env:        backend, stacking, simulator, reward, CARLA (td3_jax.envs.config)
    training:   run length, evaluation, checkpoints, logging
    guard:      the in-training divergence guard (td3_jax.training.guard)

Every key is read; an unknown key, a wrong type or an out-of-range value is a
`ConfigError` naming the key and what is allowed. Defaults live only in the
dataclasses; `docs/config.md` lists them. Host-side code (reads files).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from td3_jax.core.hparams import EncoderConfig, NetworkConfig, OptimizerConfig, TD3Config
from td3_jax.envs.config import EnvConfig
from td3_jax.envs.reward import COMPONENTS as REWARD_COMPONENTS
from td3_jax.errors import UserError
from td3_jax.training.evaluate import SELECTABLE_METRICS
from td3_jax.training.guard import GuardConfig


class ConfigError(UserError):
    """A config file, key or value is wrong; the message says which and how to fix it."""


def _check(condition: bool, key: str, requirement: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{key} must be {requirement}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExplorationNoiseConfig:
    """Std of the Gaussian noise added to the policy's actions while training."""

    schedule: Literal["constant", "linear", "exponential"] = "exponential"
    """How the std moves from `initial` to `final` after learning starts."""
    initial: float = 0.3
    """Std at the first learning step."""
    final: float = 0.1
    """Std the schedule approaches (linear: reaches at decay_steps)."""
    decay_steps: int = 20000
    """Linear: steps to reach `final`. Exponential: std = final + (initial-final) exp(-5 t / decay_steps)."""

    def __post_init__(self):
        _check(self.initial >= 0, "algorithm.exploration_noise.initial", ">= 0", self.initial)
        _check(self.final >= 0, "algorithm.exploration_noise.final", ">= 0", self.final)
        _check(self.decay_steps >= 1, "algorithm.exploration_noise.decay_steps", ">= 1", self.decay_steps)


@dataclasses.dataclass(frozen=True)
class GradientClippingConfig:
    """Global L2 norm each network's whole gradient is clipped to."""

    actor_max_norm: float = 1.0
    """Actor (encoder + head) clip norm."""
    critic_max_norm: float = 10.0
    """Critic (encoder + both Q heads) clip norm."""

    def __post_init__(self):
        _check(self.actor_max_norm > 0, "algorithm.gradient_clipping.actor_max_norm", "> 0", self.actor_max_norm)
        _check(self.critic_max_norm > 0, "algorithm.gradient_clipping.critic_max_norm", "> 0", self.critic_max_norm)


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """TD3 (Fujimoto et al. 2018) and replay settings."""

    discount: float = 0.99
    """Discount factor gamma."""
    tau: float = 0.005
    """Polyak rate of every target parameter, encoders included."""
    policy_noise: float = 0.2
    """Std of the target-policy smoothing noise."""
    noise_clip: float = 0.5
    """Bound of the target-policy smoothing noise."""
    policy_freq: int = 2
    """The actor and the targets update every `policy_freq` updates."""
    batch_size: int = 256
    """Transitions per update."""
    buffer_size: int = 100000
    """Replay capacity in frame slots: one per transition plus one per episode start (~7.3 KB each)."""
    learning_starts: int = 10000
    """Env steps of uniform random actions before the policy acts and updates begin."""
    train_freq: int = 1
    """Run updates every `train_freq` env steps (per env)."""
    gradient_steps: int = 1
    """Updates per training call, fused into one jitted `update_many`."""
    n_step: int = 1
    """Steps per TD target: sum of up to n discounted rewards, then gamma^k min Q' (k <= n, shorter at episode ends); 1 is plain TD3."""
    critic_huber_delta: float = 0.0
    """> 0: the critics' loss is Huber's, the squared TD error within this distance of the target and linear beyond
    (per reward component with networks.critic.reward_components), so a few large errors do not set the direction
    of each clipped critic step alone; 0: the squared error (plain TD3)."""
    actor_preactivation_l2: float = 0.0
    """Weight of mean(u^2) on the actor's pre-tanh outputs in its loss (keeps tanh out of saturation); 0 is plain TD3."""
    actor_smoothness: float = 0.0
    """Weight of a temporal smoothness penalty in the actor's loss (CAPS): weight * mean|Q1| * mean ||mu(s) - mu(s')||^2,
    s' the batch's next observation (k steps later with k-step returns); 0 is plain TD3."""
    actor_warmup_updates: int = 0
    """Critic-only updates before the first actor update (the critic target still tracks it); 0 is plain TD3."""
    image_shift_px: int = 0
    """Random-shift augmentation (DrQ) of the update's frame stacks by up to this many pixels per axis (DrQ uses 4); 0 is plain TD3."""
    actor_reuses_critic_features: bool = False
    """The actor step reads the critic features of this update's critic step (computed before that step, DrQ-v2): one encoder pass fewer per actor step; false: recomputed after it (Fujimoto's order)."""
    policy_average_tau: float = 0.0
    """Polyak rate of a slow average of the policy's parameters, updated with the targets (every `policy_freq`
    updates) and read only by evaluations with training.eval_policy=average; learning never reads it; 0: none."""
    exploration_noise: ExplorationNoiseConfig = ExplorationNoiseConfig()
    """Gaussian exploration noise schedule."""
    gradient_clipping: GradientClippingConfig = GradientClippingConfig()
    """Global-norm clip per network."""

    def __post_init__(self):
        _check(0.0 <= self.discount <= 1.0, "algorithm.discount", "in [0, 1]", self.discount)
        _check(0.0 < self.tau <= 1.0, "algorithm.tau", "in (0, 1]", self.tau)
        _check(self.policy_noise >= 0, "algorithm.policy_noise", ">= 0", self.policy_noise)
        _check(self.noise_clip >= 0, "algorithm.noise_clip", ">= 0", self.noise_clip)
        _check(self.policy_freq >= 1, "algorithm.policy_freq", ">= 1", self.policy_freq)
        _check(self.batch_size >= 1, "algorithm.batch_size", ">= 1", self.batch_size)
        _check(
            self.buffer_size >= self.batch_size,
            "algorithm.buffer_size",
            f">= algorithm.batch_size ({self.batch_size})",
            self.buffer_size,
        )
        _check(self.learning_starts >= 1, "algorithm.learning_starts", ">= 1", self.learning_starts)
        _check(self.train_freq >= 1, "algorithm.train_freq", ">= 1", self.train_freq)
        _check(self.gradient_steps >= 1, "algorithm.gradient_steps", ">= 1", self.gradient_steps)
        _check(1 <= self.n_step <= 100, "algorithm.n_step", "in [1, 100]", self.n_step)
        _check(0 <= self.image_shift_px <= 16, "algorithm.image_shift_px", "in [0, 16]", self.image_shift_px)
        _check(self.critic_huber_delta >= 0, "algorithm.critic_huber_delta", ">= 0", self.critic_huber_delta)
        _check(self.actor_preactivation_l2 >= 0, "algorithm.actor_preactivation_l2", ">= 0", self.actor_preactivation_l2)
        _check(self.actor_smoothness >= 0, "algorithm.actor_smoothness", ">= 0", self.actor_smoothness)
        _check(0.0 <= self.policy_average_tau <= 1.0, "algorithm.policy_average_tau", "in [0, 1]", self.policy_average_tau)
        _check(self.actor_warmup_updates >= 0, "algorithm.actor_warmup_updates", ">= 0", self.actor_warmup_updates)


@dataclasses.dataclass(frozen=True)
class CnnConfig:
    """The image encoder of each network (same shape, separate parameters)."""

    actor_cnn_lr: float = 1e-4
    """Adam learning rate of the actor's encoder."""
    critic_cnn_lr: float = 1e-4
    """Adam learning rate of the critic's encoder."""
    features: int = 512
    """Encoder output width."""
    layer_norm: bool = True
    """LayerNorm after each encoder layer."""
    activation: Literal["relu", "leaky_relu"] = "leaky_relu"
    """Encoder nonlinearity (leaky slope 0.01)."""
    conv_impl: Literal["auto", "xla", "matmul"] = "auto"
    """Convolution implementation (see td3_jax.core.conv); auto picks the fastest for the backend."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the encoders' matrix work. bfloat16 (mixed precision): parameters, gradients and optimizer state stay float32; the heads and losses run in float32. Pays only on hardware with fast bfloat16 (GPUs; docs/benchmarks.md)."""
    shared: bool = False
    """One encoder, the critic's, trained by the critic loss only; the actor reads its features without a gradient (DrQ-v2), and actor_cnn_lr has nothing to train. false: separate encoders (the original)."""

    def __post_init__(self):
        _check(self.actor_cnn_lr >= 0, "networks.cnn.actor_cnn_lr", ">= 0", self.actor_cnn_lr)
        _check(self.critic_cnn_lr >= 0, "networks.cnn.critic_cnn_lr", ">= 0", self.critic_cnn_lr)
        _check(self.features >= 1, "networks.cnn.features", ">= 1", self.features)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """One network's MLP head and its optimizer settings."""

    learning_rate: float = 3e-4
    """Adam learning rate of the MLP group."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths (depth = number of entries)."""
    trunk_features: int = 0
    """0: the head reads [encoder features, vector] directly (the original). n > 0: first Dense(n) + LayerNorm + tanh (DrQ-v2's trunk); the critic's action joins after it."""
    vector_after_trunk: bool = False
    """true: the observation vector skips the trunk and joins its output (with the critic's action), so the head reads the lateral deviation and the look-ahead points unsqueezed. false: the trunk squeezes [encoder features, vector]. Needs trunk_features > 0."""
    weight_decay: float = 0.0
    """Coupled L2 on every parameter of this network (torch Adam style)."""
    adam_eps: float = 1e-8
    """Adam's epsilon for this network; gradients much smaller than it take proportionally smaller steps."""

    def __post_init__(self):
        _check(self.learning_rate >= 0, "learning_rate", ">= 0", self.learning_rate)
        _check(all(w >= 1 for w in self.hidden_sizes), "hidden_sizes", "positive widths", self.hidden_sizes)
        _check(self.trunk_features >= 0, "trunk_features", ">= 0", self.trunk_features)
        _check(not self.vector_after_trunk or self.trunk_features > 0, "vector_after_trunk",
               "false without a trunk (trunk_features 0: the vector already reaches the head directly)",
               self.vector_after_trunk)
        _check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _check(self.adam_eps > 0, "adam_eps", "> 0", self.adam_eps)


@dataclasses.dataclass(frozen=True)
class CriticHeadConfig(HeadConfig):
    """The critic's Q heads: a head's settings plus how the action enters Q."""

    dueling: bool = False
    """true: each Q head is a value MLP over the trunk's output plus an advantage MLP over [it, action], minus the advantage at the zero action (dueling, Wang et al. 2016), so how Q varies with the action has its own stream apart from the state's value. false: one MLP over [trunk output, action] (the original)."""
    reward_components: bool = False
    """true: each Q head outputs one Q per component of the driving reward (efficiency, lane_keeping, comfort, safety, progress), each learned from its own component's TD target, and the actor maximises their sum (a reward-decomposed critic, van Seijen et al. 2017), so lane keeping's few units per decision are not a small part of one Q that also carries progress, speed and crashes. The lanesim and carla backends only (they report the components). false: one Q of the summed reward (the original)."""


@dataclasses.dataclass(frozen=True)
class NetworksConfig:
    """Architecture and per-group learning rates."""

    cnn: CnnConfig = CnnConfig()
    """The two encoders."""
    actor: HeadConfig = HeadConfig()
    """The actor's MLP head."""
    critic: CriticHeadConfig = CriticHeadConfig()
    """Each of the critic's two Q heads."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Run length, evaluation, checkpoints and logging."""

    seed: int = 42
    """Seeds the network init, the update's PRNG key, exploration and the replay sampler."""
    max_timesteps: int = 1000000
    """Env steps to train for."""
    eval_freq: int = 5000
    """Evaluate every this many env steps (0: never, except at the end)."""
    num_eval_episodes: int = 10
    """Episodes per evaluation, on a separate env with fixed seeds, deterministic policy."""
    eval_seed: int = 1000000
    """Seed of the first evaluation episode; episode i uses eval_seed + i."""
    eval_policy: Literal["online", "target", "average"] = "online"
    """The policy the evaluations run (during training, at the end, and `td3-jax eval`): online = the actor being
    trained (plain TD3); target = the target actor, the Polyak average (tau) of the actor's recent parameters,
    which does not carry the noise of the last few updates (docs/results.md); average = the slower Polyak average
    of algorithm.policy_average_tau (which must be > 0)."""
    eval_max_episode_steps: int = 0
    """Env steps after which an evaluation episode is cut (reason eval_step_limit); 0: the env's own time limit (an env without one must set this)."""
    best_checkpoint_metric: str = "eval/mean_reward"
    """Keep the policy of the evaluation (every eval_freq env steps) with the best value of this eval/* metric in RUN_DIR/best/, for `td3-jax eval --checkpoint RUN_DIR/best` (model selection on the eval_seed episodes, as SB3's EvalCallback keeps best_model); "": keep none."""
    best_checkpoint_mode: Literal["max", "min"] = "max"
    """Whether a higher (max) or lower (min) best_checkpoint_metric is better."""
    checkpoint_freq: int = 10000
    """Save a checkpoint every this many env steps (0: only at the end and on interrupt)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (oldest deleted first)."""
    save_replay_buffer: bool = True
    """Include the replay buffer in checkpoints (needed for an exact resume)."""
    log_freq: int = 100
    """Write aggregated update metrics to TensorBoard every this many env steps."""
    prefetch_batches: bool = False
    """Draw each update call's batches on a worker thread while the device finishes the previous update and the env steps (docs/scaling.md): the host's sampling leaves the critical path. Deterministic and resume-exact, but the draws come from the buffer as it was before the current env step, so they differ from false's."""
    compare_baseline: bool = True
    """At the end, also run the pure-pursuit + PID baseline on the final evaluation's episodes and print both side by side (embedded simulator only)."""
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    """Console progress: auto = a bar on a terminal, plain lines otherwise (and when CI=true)."""
    devices: str = "auto"
    """Devices the update runs on, data-parallel: "auto" (every device of every process) or a count such as "2"."""
    distributed: bool = False
    """Join a multi-host run with jax.distributed.initialize() first (docs/scaling.md)."""

    def __post_init__(self):
        _check(self.max_timesteps >= 1, "training.max_timesteps", ">= 1", self.max_timesteps)
        _check(self.eval_freq >= 0, "training.eval_freq", ">= 0", self.eval_freq)
        _check(self.num_eval_episodes >= 0, "training.num_eval_episodes", ">= 0", self.num_eval_episodes)
        _check(0 <= self.eval_seed < 2**32, "training.eval_seed", "in [0, 2**32)", self.eval_seed)
        _check(self.eval_max_episode_steps >= 0, "training.eval_max_episode_steps", ">= 0", self.eval_max_episode_steps)
        _check(self.best_checkpoint_metric in ("", *SELECTABLE_METRICS), "training.best_checkpoint_metric",
               f"one of {', '.join(SELECTABLE_METRICS)} or \"\"", self.best_checkpoint_metric)
        _check(self.checkpoint_freq >= 0, "training.checkpoint_freq", ">= 0", self.checkpoint_freq)
        _check(self.keep_checkpoints >= 1, "training.keep_checkpoints", ">= 1", self.keep_checkpoints)
        _check(self.log_freq >= 1, "training.log_freq", ">= 1", self.log_freq)
        _check(0 <= self.seed < 2**32, "training.seed", "in [0, 2**32)", self.seed)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole training run."""

    algorithm: AlgorithmConfig = AlgorithmConfig()
    """TD3 and replay."""
    networks: NetworksConfig = NetworksConfig()
    """Architecture and learning rates."""
    env: EnvConfig = EnvConfig()
    """Environment backend and its settings."""
    training: TrainingConfig = TrainingConfig()
    """Run length, evaluation, checkpoints, logging."""
    guard: GuardConfig = GuardConfig()
    """Divergence guard."""

    def __post_init__(self):
        if self.training.eval_policy == "average" and not self.algorithm.policy_average_tau:
            raise ConfigError("training.eval_policy=average needs the average: set algorithm.policy_average_tau > 0 "
                              "(configs/driving_recipe.yaml: 0.002), or evaluate the online or target policy")
        if self.networks.critic.reward_components and self.env.backend not in ("lanesim", "carla"):
            raise ConfigError(f"networks.critic.reward_components needs the driving reward's components, which only "
                              f"the lanesim and carla backends report; env.backend is {self.env.backend}: set it to false")


def td3_config(run: RunConfig, action_dim: int = 2) -> TD3Config:
    """The jitted core's static configuration for this run."""
    algorithm, nets = run.algorithm, run.networks
    return TD3Config(
        network=NetworkConfig(
            encoder=EncoderConfig(
                features=nets.cnn.features,
                layer_norm=nets.cnn.layer_norm,
                activation=nets.cnn.activation,
                conv_impl=nets.cnn.conv_impl,
                compute_dtype=nets.cnn.compute_dtype,
            ),
            actor_hidden=tuple(nets.actor.hidden_sizes),
            critic_hidden=tuple(nets.critic.hidden_sizes),
            actor_trunk=nets.actor.trunk_features,
            critic_trunk=nets.critic.trunk_features,
            actor_vector_after_trunk=nets.actor.vector_after_trunk,
            critic_vector_after_trunk=nets.critic.vector_after_trunk,
            critic_dueling=nets.critic.dueling,
            critic_reward_components=len(REWARD_COMPONENTS) if nets.critic.reward_components else 0,
            action_dim=action_dim,
            shared_encoder=nets.cnn.shared,
        ),
        actor_optimizer=OptimizerConfig(
            max_grad_norm=algorithm.gradient_clipping.actor_max_norm,
            cnn_lr=nets.cnn.actor_cnn_lr,
            mlp_lr=nets.actor.learning_rate,
            weight_decay=nets.actor.weight_decay,
            adam_eps=nets.actor.adam_eps,
        ),
        critic_optimizer=OptimizerConfig(
            max_grad_norm=algorithm.gradient_clipping.critic_max_norm,
            cnn_lr=nets.cnn.critic_cnn_lr,
            mlp_lr=nets.critic.learning_rate,
            weight_decay=nets.critic.weight_decay,
            adam_eps=nets.critic.adam_eps,
        ),
        discount=algorithm.discount,
        tau=algorithm.tau,
        policy_noise=algorithm.policy_noise,
        noise_clip=algorithm.noise_clip,
        policy_freq=algorithm.policy_freq,
        critic_huber_delta=algorithm.critic_huber_delta,
        actor_preactivation_l2=algorithm.actor_preactivation_l2,
        actor_smoothness=algorithm.actor_smoothness,
        actor_warmup_updates=algorithm.actor_warmup_updates,
        image_shift_px=algorithm.image_shift_px,
        actor_reuses_critic_features=algorithm.actor_reuses_critic_features,
        policy_average_tau=algorithm.policy_average_tau,
    )


# ---------------------------------------------------------------- loading


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _convert(annotation, value: Any, key: str) -> Any:
    """Checks `value` against `annotation` and converts YAML lists to tuples."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, key)
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in typing.get_args(annotation):
            value = "off" if not value else "on"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{key} must be {_type_name(annotation)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has the wrong type: {value!r}")
    if origin is dict:  # a free-form mapping (env.gym.make_kwargs); its dataclass checks the entries
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, got {value!r}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def build(cls, data: Any, key: str = ""):
    """Builds dataclass `cls` from a mapping, strictly: unknown keys are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'} must be a mapping of keys, got {data!r}")
    hints = _field_types(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        where = f"in {key}" if key else "at the top level"
        raise ConfigError(f"unknown config key {unknown[0]!r} {where}; allowed: {', '.join(names)}")
    values = {name: _convert(hints[name], data[name], f"{key}.{name}" if key else name) for name in data}
    try:
        return cls(**values)
    except ValueError as error:
        raise ConfigError(f"invalid config ({key or 'top level'}): {error}") from None


def apply_override(data: dict, assignment: str) -> None:
    """Applies 'a.b.c=value' to the raw config mapping (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} must look like section.key=value")
    path, _, raw = assignment.partition("=")
    keys = path.strip().split(".")
    node = data
    for part in keys[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
    try:
        node[keys[-1]] = yaml.load(raw, Loader=StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {assignment!r}: the value is not valid YAML ({_yaml_problem(error)[1]}); "
            "quote strings and close brackets, e.g. --set 'networks.actor.hidden_sizes=[64, 64]'"
        ) from None


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not last-wins."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may override, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = first_lines.get(key)
                except TypeError:  # an unhashable key; the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first}); keep one of them",
                        key_node.start_mark,
                    )
                first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _yaml_problem(error: yaml.YAMLError) -> tuple[str, str]:
    """(" at line N" or "", the problem's first line) of a PyYAML error."""
    mark = getattr(error, "problem_mark", None)
    problem = str(getattr(error, "problem", None) or error).splitlines()[0]
    return (f" at line {mark.line + 1}" if mark else ""), problem


def read_yaml(path: str | Path, what: str) -> Any:
    """Parses a UTF-8 YAML file with `StrictLoader`; `what` names the file in errors ("config file").

    Raises:
      ConfigError: the file is missing, unreadable, not UTF-8 or not valid YAML.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at line {line}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as error:
        where, problem = _yaml_problem(error)
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None


EXTENDS_KEY = "extends"
"""Top-level key naming a config file (relative to this one) whose settings this file starts from."""


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """One config file's mapping, merged over the file it `extends` (recursively)."""
    if not path.is_file():
        named = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path}{named} does not exist; pass one of the files in configs/")
    if path.resolve() in [p.resolve() for p in chain]:
        raise ConfigError(f"config file {path} extends itself through {' -> '.join(map(str, chain))}")
    data = read_yaml(path, "config file")
    if data is None:
        raise ConfigError(
            f"config file {path} is empty; put settings in it (see configs/) or omit --config for the built-in defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of sections (algorithm:, training:, ...)"
        )
    base_name = data.pop(EXTENDS_KEY, None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ConfigError(f"{EXTENDS_KEY} in {path} must be a file name, got {base_name!r}")
    return merge(_read_config_file(path.parent / base_name, (*chain, path)), data)


def merge(base: dict, override: dict) -> dict:
    """`override` laid over `base`: sections merge key by key, any other value (lists too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> tuple[RunConfig, dict]:
    """Reads a YAML config (and the file it `extends`), applies `--set` overrides, and validates it.

    No path means the built-in defaults; an empty file is refused as a likely
    mistake (it would silently start a default 1M-step run).

    Returns:
      The typed config and the raw mapping it was built from.
    """
    data = {} if path is None else _read_config_file(Path(path), ())
    for assignment in overrides:
        apply_override(data, assignment)
    return build(RunConfig, data), data


def to_dict(config) -> dict:
    """A plain, YAML/JSON-able mapping of a config dataclass (tuples become lists)."""

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def dump(config, path: str | Path) -> None:
    """Writes the resolved config as YAML (loadable with `load`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
