"""What each training regime's loop needs of an agent, in one place.

Every agent is a small object holding only static configuration (its frozen config dataclass, the
env spec, network definitions); all of its methods are pure functions of explicit state, so they
jit, vmap (over envs and seeds) and sit inside one compiled training chunk. Three regimes:

* off-policy (`OffPolicyAgent`: TD-MPC2, MBDPO, MnM): act in the env, store transitions in an
  on-device replay, update on sampled sequences of `horizon` transitions. Acting may carry state
  from one step to the next (a planner's warm start): the "act carry".
* on-policy (`OnPolicyAgent`: PPO, DA-MDP): act, collect a rollout of num_envs x num_steps,
  `prepare` it once (advantages, TD(lambda) targets, soft rewards), then `update` on minibatches for
  a few epochs (`train.on_policy`).
* first-order (`FirstOrderAgent`: SHAC): `update` differentiates through a short window of the
  environment itself and returns the env state it reached (`train.first_order`). PWM, which
  differentiates through a learned model instead, is an off-policy agent.

A batch of off-policy sequences is time-major: obs/next_obs [H, B, O], action [H, B, A],
reward/done/end [H, B] ('done' = termination, 'end' = termination or truncation), optional task [B],
plus the agent's `replay_extras`.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import jax

from mbdpo_jax.envs.base import Env, EnvState

State = Any  # the agent's state pytree (a flax.struct dataclass)
Metrics = dict[str, jax.Array]


@runtime_checkable
class OffPolicyAgent(Protocol):
    """An agent trained from replayed sequences (the off-policy loop in `train.off_policy`)."""

    horizon: int
    """Length of the replayed sequences `update` consumes."""
    batch_size: int
    """Sequences per update."""
    replay_extras: Mapping[str, tuple[int, ...]]
    """Entries of `act`'s aux stored with each transition, with their per-env shapes (empty for
    most agents). During the seed phase, when the loop acts uniformly at random, they are stored as zeros."""

    def init(self, key: jax.Array) -> State:
        """Fresh agent state."""

    def initial_act_carry(self) -> jax.Array:
        """One env's act carry at the start of an episode (e.g. a zero warm start [H, A])."""

    def act(self, state: State, obs: jax.Array, act_carry: jax.Array, key: jax.Array,
            eval_mode: bool = False) -> tuple[jax.Array, jax.Array, dict]:
        """One env's action in [-1, 1]: (action [A], act carry for `next_act_carry`, aux).

        eval_mode: act without exploration noise. aux may hold per-step diagnostics averaged at
        evaluation ('prior_divergence', 'incoherence': `train.rollout.EVAL_AUX_MEANS`) and the
        `replay_extras`.
        """

    def next_act_carry(self, act_carry: jax.Array, episode_started: jax.Array) -> jax.Array:
        """The carry for the next step, given whether a new episode starts there."""

    def update(self, state: State, batch: dict, key: jax.Array) -> tuple[State, Metrics]:
        """One learning step on a batch of replayed sequences."""


@runtime_checkable
class OnPolicyAgent(Protocol):
    """An agent trained on its own fresh rollouts (`train.on_policy`: rollouts, epochs, minibatches).

    Its class attribute `regime = "on_policy"` tells the runner to drive it with `train.on_policy`. A
    trajectory holds, time-major [num_steps, num_envs, ...]: obs (acted on), action (sent to the env),
    reward, done (termination), truncation, next_obs (the observation reached, the kept final one where
    an episode ended) and every entry of `act`'s aux. `prepare` returns per-sample entries only
    ([num_steps, num_envs, ...]); the loop flattens them and draws each minibatch as a random subset of
    rows of every entry.
    """

    regime: str
    num_steps: int
    """Env steps per env in one rollout."""
    epochs: int
    """Passes over each prepared rollout."""
    minibatches: int
    """Minibatches per pass (they partition the rollout)."""

    def init(self, key: jax.Array) -> State:
        """Fresh agent state."""

    def act(self, state: State, obs: jax.Array, key: jax.Array, eval_mode: bool = False
            ) -> tuple[jax.Array, dict]:
        """One env's action and the aux the rollout stores (log-probabilities, values, ...)."""

    def prepare(self, state: State, trajectory: dict) -> dict:
        """Per-rollout quantities computed once before the epochs (advantages, returns, soft rewards);
        trajectory leaves are [num_steps, num_envs, ...]."""

    def update(self, state: State, minibatch: dict, key: jax.Array) -> tuple[State, Metrics]:
        """One gradient step on a minibatch of the prepared rollout."""


@runtime_checkable
class FirstOrderAgent(Protocol):
    """An agent that differentiates through the environment itself (short-horizon BPTT: SHAC).

    Its class attribute `regime = "first_order"` tells the runner to drive it with `train.first_order`;
    `act` and the act carry are as in `OffPolicyAgent` (a trivial carry), so evaluation is shared.
    """

    regime: str

    def init(self, key: jax.Array) -> State:
        """Fresh agent state."""

    def initial_act_carry(self) -> jax.Array:
        """One env's act carry (a placeholder scalar)."""

    def next_act_carry(self, act_carry: jax.Array, episode_started: jax.Array) -> jax.Array:
        """The carry for the next step."""

    def act(self, state: State, obs: jax.Array, act_carry: jax.Array, key: jax.Array,
            eval_mode: bool = False) -> tuple[jax.Array, jax.Array, dict]:
        """One env's action, the act carry and aux."""

    def update(self, state: State, env: Env, env_state: EnvState, key: jax.Array
               ) -> tuple[State, EnvState, Metrics]:
        """Roll the policy through `env` from `env_state` (batched envs), backpropagate, step; returns
        the env state the window ended in. A non-finite metric stops the run (the host loop names the
        step), so agents report gradient norms as metrics."""
