"""The off-policy loop: one jitted `train_chunk` = lax.scan over
{act for all envs (vmap) -> env step (vmap) -> replay insert -> gradient updates}.

Works with any `agents.protocols.OffPolicyAgent`. `Carry` is the whole training state (agent,
envs, replay, act carries such as planner warm starts, PRNG key, counters), so a checkpoint is
that pytree, and seeds vmap over it. The host loop (`train.host`) calls `train_chunk` and
`evaluate` between visits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.data import replay
from mbdpo_jax.envs import reset_batch
from mbdpo_jax.envs.base import Env, EnvState
from mbdpo_jax.train import progress, rollout


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Static settings of the off-policy loop."""

    num_envs: int = 1
    steps_per_chunk: int = 1000  # env steps (all envs together) per jitted chunk
    seed_steps: int = 1000  # random-action steps before planning and learning start
    updates_per_step: float = 1.0  # gradient updates per env step (update-to-data ratio)
    buffer_size: int = 1_000_000
    eval_episodes: int = 10
    seed_burst: bool = True  # one burst of updates when the seed phase ends (the references' behaviour)
    progress_every: int = 0  # iterations between progress reports to the host (0: none)

    @property
    def burst_updates(self) -> int:
        """Updates of the burst at the end of the seed phase (0 when off or without a seed phase)."""
        return max(1, round(self.seed_steps * self.updates_per_step)) if self.seed_burst and self.seed_steps else 0

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
    act: Any  # [num_envs, ...] act carries (planner warm starts)
    key: jax.Array
    env_steps: jax.Array  # transitions collected so far (all envs)
    updates: jax.Array


class OffPolicyTrainer:
    """Builds the pure functions of off-policy training for one agent and one env."""

    def __init__(self, agent: Any, env: Env, cfg: LoopConfig):
        cfg.validate()
        self.agent, self.env, self.cfg = agent, env, cfg
        self.buffer = replay.make_replay(env.spec, cfg.buffer_size, cfg.num_envs, agent.batch_size, agent.horizon)
        self.extras = dict(agent.replay_extras)

    # ---- state ------------------------------------------------------------------------------
    def init(self, key: jax.Array) -> Carry:
        k_agent, k_env, k_loop = jax.random.split(key, 3)
        return Carry(
            agent=self.agent.init(k_agent),
            env=reset_batch(self.env, k_env, self.cfg.num_envs),
            buffer=self.buffer.init(replay.example_transition(self.env.spec, self.extras)),
            act=rollout.initial_carries(self.agent, self.cfg.num_envs),
            key=k_loop,
            env_steps=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    # ---- one chunk --------------------------------------------------------------------------
    def _policy(self, carry: Carry) -> rollout.BatchedPolicy:
        """The agent's policy, or uniform random actions during the seed phase (extras stored as zeros)."""
        n, a = self.cfg.num_envs, self.env.spec.action_size
        seeding = carry.env_steps < self.cfg.seed_steps
        acting = rollout.agent_policy(self.agent, carry.agent, False)

        def policy(obs, act_carry, key):
            k_rand, k_plan = jax.random.split(key)

            def planned(_):
                actions, carry_out, aux = acting(obs, act_carry, k_plan)
                return actions, carry_out, {k: aux[k] for k in self.extras}

            def random(_):
                actions = jax.random.uniform(k_rand, (n, a), minval=-1.0, maxval=1.0)
                return actions, act_carry, {k: jnp.zeros((n,) + s) for k, s in self.extras.items()}

            return jax.lax.cond(seeding, random, planned, None)

        return policy

    def _learn(self, agent_state: Any, buffer_state: Any, key: jax.Array, num_updates: jax.Array
               ) -> tuple[Any, dict]:
        """`num_updates` (a traced count: 0, updates_per_iteration, or the seed burst) updates on freshly
        sampled sequences, in one loop body; returns the new state and the metrics averaged over them."""
        def one(state, k):
            k_sample, k_update = jax.random.split(k)
            batch = replay.sample_sequences(self.buffer, buffer_state, k_sample)
            return self.agent.update(state, batch, k_update)

        shapes = jax.eval_shape(one, agent_state, key)[1]
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), shapes)

        def body(i, carry):
            state, sums = carry
            state, metrics = one(state, jax.random.fold_in(key, i))
            return state, jax.tree.map(lambda a, m: a + m.astype(jnp.float32), sums, metrics)

        state, sums = jax.lax.fori_loop(0, num_updates, body, (agent_state, zeros))
        return state, jax.tree.map(lambda x: x / jnp.maximum(num_updates, 1), sums)

    def _num_updates(self, env_steps_before: jax.Array, env_steps: jax.Array, index: jax.Array) -> jax.Array:
        """Updates this iteration: none in the seed phase and between update periods; the burst of
        `burst_updates` when the seed phase ends (the references' behaviour, so that planning starts
        with a trained model: TD-MPC2, Hansen et al., 2024, runs seed_steps updates at its
        update-to-data ratio of 1; here seed_steps * updates_per_step); updates_per_iteration otherwise."""
        learning = (env_steps >= self.cfg.seed_steps) & (index % self.cfg.update_period == 0)
        burst = (env_steps_before < self.cfg.seed_steps) & (env_steps >= self.cfg.seed_steps)
        return jnp.where(burst & (self.cfg.burst_updates > 0), self.cfg.burst_updates,
                         jnp.where(learning, self.cfg.updates_per_iteration, 0)).astype(jnp.int32)

    def _iteration(self, carry: Carry, index: jax.Array) -> tuple[Carry, dict]:
        key, k_act, k_learn = jax.random.split(carry.key, 3)
        s = rollout.rollout_step(self.env, self._policy(carry), rollout.agent_next_carry(self.agent), carry.env,
                                 carry.act, k_act)
        buffer_state = replay.add_step(self.buffer, carry.buffer, replay.transition(s.prev, s.action, s.next, s.aux))
        env_steps = carry.env_steps + self.cfg.num_envs

        num_updates = self._num_updates(carry.env_steps, env_steps, index)
        agent_state, metrics = self._learn(carry.agent, buffer_state, k_learn, num_updates)
        metrics = {**metrics, "_weight": (num_updates > 0).astype(jnp.float32)}
        progress.maybe_report(index, env_steps, self.cfg.progress_every)
        new = carry.replace(agent=agent_state, env=s.next, buffer=buffer_state, act=s.act_carry, key=key,
                            env_steps=env_steps, updates=carry.updates + num_updates)
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
        """`eval_episodes` episodes in parallel in eval mode; see `rollout.evaluate_episodes`."""
        return rollout.evaluate_episodes(self.env, self.agent, agent_state, key, self.cfg.eval_episodes)
