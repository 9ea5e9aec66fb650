"""An env seen through a multi-task model's padded sizes: zero-padded observations, actions cut
back to the env's own dimensions (the extra ones are masked out by the agent)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mbdpo_jax.envs.base import Env, EnvSpec, EnvState


class PaddedEnv:
    """Wraps a (wrapped, auto-resetting) env; `state.inner` holds the env's own state."""

    def __init__(self, env: Env, obs_size: int, action_size: int):
        if obs_size < env.spec.obs_size or action_size < env.spec.action_size:
            raise ValueError(f"{env.spec.name} has obs size {env.spec.obs_size} and action size "
                             f"{env.spec.action_size}, more than the model's {obs_size} and {action_size}")
        self.env = env
        self.spec = dataclasses.replace(env.spec, obs_size=obs_size, action_size=action_size)

    def _pad(self, x: jax.Array) -> jax.Array:
        return jnp.pad(x, [(0, self.spec.obs_size - x.shape[-1])])

    def _view(self, inner: EnvState) -> EnvState:
        return inner.replace(inner=inner, obs=self._pad(inner.obs), final_obs=self._pad(inner.final_obs))

    def reset(self, key: jax.Array) -> EnvState:
        return self._view(self.env.reset(key))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        return self._view(self.env.step(state.inner, action[: self.env.spec.action_size]))
