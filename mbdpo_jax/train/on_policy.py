"""The on-policy loop: one jitted `train_chunk` = lax.scan over iterations, each
{roll out num_envs x num_steps (vmapped act -> env step) -> agent.prepare once -> epochs x minibatches
of agent.update}.

Works with any `agents.protocols.OnPolicyAgent` (PPO, DA-MDP). The rollout goes through
`rollout.rollout_step`, so at an episode end the trajectory keeps the final observation in `next_obs`
(truncations bootstrap from it) and `done` and `truncation` stay apart. Each epoch shuffles the
flattened rollout with a fresh key and cuts it into `minibatches` equal minibatches (fixed shapes).
`batched.Carry` is the whole training state (agent, envs, key, counters), so a checkpoint is that pytree; the
host loop (`train.host`) drives it like the other regimes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mbdpo_jax.envs.base import Env, EnvState
from mbdpo_jax.train import batched, progress, rollout
from mbdpo_jax.train.batched import Carry


@dataclasses.dataclass(frozen=True)
class OnPolicyLoopConfig:
    """Static settings of the on-policy loop; num_steps, epochs and minibatches are the agent's."""

    num_envs: int
    num_steps: int  # env steps per env per rollout
    epochs: int
    minibatches: int
    steps_per_chunk: int  # env steps (all envs together) per jitted chunk
    eval_episodes: int = 10
    progress_every: int = 0  # iterations between progress reports (0: none)

    @property
    def rollout_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def iterations_per_chunk(self) -> int:
        return self.steps_per_chunk // self.rollout_size

    @property
    def minibatch_size(self) -> int:
        return self.rollout_size // self.minibatches

    def validate(self) -> None:
        """One-line error naming every bad value."""
        size = f"num_envs x num_steps = {self.num_envs} x {self.num_steps}"
        batched.check_loop_settings(
            "on-policy", self, ("num_envs", "num_steps", "epochs", "minibatches", "eval_episodes"),
            self.steps_per_chunk, self.rollout_size, size,
            lambda: [f"minibatches={self.minibatches} must divide the rollout of {size} = {self.rollout_size} samples"]
            if self.rollout_size % self.minibatches else [])


@dataclasses.dataclass(frozen=True)
class CarrylessActor:
    """An on-policy agent's `act(state, obs, key, eval_mode) -> (action, aux)` seen through the act-carry
    interface of `train.rollout` (a placeholder scalar carry), so rollouts and evaluation are shared."""

    agent: Any

    def initial_act_carry(self) -> jax.Array:
        return jnp.zeros(())

    def next_act_carry(self, carry: jax.Array, episode_started: jax.Array) -> jax.Array:
        return carry

    def act(self, state: Any, obs: jax.Array, carry: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, jax.Array, dict]:
        action, aux = self.agent.act(state, obs, key, eval_mode)
        return action, carry, aux


class OnPolicyTrainer:
    """Builds the pure functions of on-policy training for one agent and one env."""

    def __init__(self, agent: Any, env: Env, cfg: OnPolicyLoopConfig):
        cfg.validate()
        self.agent, self.env, self.cfg = agent, env, cfg
        self.actor = CarrylessActor(agent)

    def init(self, key: jax.Array) -> Carry:
        return batched.init_carry(self.agent, self.env, self.cfg.num_envs, key)

    def collect(self, agent_state: Any, env_state: EnvState, key: jax.Array) -> tuple[EnvState, dict]:
        """num_steps steps of every env with the agent's policy (training mode); returns the env state
        reached and the trajectory (see `agents.protocols.OnPolicyAgent`), leaves [num_steps, num_envs, ...]."""
        policy = rollout.agent_policy(self.actor, agent_state, False)
        next_carry = rollout.agent_next_carry(self.actor)
        act_carry = rollout.initial_carries(self.actor, self.cfg.num_envs)

        def step(state, k):
            s = rollout.rollout_step(self.env, policy, next_carry, state, act_carry, k)
            return s.next, {"obs": s.prev.obs, "action": s.action, "reward": s.next.reward, "done": s.next.done,
                            "truncation": s.next.truncation, "next_obs": s.next.final_obs, **s.aux}

        return jax.lax.scan(step, env_state, jax.random.split(key, self.cfg.num_steps))

    def minibatch_indices(self, key: jax.Array) -> jax.Array:
        """[epochs, minibatches, minibatch_size] rows of the flattened rollout: one permutation per epoch."""
        keys = jax.random.split(key, self.cfg.epochs)
        shape = (self.cfg.minibatches, self.cfg.minibatch_size)
        return jax.vmap(lambda k: jax.random.permutation(k, self.cfg.rollout_size).reshape(shape))(keys)

    def learn(self, agent_state: Any, prepared: dict, key: jax.Array) -> tuple[Any, dict]:
        """epochs x minibatches updates on the prepared rollout; metrics averaged over them."""
        flat = jax.tree.map(lambda x: x.reshape((self.cfg.rollout_size,) + x.shape[2:]), prepared)
        k_order, k_update = jax.random.split(key)
        order = self.minibatch_indices(k_order).reshape(-1, self.cfg.minibatch_size)
        keys = jax.random.split(k_update, order.shape[0])

        def step(state, xs):
            rows, k = xs
            return self.agent.update(state, jax.tree.map(lambda x: x[rows], flat), k)

        agent_state, metrics = jax.lax.scan(step, agent_state, (order, keys))
        return agent_state, jax.tree.map(jnp.mean, metrics)

    def _iteration(self, carry: Carry, index: jax.Array) -> tuple[Carry, dict]:
        key, k_collect, k_learn = jax.random.split(carry.key, 3)
        env_state, trajectory = self.collect(carry.agent, carry.env, k_collect)
        agent_state, metrics = self.learn(carry.agent, self.agent.prepare(carry.agent, trajectory), k_learn)
        env_steps = carry.env_steps + self.cfg.rollout_size
        progress.maybe_report(index, env_steps, self.cfg.progress_every)
        updates = carry.updates + self.cfg.epochs * self.cfg.minibatches
        metrics = {**metrics, "rollout_reward": jnp.mean(trajectory["reward"])}
        return Carry(agent_state, env_state, key, env_steps, updates), metrics

    def train_chunk(self, carry: Carry) -> tuple[Carry, dict]:
        """steps_per_chunk env steps; returns the new carry and chunk-averaged metrics."""
        carry, metrics = jax.lax.scan(self._iteration, carry, jnp.arange(self.cfg.iterations_per_chunk))
        averaged = jax.tree.map(jnp.mean, metrics)
        averaged["train_episode_return"] = carry.env.last_return.mean()
        return carry, averaged

    def evaluate(self, agent_state: Any, key: jax.Array) -> dict[str, jax.Array]:
        """`eval_episodes` episodes in parallel in eval mode; see `rollout.evaluate_episodes`."""
        return rollout.evaluate_episodes(self.env, self.actor, agent_state, key, self.cfg.eval_episodes)
