"""The first-order loop: one jitted `train_chunk` = lax.scan over windows, each
{roll the policy through the batched differentiable env -> backpropagate -> update}.

Works with any `agents.protocols.FirstOrderAgent` (SHAC): the agent's `update` steps the envs
itself, inside its gradient. `batched.Carry` is the whole training state (agent, envs, key, counters), so a
checkpoint is that pytree; the host loop (`train.host`) drives it like the off-policy loop.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mbdpo_jax.envs.base import Env
from mbdpo_jax.train import batched, progress, rollout
from mbdpo_jax.train.batched import Carry


@dataclasses.dataclass(frozen=True)
class FirstOrderLoopConfig:
    """Static settings of the first-order loop; `window` is the agent's (env steps per update per env)."""

    num_envs: int
    window: int
    steps_per_chunk: int  # env steps (all envs together) per jitted chunk
    eval_episodes: int = 10
    progress_every: int = 0  # windows between progress reports (0: none)

    @property
    def steps_per_window(self) -> int:
        return self.num_envs * self.window

    @property
    def windows_per_chunk(self) -> int:
        return self.steps_per_chunk // self.steps_per_window

    def validate(self) -> None:
        """One-line error naming every bad value."""
        batched.check_loop_settings("first-order", self, ("num_envs", "window", "eval_episodes"), self.steps_per_chunk,
                                    self.steps_per_window, f"num_envs x window = {self.num_envs} x {self.window}")


class FirstOrderTrainer:
    """Builds the pure functions of first-order training for one agent and one env."""

    def __init__(self, agent: Any, env: Env, cfg: FirstOrderLoopConfig):
        cfg.validate()
        self.agent, self.env, self.cfg = agent, env, cfg

    def init(self, key: jax.Array) -> Carry:
        return batched.init_carry(self.agent, self.env, self.cfg.num_envs, key)

    def _window(self, carry: Carry, index: jax.Array) -> tuple[Carry, dict]:
        key, k_update = jax.random.split(carry.key)
        agent, env_state, metrics = self.agent.update(carry.agent, self.env, carry.env, k_update)
        env_steps = carry.env_steps + self.cfg.steps_per_window
        progress.maybe_report(index, env_steps, self.cfg.progress_every)
        return Carry(agent, env_state, key, env_steps, carry.updates + 1), metrics

    def train_chunk(self, carry: Carry) -> tuple[Carry, dict]:
        """steps_per_chunk env steps; returns the new carry and chunk-averaged metrics (the skip count summed)."""
        carry, metrics = jax.lax.scan(self._window, carry, jnp.arange(self.cfg.windows_per_chunk))
        averaged = {k: (jnp.sum(v) if k == "nonfinite_skips" else jnp.mean(v)) for k, v in metrics.items()}
        averaged["train_episode_return"] = carry.env.last_return.mean()
        return carry, averaged

    def evaluate(self, agent_state: Any, key: jax.Array) -> dict[str, jax.Array]:
        """`eval_episodes` episodes in parallel in eval mode; see `rollout.evaluate_episodes`."""
        return rollout.evaluate_episodes(self.env, self.agent, agent_state, key, self.cfg.eval_episodes)
