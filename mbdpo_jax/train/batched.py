"""What the replay-free loops (`train.first_order`, `train.on_policy`) share: their carry over a batch of
envs and the checks of their static settings.

Both loops train on fresh interaction of `num_envs` envs stepped together, in chunks of whole units
(a SHAC window or a PPO rollout of num_envs x steps-per-env env steps).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.envs import reset_batch
from mbdpo_jax.envs.base import Env, EnvState


@struct.dataclass
class Carry:
    """The whole training state of a replay-free loop, so a checkpoint is this pytree."""

    agent: Any
    env: EnvState
    key: jax.Array
    env_steps: jax.Array  # transitions so far (all envs)
    updates: jax.Array


def init_carry(agent: Any, env: Env, num_envs: int, key: jax.Array) -> Carry:
    """A fresh agent, `num_envs` freshly reset envs and zero counters."""
    k_agent, k_env, k_loop = jax.random.split(key, 3)
    return Carry(agent.init(k_agent), reset_batch(env, k_env, num_envs), k_loop,
                 jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def check_loop_settings(loop: str, cfg: Any, positive: Sequence[str], steps_per_chunk: int, unit_steps: int,
                        unit: str, extra: Callable[[], list[str]] = list) -> None:
    """Raise one ValueError naming every bad value: each setting named in `positive` must be >= 1; once
    they are, the chunk (`steps_per_chunk`, the user's eval_every) must be a positive multiple of the
    unit of `unit_steps` env steps described by `unit`, and `extra()` may add the caller's own problems."""
    problems = [f"{name}={getattr(cfg, name)} (must be >= 1)" for name in positive if getattr(cfg, name) < 1]
    if not problems:
        if steps_per_chunk < unit_steps or steps_per_chunk % unit_steps:
            problems.append(f"eval_every={steps_per_chunk} must be a positive multiple of {unit} = {unit_steps} "
                            "env steps")
        problems += extra()
    if problems:
        raise ValueError(f"invalid {loop} loop config: " + "; ".join(problems))
