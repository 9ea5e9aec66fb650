"""A multi-task agent bound to one task id, with the single-task interface the loops expect."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class TaskAgent:
    """Delegates to `agent`, passing `task` to act and adding it to update batches."""

    def __init__(self, agent: Any, task: int):
        self.agent, self.task = agent, task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agent, name)

    def act(self, state: Any, obs: jax.Array, act_carry: Any, key: jax.Array, eval_mode: bool = False):
        return self.agent.act(state, obs, act_carry, key, eval_mode, task=jnp.int32(self.task))

    def update(self, state: Any, batch: dict, key: jax.Array):
        task = jnp.full(batch["reward"].shape[1:], self.task, jnp.int32)
        return self.agent.update(state, {**batch, "task": task}, key)
