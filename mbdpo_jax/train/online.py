"""The off-policy online loop: one jitted `train_chunk` = lax.scan over
{act for all envs (vmap) -> env step (vmap) -> replay insert -> gradient updates}.

The host only evaluates, logs and checkpoints between chunks. `Carry` is the whole training state
(agent, envs, replay, planner warm starts, PRNG key, counters), so a checkpoint is that pytree,
and seeds vmap over it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.data import replay
from mbdpo_jax.envs import reset_batch, step_batch
from mbdpo_jax.envs.base import Env, EnvState


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Static settings of the online loop."""

    num_envs: int = 1
    steps_per_chunk: int = 1000  # env steps (all envs together) per jitted chunk
    seed_steps: int = 1000  # random-action steps before planning and learning start
    updates_per_step: float = 1.0  # gradient updates per env step (update-to-data ratio)
    buffer_size: int = 1_000_000
    batch_size: int = 256
    horizon: int = 3
    eval_episodes: int = 10

    @property
    def iterations_per_chunk(self) -> int:
        return self.steps_per_chunk // self.num_envs

    @property
    def updates_per_iteration(self) -> int:
        """Updates done on iterations that update (see `update_period`)."""
        return max(1, round(self.updates_per_step * self.num_envs))

    @property
    def update_period(self) -> int:
        """Update every `update_period` iterations (> 1 only when updates_per_step * num_envs < 1)."""
        ratio = self.updates_per_step * self.num_envs
        return 1 if ratio >= 1 else max(1, round(1 / ratio))

    def validate(self) -> None:
        problems = []
        if self.num_envs < 1:
            problems.append(f"num_envs={self.num_envs} (must be >= 1)")
        if self.steps_per_chunk < self.num_envs or self.steps_per_chunk % self.num_envs:
            problems.append(f"steps_per_chunk={self.steps_per_chunk} (must be a positive multiple of "
                            f"num_envs={self.num_envs})")
        if self.seed_steps < 0:
            problems.append(f"seed_steps={self.seed_steps} (must be >= 0)")
        if self.updates_per_step <= 0:
            problems.append(f"updates_per_step={self.updates_per_step} (must be > 0)")
        if self.eval_episodes < 1:
            problems.append(f"eval_episodes={self.eval_episodes} (must be >= 1)")
        if problems:
            raise ValueError("invalid loop config: " + "; ".join(problems))


@struct.dataclass
class Carry:
    agent: Any
    env: EnvState
    buffer: Any
    plan: jax.Array  # [num_envs, ...] planner warm starts
    key: jax.Array
    env_steps: jax.Array  # transitions collected so far (all envs)
    updates: jax.Array


class OnlineTrainer:
    """Builds the pure functions of online training for one agent and one env.

    The agent must provide init(key), initial_plan_state(), act(state, obs, plan, key, eval_mode),
    next_plan_state(mean, episode_started) and update(state, batch, key).
    """

    def __init__(self, agent: Any, env: Env, cfg: LoopConfig):
        cfg.validate()
        self.agent, self.env, self.cfg = agent, env, cfg
        self.buffer = replay.make_replay(env.spec, cfg.buffer_size, cfg.num_envs, cfg.batch_size, cfg.horizon)

    # ---- state ------------------------------------------------------------------------------
    def init(self, key: jax.Array) -> Carry:
        k_agent, k_env, k_loop = jax.random.split(key, 3)
        plan0 = self.agent.initial_plan_state()
        return Carry(
            agent=self.agent.init(k_agent),
            env=reset_batch(self.env, k_env, self.cfg.num_envs),
            buffer=self.buffer.init(replay.example_transition(self.env.spec)),
            plan=jnp.broadcast_to(plan0, (self.cfg.num_envs,) + plan0.shape),
            key=k_loop,
            env_steps=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    # ---- one chunk --------------------------------------------------------------------------
    def _act(self, carry: Carry, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(actions, planner warm starts, plan actions, planned flag) for all envs; uniform random
        actions during the seed phase."""
        n, a = self.cfg.num_envs, self.env.spec.action_size
        k_rand, k_plan = jax.random.split(key)
        seeding = carry.env_steps < self.cfg.seed_steps

        def planned(_):
            keys = jax.random.split(k_plan, n)
            actions, means, aux = jax.vmap(lambda o, p, k: self.agent.act(carry.agent, o, p, k, False))(
                carry.env.obs, carry.plan, keys)
            return actions, means, aux["plan_action"]

        def random(_):
            actions = jax.random.uniform(k_rand, (n, a), minval=-1.0, maxval=1.0)
            return actions, carry.plan, actions

        actions, means, plan_actions = jax.lax.cond(seeding, random, planned, None)
        return actions, means, plan_actions, ~seeding

    def _learn(self, agent_state: Any, buffer_state: Any, key: jax.Array) -> tuple[Any, dict]:
        def one(state, k):
            k_sample, k_update = jax.random.split(k)
            batch = replay.sample_sequences(self.buffer, buffer_state, k_sample)
            return self.agent.update(state, batch, k_update)

        state, metrics = jax.lax.scan(one, agent_state, jax.random.split(key, self.cfg.updates_per_iteration))
        return state, jax.tree.map(jnp.mean, metrics)

    def _skip_learning(self, agent_state: Any, buffer_state: Any, key: jax.Array) -> tuple[Any, dict]:
        """Same outputs as `_learn`, with zero metrics; used during the seed phase and between updates."""
        _, shapes = jax.eval_shape(self._learn, agent_state, buffer_state, key)
        return agent_state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def _iteration(self, carry: Carry, index: jax.Array) -> tuple[Carry, dict]:
        key, k_act, k_learn = jax.random.split(carry.key, 3)
        actions, means, plan_actions, planned = self._act(carry, k_act)
        env_state = step_batch(self.env, carry.env, actions)
        step = replay.transition(carry.env, actions, env_state, plan_actions, planned)
        buffer_state = replay.add_step(self.buffer, carry.buffer, step)
        episode_started = jnp.maximum(env_state.done, env_state.truncation) > 0
        plan = jax.vmap(self.agent.next_plan_state)(means, episode_started)
        env_steps = carry.env_steps + self.cfg.num_envs

        should_learn = (env_steps >= self.cfg.seed_steps) & (index % self.cfg.update_period == 0)
        agent_state, metrics = jax.lax.cond(should_learn, self._learn, self._skip_learning,
                                            carry.agent, buffer_state, k_learn)
        metrics = {**metrics, "_weight": should_learn.astype(jnp.float32)}
        new = carry.replace(agent=agent_state, env=env_state, buffer=buffer_state, plan=plan, key=key,
                            env_steps=env_steps, updates=carry.updates + should_learn * self.cfg.updates_per_iteration)
        return new, metrics

    def train_chunk(self, carry: Carry) -> tuple[Carry, dict]:
        """steps_per_chunk env steps; returns the new carry and chunk-averaged training metrics."""
        carry, metrics = jax.lax.scan(self._iteration, carry, jnp.arange(self.cfg.iterations_per_chunk))
        weight = metrics.pop("_weight")
        denom = jnp.maximum(weight.sum(), 1.0)
        averaged = {k: jnp.sum(v * weight) / denom for k, v in metrics.items()}
        averaged["train_episode_return"] = carry.env.last_return.mean()
        averaged["learning"] = (weight.sum() > 0).astype(jnp.float32)
        return carry, averaged

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, agent_state: Any, key: jax.Array) -> dict[str, jax.Array]:
        """Run `eval_episodes` episodes in parallel with the planner in eval mode (no exploration noise).

        Returns 'eval_return' (mean undiscounted return of the first episode of each env) and, when
        the agent reports one, 'eval_prior_divergence' (mean over the episodes' steps).
        """
        n = self.cfg.eval_episodes
        k_reset, k_run = jax.random.split(key)
        plan0 = self.agent.initial_plan_state()
        init = (reset_batch(self.env, k_reset, n), jnp.broadcast_to(plan0, (n,) + plan0.shape), jnp.zeros(n),
                jnp.zeros(n))

        def step(carry, k):
            env_state, plan, returns, finished = carry
            keys = jax.random.split(k, n)
            actions, means, aux = jax.vmap(lambda o, p, kk: self.agent.act(agent_state, o, p, kk, True))(
                env_state.obs, plan, keys)
            env_state = step_batch(self.env, env_state, actions)
            returns = returns + env_state.reward * (1.0 - finished)
            ended = jnp.maximum(env_state.done, env_state.truncation)
            plan = jax.vmap(self.agent.next_plan_state)(means, ended > 0)
            divergence = aux.get("prior_divergence", jnp.zeros(n)).mean()
            return (env_state, plan, returns, jnp.maximum(finished, ended)), divergence

        steps = self.env.spec.episode_length
        (_, _, returns, _), divergence = jax.lax.scan(step, init, jax.random.split(k_run, steps))
        return {"eval_return": returns.mean(), "eval_prior_divergence": divergence.mean()}
