"""On-device replay of transitions, sampled as fixed-length sequences (flashbax trajectory buffer).

Each env writes one transition per step into its own row of the buffer's time axis. A stored
transition is {obs, action, reward, next_obs, done, end} plus the agent's extras (entries of its
act aux it asks to keep, e.g. MBDPO's planner action for distillation): `next_obs` is the env's `final_obs` (the
true successor even when the env auto-reset) and `end` marks termination or truncation, so a
sampled sequence that crosses an episode boundary is masked from that point on by the learner.
"""
from __future__ import annotations

import flashbax as fbx
import jax
import jax.numpy as jnp

from mbdpo_jax.envs.base import EnvSpec, EnvState


def make_replay(spec: EnvSpec, capacity: int, num_envs: int, batch_size: int, horizon: int):
    """A flashbax trajectory buffer holding `capacity` transitions split over `num_envs` rows."""
    rows = max(capacity // num_envs, horizon + 1)
    return fbx.make_trajectory_buffer(
        add_batch_size=num_envs,
        sample_batch_size=batch_size,
        sample_sequence_length=horizon,
        period=1,
        min_length_time_axis=horizon,
        max_length_time_axis=rows,
    )


def example_transition(spec: EnvSpec, extras: dict[str, tuple[int, ...]] | None = None) -> dict[str, jax.Array]:
    """One transition with the right shapes and dtypes (to initialise the buffer); `extras` maps the
    agent's extra fields to their per-env shapes."""
    return {
        **{name: jnp.zeros(shape, jnp.float32) for name, shape in (extras or {}).items()},
        "obs": jnp.zeros(spec.obs_size, jnp.float32),
        "action": jnp.zeros(spec.action_size, jnp.float32),
        "reward": jnp.zeros((), jnp.float32),
        "next_obs": jnp.zeros(spec.obs_size, jnp.float32),
        "done": jnp.zeros((), jnp.float32),
        "end": jnp.zeros((), jnp.float32),
    }


def transition(prev: EnvState, action: jax.Array, nxt: EnvState, extras: dict[str, jax.Array] | None = None
               ) -> dict[str, jax.Array]:
    """The batch of transitions produced by stepping `prev` with `action` into `nxt` (plus extras)."""
    return {
        **{k: v.astype(jnp.float32) for k, v in (extras or {}).items()},
        "obs": prev.obs,
        "action": action,
        "reward": nxt.reward,
        "next_obs": nxt.final_obs,
        "done": nxt.done,
        "end": jnp.maximum(nxt.done, nxt.truncation),
    }


def add_step(buffer, buffer_state, batch: dict[str, jax.Array]):
    """Insert one transition per env ([num_envs, ...] leaves)."""
    return buffer.add(buffer_state, jax.tree.map(lambda x: x[:, None], batch))


def sample_sequences(buffer, buffer_state, key: jax.Array) -> dict[str, jax.Array]:
    """A time-major batch: every leaf [H, B, ...]."""
    sample = buffer.sample(buffer_state, key).experience
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), sample)
