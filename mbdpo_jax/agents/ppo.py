"""PPO (Schulman et al., 2017, "Proximal Policy Optimization Algorithms") with a Gaussian policy, as brax's
and MuJoCo Playground's PPO: a tanh-squashed Gaussian whose mean and std both come from the policy MLP.

    agent = PPO(PPOConfig(), env.spec)
    state = agent.init(key)
    action, aux = agent.act(state, obs, key, eval_mode)           # one env; vmap it
    prepared = agent.prepare(state, trajectory)                    # GAE once per rollout
    state, metrics = agent.update(state, minibatch, key)           # one clipped-surrogate step

Policy (brax `NormalTanhDistribution`): u ~ N(mu(s), sigma(s)), sigma = softplus(.) + min_std, action
tanh(u); tanh(mu) in eval mode. The ratio is taken on the pre-tanh u stored at acting time (the tanh
Jacobian cancels in it); the entropy is the Gaussian's plus a one-sample estimate of the Jacobian term,
as brax. Loss per minibatch (advantages normalised within it):

    L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + c_v 0.5 mean((V - R)^2) - c_H entropy,

with A, R from `models.actor_critic.gae` (termination bootstraps 0, truncation V(final observation)).
Observations are normalised by running statistics held in the state. `prepare` normalises the
rollout with the statistics it was acted with, so the policy's input does not change over the epochs and
the ratios of the first minibatch are exactly 1; each `update` merges its minibatch's raw observations
into the statistics, so every sample is merged `epochs` times, which weights all samples alike: the
statistics are those of every observation seen. It follows `agents.protocols.OnPolicyAgent`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models import policy_gradient as pg
from mbdpo_jax.nn.layers import SwishMLP


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO's settings; networks, learning rate, entropy cost, reward scale, epochs and minibatches are
    Playground's DM Control ones (`dm_control_suite_params.brax_ppo_config`: policy [32] x 4, value
    [256] x 5, swish, lr 1e-3, entropy 1e-2, reward x 10, 16 epochs of 32 minibatches, 2048 envs
    collecting 16 x 30 steps each per update round); clip 0.2 and gamma 0.99 are the PPO paper's
    (Playground: 0.3, 0.995)."""

    policy_hidden: tuple[int, ...] = (32, 32, 32, 32)
    """Hidden widths of the policy MLP (its head gives the Gaussian's mean and std)."""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256, 256)
    num_steps: int = 480
    """Env steps per env in one rollout."""
    epochs: int = 16
    """Passes over each rollout."""
    minibatches: int = 32
    """Minibatches per pass; they must divide num_envs x num_steps."""
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    """Global gradient-norm clip (policy and value together)."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_ratio: float = 0.2
    """Clipping epsilon of the probability ratio."""
    value_coef: float = 0.5
    entropy_coef: float = 1e-2
    reward_scale: float = 10.0
    """Rewards are multiplied by this in the advantages and value targets."""
    min_std: float = 1e-3
    """Added to the softplus of the policy's std output."""
    normalize_obs: bool = True
    normalize_advantages: bool = True

    def validate(self) -> None:
        """One-line error naming the bad value."""
        for name in ("num_steps", "epochs", "minibatches", "learning_rate", "grad_clip", "clip_ratio",
                     "reward_scale", "min_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("value_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"need gamma in (0, 1] and gae-lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if not (self.policy_hidden and self.value_hidden and min(self.policy_hidden + self.value_hidden) > 0):
            raise ValueError(f"policy-hidden and value-hidden need positive widths, got {self.policy_hidden}, "
                             f"{self.value_hidden}")


@struct.dataclass
class PPOState:
    policy: Any
    value: Any
    opt: optax.OptState
    obs_stats: ac.RunningMeanStd


def gaussian_log_prob(u: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
    """log N(u; loc, scale^2 I), summed over the last axis."""
    return jnp.sum(-0.5 * jnp.square((u - loc) / scale) - jnp.log(scale) - 0.5 * math.log(2 * math.pi), axis=-1)


class PPO:
    """PPO agent: static config + env spec; all methods are pure."""

    regime = "on_policy"

    def __init__(self, cfg: PPOConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"PPO is single-task, got num_tasks={num_tasks}")
        self.cfg, self.spec = cfg, spec
        self.policy_net = SwishMLP(cfg.policy_hidden, 2 * spec.action_size)
        self.value_net = SwishMLP(cfg.value_hidden, 1)
        self.tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))

    @property
    def num_steps(self) -> int:
        return self.cfg.num_steps

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def minibatches(self) -> int:
        return self.cfg.minibatches

    def init(self, key: jax.Array) -> PPOState:
        k_policy, k_value = jax.random.split(key)
        obs = jnp.zeros((self.spec.obs_size,))
        params = {"policy": self.policy_net.init(k_policy, obs)["params"],
                  "value": self.value_net.init(k_value, obs)["params"]}
        return PPOState(params["policy"], params["value"], self.tx.init(params),
                        ac.RunningMeanStd.create((self.spec.obs_size,)))

    def normalize(self, state: PPOState, obs: jax.Array) -> jax.Array:
        """Observations as the networks see them (running normalisation, when on)."""
        return state.obs_stats.normalize(obs) if self.cfg.normalize_obs else obs

    def distribution(self, policy: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loc, scale) of the pre-tanh Gaussian at normalised observations."""
        loc, raw_scale = jnp.split(self.policy_net.apply({"params": policy}, obs), 2, axis=-1)
        return loc, jax.nn.softplus(raw_scale) + self.cfg.min_std

    def value(self, value: Any, obs: jax.Array) -> jax.Array:
        """V at normalised observations."""
        return self.value_net.apply({"params": value}, obs)[..., 0]

    def act(self, state: PPOState, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """tanh(u) with u ~ N(loc, scale) (tanh(loc) in eval mode); aux: u and its log-density."""
        loc, scale = self.distribution(state.policy, self.normalize(state, obs))
        u = loc if eval_mode else loc + scale * jax.random.normal(key, loc.shape)
        return jnp.tanh(u), {"raw_action": u, "log_prob": gaussian_log_prob(u, loc, scale)}

    def prepare(self, state: PPOState, trajectory: dict) -> dict:
        """Normalised observations (the acting statistics), GAE advantages and value targets."""
        obs = self.normalize(state, trajectory["obs"])
        values = self.value(state.value, obs)
        next_values = self.value(state.value, self.normalize(state, trajectory["next_obs"]))
        advantages, returns = ac.gae(self.cfg.reward_scale * trajectory["reward"], values, next_values,
                                     trajectory["done"], trajectory["truncation"], self.cfg.gamma, self.cfg.gae_lambda)
        return {"obs": obs, "raw_obs": trajectory["obs"], "raw_action": trajectory["raw_action"],
                "log_prob": trajectory["log_prob"], "advantage": advantages, "return": returns}

    def loss(self, params: dict, minibatch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """PPO's loss on a prepared minibatch (see the module docstring) and its diagnostics."""
        cfg = self.cfg
        loc, scale = self.distribution(params["policy"], minibatch["obs"])
        log_ratio = gaussian_log_prob(minibatch["raw_action"], loc, scale) - minibatch["log_prob"]
        adv = minibatch["advantage"]
        if cfg.normalize_advantages:
            adv, _ = pg.normalized_advantages(adv)
        policy_loss, _, diagnostics = pg.clipped_surrogate(log_ratio, adv, cfg.clip_ratio)
        value_loss = 0.5 * jnp.mean(jnp.square(self.value(params["value"], minibatch["obs"]) - minibatch["return"]))
        sample = loc + scale * jax.random.normal(key, loc.shape)
        log_jacobian = ac.tanh_log_det_jacobian(sample)
        entropy = jnp.mean(jnp.sum(0.5 + 0.5 * math.log(2 * math.pi) + jnp.log(scale) + log_jacobian, axis=-1))
        total = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        return total, {"total_loss": total, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                       "policy_std": jnp.mean(scale), **diagnostics}

    def update(self, state: PPOState, minibatch: dict, key: jax.Array) -> tuple[PPOState, dict]:
        """One Adam step (global-norm clipped) on the minibatch's loss; the minibatch's raw observations
        are merged into the running statistics."""
        params, opt, metrics = pg.gradient_step(self.tx, self.loss, {"policy": state.policy, "value": state.value},
                                                state.opt, minibatch, key)
        obs_stats = state.obs_stats.update(minibatch["raw_obs"]) if self.cfg.normalize_obs else state.obs_stats
        return PPOState(params["policy"], params["value"], opt, obs_stats), metrics
