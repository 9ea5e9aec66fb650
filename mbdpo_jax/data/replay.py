"""On-device replay of transitions, sampled as fixed-length sequences (flashbax trajectory buffer).

Each env writes one transition per step into its own row of the buffer's time axis. A stored
transition is {obs, action, reward, next_obs, done, end, plan_action, planned}: `plan_action` is
the planner's choice before exploration noise (what a prior is distilled towards), `planned` is 0
for the random actions of the seed phase, `next_obs` is the env's `final_obs` (the
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


def example_transition(spec: EnvSpec) -> dict[str, jax.Array]:
    """One transition with the right shapes and dtypes (to initialise the buffer)."""
    return {
        "obs": jnp.zeros(spec.obs_size, jnp.float32),
        "action": jnp.zeros(spec.action_size, jnp.float32),
        "reward": jnp.zeros((), jnp.float32),
        "next_obs": jnp.zeros(spec.obs_size, jnp.float32),
        "done": jnp.zeros((), jnp.float32),
        "end": jnp.zeros((), jnp.float32),
        "plan_action": jnp.zeros(spec.action_size, jnp.float32),
        "planned": jnp.zeros((), jnp.float32),
    }


def transition(prev: EnvState, action: jax.Array, nxt: EnvState, plan_action: jax.Array,
               planned: jax.Array) -> dict[str, jax.Array]:
    """The batch of transitions produced by stepping `prev` with `action` into `nxt`."""
    return {
        "plan_action": plan_action,
        "planned": jnp.broadcast_to(planned.astype(jnp.float32), nxt.reward.shape),
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
