"""Latent imagination: rollouts of a world model that planners score and first-order learners
differentiate through.

    prior = rollout_prior(model, params, z, key, num, horizon)            # [num, H, A] from pi
    J = trajectory_value(model, params, z, actions, key, gamma)           # [N] for actions [N, H, A]
    traj = imagine(model, params, z0, policy, horizon, key)               # differentiable H-step rollout

`trajectory_value` is TD-MPC2's planning objective (Hansen et al., 2024, Eq. 4):
sum_t gamma^t [r_hat(z_t, a_t) + bonus(z_t, a_t)] + gamma^H * avg of two Qs at (z_H, pi(z_H)).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.models.world_model import WorldModel

StepBonus = Callable[[jax.Array, jax.Array], jax.Array]


def rollout_prior(model: WorldModel, params: dict, z: jax.Array, key: jax.Array, num: int, horizon: int,
                  task: Any = None) -> jax.Array:
    """Action sequences [num, H, A] from the policy prior rolled through the latent dynamics from z."""
    zs = jnp.broadcast_to(z, (num,) + z.shape)

    def step(z_t, k):
        a, _ = model.pi(params, z_t, k, task)
        return model.next(params, z_t, a, task), a

    _, actions = jax.lax.scan(step, zs, jax.random.split(key, horizon))
    return jnp.swapaxes(actions, 0, 1)


def trajectory_value(model: WorldModel, params: dict, z: jax.Array, actions: jax.Array, key: jax.Array,
                     gamma: Any, task: Any = None, step_bonus: StepBonus | None = None) -> jax.Array:
    """sum_t gamma^t [r_hat(z_t, a_t) + bonus(z_t, a_t)] + gamma^H * avg Q(z_H, pi(z_H)), actions [N, H, A].

    With an episodic model, everything after a predicted termination (sigmoid of the termination head
    at z_{t+1} above 0.5) is masked out, as in TD-MPC2's planner.
    """
    num = actions.shape[0]
    zs = jnp.broadcast_to(z, (num,) + z.shape)

    def step(carry, a_t):
        z_t, ret, disc, alive = carry
        r_t = model.reward_value(params, z_t, a_t, task)
        if step_bonus is not None:
            r_t = r_t + step_bonus(z_t, a_t)
        ret = ret + disc * alive * r_t
        z_next = model.next(params, z_t, a_t, task)
        if model.cfg.episodic:
            alive = alive * (model.termination(params, z_next, task) <= 0.0)  # logit > 0 <=> p > 0.5
        return (z_next, ret, disc * gamma, alive), None

    init = (zs, jnp.zeros(num), jnp.ones(()), jnp.ones(num))
    (z_h, ret, disc, alive), _ = jax.lax.scan(step, init, jnp.swapaxes(actions, 0, 1))
    k_pi, k_q = jax.random.split(key)
    a_h, _ = model.pi(params, z_h, k_pi, task)
    return ret + disc * alive * model.q_value(params, z_h, a_h, k_q, task)


@struct.dataclass
class Imagined:
    """An imagined trajectory, time-major: latents [H+1, ..., Z], actions [H, ..., A], rewards [H, ...]."""

    latents: jax.Array
    actions: jax.Array
    rewards: jax.Array


Policy = Callable[[jax.Array, jax.Array], jax.Array]


def imagine(model: WorldModel, params: dict, z0: jax.Array, policy: Policy, horizon: int, key: jax.Array,
            task: Any = None, detach_policy_input: bool = True) -> Imagined:
    """H steps of a_t = policy(z_t, key_t), z_{t+1} = d(z_t, a_t), r_t = r_hat(z_t, a_t).

    Gradients flow through the dynamics and the reward into the actions and the policy (PWM,
    Georgiev et al., 2024, Eq. 3); with `detach_policy_input` the policy sees sg(z_t), as PWM's actor
    does, so the policy gradient reaches earlier steps only through the model.
    """
    def step(z_t, k):
        a_t = policy(jax.lax.stop_gradient(z_t) if detach_policy_input else z_t, k)
        r_t = model.reward_value(params, z_t, a_t, task)
        return model.next(params, z_t, a_t, task), (z_t, a_t, r_t)

    z_h, (zs, actions, rewards) = jax.lax.scan(step, z0, jax.random.split(key, horizon))
    return Imagined(jnp.concatenate([zs, z_h[None]], 0), actions, rewards)
