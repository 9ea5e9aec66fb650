"""The environment protocol shared by every env family.

An env is a pair of pure functions over one pytree, `EnvState`:

    state = env.reset(key)            # one env; vmap it for a batch
    state = env.step(state, action)   # action in [-1, 1]^action_size

Environments returned by `mbdpo_jax.envs.make` are already wrapped with action repeat, a time
limit and auto-reset, so `step` never needs a host-side reset. After an episode ends (termination
or truncation), `step` returns the first observation of the next episode in `obs` while
`final_obs` keeps the last observation of the finished episode, so values can bootstrap on
truncation. `done` (termination) and `truncation` are separate float flags.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
from flax import struct


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment (hashable, safe as a jit static argument).

    episode_length counts agent steps, i.e. after action repeat. A multi-task agent's spec (padded
    sizes) also lists each task's own episode length in `task_episode_lengths`, task-id order.
    `terminates` is True for envs whose episodes can end before the time limit (episodic tasks:
    a world model then learns a termination head).
    """

    name: str
    obs_size: int
    action_size: int
    episode_length: int
    action_repeat: int = 1
    differentiable: bool = False
    terminates: bool = False
    task_episode_lengths: tuple[int, ...] | None = None


@struct.dataclass
class EnvState:
    """State of one environment; all leaves are arrays so that it vmaps, scans and checkpoints.

    inner: the backend's own state (MJX data, brax pipeline state, or toy arrays).
    obs: observation to act on now (float32, [obs_size]).
    reward: reward of the last transition (summed over action repeat).
    done: 1.0 if the last transition terminated the episode, else 0.0.
    truncation: 1.0 if the last transition hit the time limit without terminating, else 0.0.
    final_obs: the observation reached by the last transition, before any auto-reset. Equals `obs`
        when the episode did not end.
    step_count: agent steps taken in the current episode (int32).
    episode_return / episode_length: running statistics of the current episode.
    last_return / last_length: statistics of the most recently finished episode (0 until one ends).
    episodes_done: number of finished episodes so far (int32).
    key: PRNG key used for auto-resets.
    """

    inner: Any
    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    truncation: jax.Array
    final_obs: jax.Array
    step_count: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array
    last_return: jax.Array
    last_length: jax.Array
    episodes_done: jax.Array
    key: jax.Array


class Env(Protocol):
    """What every env in the registry provides."""

    spec: EnvSpec

    def reset(self, key: jax.Array) -> EnvState: ...

    def step(self, state: EnvState, action: jax.Array) -> EnvState: ...
