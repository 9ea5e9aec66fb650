"""SHAC (Xu et al., 2022, "Accelerated Policy Learning with Parallel Differentiable Simulation"): the
actor is trained by backpropagating the return of short windows through the true, differentiable
MJX physics; a critic bootstraps beyond the window.

    agent = SHAC(SHACConfig(), env.spec)
    state = agent.init(key)
    state, env_state, metrics = agent.update(state, env, env_state, key)   # one window, batched envs
    action, carry, aux = agent.act(state, obs, carry, key, eval_mode)     # one env; vmap it

Actor loss over a window of h steps and N envs (SHAC, Eq. 5):

    L = -1/(N h) sum_envs [ sum_{t<h} gamma^(t - t0) r_t + gamma^(h - t0) V'(s_h) ],

where t0 restarts at each episode end inside the window and V' is the target critic; a termination
bootstraps 0, a truncation bootstraps V'(final observation). The critic fits TD(lambda) targets of the
window (`models.actor_critic.td_lambda_targets`), then the target critic moves by Polyak averaging.
Observations are normalised by running statistics. It follows `agents.protocols.FirstOrderAgent`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbdpo_jax.envs import step_batch
from mbdpo_jax.envs.base import Env, EnvSpec, EnvState
from mbdpo_jax.models import actor_critic as ac

ON_NONFINITE = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class SHACConfig:
    """SHAC's settings; defaults are the paper's Ant ones (App. A: actor [128, 64, 32], critic [64, 64],
    lr 2e-3, 16 critic iterations x 4 minibatches, target alpha 0.2; 64 envs are the loop's --num-envs),
    with DiffRL's layers (Linear -> ELU -> LayerNorm, PyTorch's init; see `actor_critic.LAYERS`) and a
    zero mean head."""

    actor_critic: ac.ActorCriticConfig = ac.ActorCriticConfig(
        actor_hidden=(128, 64, 32), critic_hidden=(64, 64), num_critics=1, actor_lr=2e-3, critic_lr=2e-3,
        critic_grad_clip=1.0, critic_iterations=16, critic_minibatches=4, min_log_std=-5.0, lr_decay_updates=2_000,
        layers="linear-elu-norm")
    window: int = 32
    """Env steps differentiated through per actor update."""
    gamma: float = 0.99
    target_alpha: float = 0.2
    """Target critic <- alpha * target + (1 - alpha) * critic after each update."""
    normalize_obs: bool = True
    on_nonfinite: str = "raise"
    """Non-finite actor gradients: 'raise' (the run stops with an error naming the step) or 'skip'
    (the update is dropped and counted in the metric nonfinite_skips)."""

    def validate(self) -> None:
        self.actor_critic.validate()
        if self.window <= 0:
            raise ValueError(f"window must be > 0, got {self.window}")
        if not 0 < self.gamma <= 1 or not 0 <= self.target_alpha < 1:
            raise ValueError(f"need gamma in (0, 1] and target-alpha in [0, 1), got {self.gamma}, {self.target_alpha}")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on-nonfinite must be one of {', '.join(ON_NONFINITE)}, got {self.on_nonfinite!r}")


@struct.dataclass
class SHACState:
    actor: Any
    critic: Any
    target_critic: Any
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    obs_stats: ac.RunningMeanStd


@struct.dataclass
class Window:
    """What the critic regression needs of a window, time-major [h, N, ...], detached."""

    obs: jax.Array  # normalised observations acted on
    rewards: jax.Array
    next_values: jax.Array  # V'(next or final obs), 0 after a termination
    ends: jax.Array  # termination or truncation
    raw_obs: jax.Array


class SHAC:
    """SHAC agent: static config + env spec; all methods are pure."""

    regime = "first_order"

    def __init__(self, cfg: SHACConfig, spec: EnvSpec, num_tasks: int = 1, action_masks: Any = None):
        cfg.validate()
        if num_tasks != 1:
            raise ValueError(f"SHAC is single-task, got num_tasks={num_tasks}")
        if not spec.differentiable:
            raise ValueError(f"SHAC differentiates through the physics, but {spec.name} is not differentiable "
                             "(pick a toy/, brax/ or dmc/ env whose spec.differentiable is True)")
        self.cfg, self.spec = cfg, spec
        self.actor, self.critic, self.actor_tx, self.critic_tx = ac.networks(cfg.actor_critic, spec.action_size)

    def init(self, key: jax.Array) -> SHACState:
        k_actor, k_critic = jax.random.split(key)
        obs = jnp.zeros((self.spec.obs_size,))
        actor = self.actor.init(k_actor, obs)["params"]
        critic = self.critic.init(k_critic, obs)["params"]
        return SHACState(actor, critic, critic, self.actor_tx.init(actor), self.critic_tx.init(critic),
                         ac.RunningMeanStd.create((self.spec.obs_size,)))

    def initial_act_carry(self) -> jax.Array:
        return jnp.zeros(())

    def next_act_carry(self, carry: jax.Array, episode_started: jax.Array) -> jax.Array:
        return carry

    def act(self, state: SHACState, obs: jax.Array, carry: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, jax.Array, dict]:
        """tanh of the actor's mean (eval mode) or of a Gaussian sample at the normalised observation."""
        mean, log_std = self.actor.apply({"params": state.actor}, self._normalize(state, obs))
        return ac.sample_action(mean, log_std, key, eval_mode), carry, {}

    def _normalize(self, state: SHACState, obs: jax.Array) -> jax.Array:
        return state.obs_stats.normalize(obs) if self.cfg.normalize_obs else obs

    def _value(self, state: SHACState, params: Any, obs: jax.Array) -> jax.Array:
        return self.critic.apply({"params": params}, self._normalize(state, obs))[0]

    def window_loss(self, actor: Any, state: SHACState, env: Env, env_state: EnvState, key: jax.Array
                    ) -> tuple[jax.Array, tuple[EnvState, Window]]:
        """SHAC's actor loss over one window from `env_state` (batched envs), differentiable in `actor`
        through the env's dynamics and rewards; also the env state reached and the window's data."""
        gamma, target = self.cfg.gamma, jax.lax.stop_gradient(state.target_critic)
        n = env_state.obs.shape[0]

        def step(carry, k):
            s, ret, disc = carry
            obs = self._normalize(state, s.obs)
            mean, log_std = self.actor.apply({"params": actor}, obs)
            nxt = step_batch(env, s, ac.sample_action(mean, log_std, k))
            v_next = self._value(state, target, nxt.final_obs) * (1.0 - nxt.done)
            ended = jnp.maximum(nxt.done, nxt.truncation)
            ret = ret + disc * nxt.reward + ended * disc * gamma * v_next
            disc = jnp.where(ended > 0, 1.0, disc * gamma)
            return (nxt, ret, disc), Window(obs, nxt.reward, v_next, ended, s.obs)

        init = (env_state, jnp.zeros(n), jnp.ones(n))
        (last, ret, disc), window = jax.lax.scan(step, init, jax.random.split(key, self.cfg.window))
        ret = ret + (1.0 - window.ends[-1]) * disc * window.next_values[-1]
        return -jnp.sum(ret) / (n * self.cfg.window), (last, jax.lax.stop_gradient(window))

    def update(self, state: SHACState, env: Env, env_state: EnvState, key: jax.Array
               ) -> tuple[SHACState, EnvState, dict]:
        """One window: actor step through the physics, critic regression on TD(lambda) targets, target
        critic Polyak step, observation statistics; returns the env state the window ended in."""
        k_window, k_critic = jax.random.split(key)
        env_state = jax.lax.stop_gradient(env_state)
        (loss, (last, window)), grads = jax.value_and_grad(self.window_loss, has_aux=True)(
            state.actor, state, env, env_state, k_window)
        skipped, finite = ac.zero_if_not_finite(grads)
        if self.cfg.on_nonfinite == "skip":
            grads = skipped
        updates, actor_opt = self.actor_tx.update(grads, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, updates)
        acc = self.cfg.actor_critic
        targets = ac.td_lambda_targets(window.rewards, window.next_values, window.ends, self.cfg.gamma, acc.td_lambda)
        critic, critic_opt, critic_loss = ac.fit_critics(
            self.critic, self.critic_tx, state.critic, state.critic_opt, window.obs.reshape(-1, window.obs.shape[-1]),
            targets.reshape(-1), acc.critic_iterations, acc.critic_minibatches, k_critic)
        target_critic = optax.incremental_update(critic, state.target_critic, 1.0 - self.cfg.target_alpha)
        obs_stats = state.obs_stats.update(window.raw_obs) if self.cfg.normalize_obs else state.obs_stats
        new = SHACState(actor, critic, target_critic, actor_opt, critic_opt, obs_stats)
        metrics = {"actor_loss": loss, "critic_loss": critic_loss, "window_reward": jnp.mean(window.rewards),
                   "nonfinite_skips": 1.0 - finite.astype(jnp.float32),
                   # non-finite only with on_nonfinite='raise' (skipped gradients are zeros): the host loop
                   # then stops the run, naming the step
                   "actor_grad_norm": optax.tree.norm(grads)}
        return new, last, metrics
