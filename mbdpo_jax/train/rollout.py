"""The rollout step, written once: act for all envs -> step them -> auto-reset bookkeeping.

Training, evaluation and dataset collection all advance their envs with `rollout_step`; they differ
only in the batched policy they pass (planner in training or eval mode, random actions, noise).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.envs import reset_batch, step_batch
from mbdpo_jax.envs.base import Env, EnvState

# policy(obs [n, O], act_carry [n, ...], key) -> (actions [n, A], act carry out [n, ...], aux)
BatchedPolicy = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, dict]]
# next_carry(act carry out [n, ...], episode_started [n]) -> act carry for the next step
NextCarry = Callable[[Any, jax.Array], Any]


@struct.dataclass
class Step:
    """One rollout step of n envs: the states before and after, the actions and the policy's aux."""

    prev: EnvState
    next: EnvState
    action: jax.Array
    aux: dict
    act_carry: Any  # for the next step
    episode_started: jax.Array  # [n] bool: the next state begins a new episode (auto-reset)


def rollout_step(env: Env, policy: BatchedPolicy, next_carry: NextCarry, env_state: EnvState, act_carry: Any,
                 key: jax.Array) -> Step:
    """Act with `policy`, step every env (auto-reset keeps `final_obs`), advance the act carry."""
    actions, carry_out, aux = policy(env_state.obs, act_carry, key)
    nxt = step_batch(env, env_state, actions)
    started = jnp.maximum(nxt.done, nxt.truncation) > 0
    return Step(env_state, nxt, actions, aux, next_carry(carry_out, started), started)


def agent_policy(agent: Any, agent_state: Any, eval_mode: bool) -> BatchedPolicy:
    """The agent's `act` vmapped over envs, one key per env."""
    def policy(obs: jax.Array, act_carry: Any, key: jax.Array):
        keys = jax.random.split(key, obs.shape[0])
        return jax.vmap(lambda o, c, k: agent.act(agent_state, o, c, k, eval_mode))(obs, act_carry, keys)

    return policy


def agent_next_carry(agent: Any) -> NextCarry:
    return jax.vmap(agent.next_act_carry)


def initial_carries(agent: Any, n: int) -> Any:
    """The agent's initial act carry broadcast over n envs."""
    carry0 = agent.initial_act_carry()
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), carry0)


EVAL_AUX_MEANS = ("prior_divergence", "incoherence")
"""Per-step aux entries of an agent's eval-mode act that `evaluate_episodes` averages into 'eval_<name>':
the latent planners' planner-vs-prior divergence, and the learned policy's sampled incoherence against
its own critic (tdmpc2, mbdpo, pwm; `analysis.deep_incoherence`)."""


def evaluate_episodes(env: Env, agent: Any, agent_state: Any, key: jax.Array, num_episodes: int
                      ) -> dict[str, jax.Array]:
    """`num_episodes` episodes in parallel, acting in eval mode (no exploration noise).

    Returns 'eval_return' (mean undiscounted return of the first episode of each env) and, for each aux
    entry of `EVAL_AUX_MEANS` that the agent's act reports, 'eval_<name>': its mean over all envs and
    steps of the evaluation.
    """
    n = num_episodes
    k_reset, k_run = jax.random.split(key)
    policy, next_carry = agent_policy(agent, agent_state, True), agent_next_carry(agent)
    init = (reset_batch(env, k_reset, n), initial_carries(agent, n), jnp.zeros(n), jnp.zeros(n))

    def step(carry, k):
        env_state, act_carry, returns, finished = carry
        s = rollout_step(env, policy, next_carry, env_state, act_carry, k)
        returns = returns + s.next.reward * (1.0 - finished)
        ended = jnp.maximum(s.next.done, s.next.truncation)
        means = {f"eval_{name}": s.aux[name].mean() for name in EVAL_AUX_MEANS if name in s.aux}
        return (s.next, s.act_carry, returns, jnp.maximum(finished, ended)), means

    (_, _, returns, _), means = jax.lax.scan(step, init, jax.random.split(k_run, env.spec.episode_length))
    return {"eval_return": returns.mean(), **jax.tree.map(jnp.mean, means)}
