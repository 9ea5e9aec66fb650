"""The diffusion-augmented MDP of DA-MDP (arXiv 2512.02019) as a transformation of any `Env`.

An augmented state is (s, x_t, t), t = 0..K-1; its action is the next latent x_{t+1} (unbounded, not
in [-1, 1]). K augmented steps make one env step:

    t + 1 < K:  x <- action, t <- t + 1; the env state is unchanged; reward 0, done = truncation = 0
    t + 1 = K:  the env steps with clip(tanh(action), -0.999, 0.999); a fresh x_0 ~ N(0, sigma_0^2 I)
                is drawn and t <- 0; reward, done, truncation and final_obs are the env step's

Observation: concat(s, x_t, one_hot(t, K)) of size obs_size + action_size + K (`split_obs` undoes it).
The wrapped env should come from `mbdpo_jax.envs.make` (auto-reset keeping the final observation): at
an episode end the augmented obs holds the new episode's s and final_obs the finished one's, both
with the fresh x_0 and t = 0. The bookkeeping fields (step_count, episode_return, episode_length,
last_return, last_length, episodes_done) are the env's, so they count real env steps and env reward;
`inner.env_steps` counts real env steps since reset.

Soft rewards (one reading, see `soft_rewards`): the augmented step that takes x_t -> x_{t+1} earns
-alpha (log pi(x_{t+1}|x_t, s) - log q(x_t|x_{t+1})), and the last step also the env reward; over one
env step they sum to r + alpha * entropy_estimate.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from mbdpo_jax.envs.base import Env, EnvState

ACTION_CLIP = 0.999  # the env acts with clip(tanh(x_K), +-0.999) (reference)


@struct.dataclass
class AugmentedInner:
    """`EnvState.inner` of the augmented env: the wrapped env's state, the latent x_t [A], the
    denoising step t (int32) and the real env steps taken since reset (int32)."""

    env: EnvState
    x: jax.Array
    t: jax.Array
    env_steps: jax.Array


class DiffusionAugmented:
    """K augmented steps per step of `env` (see the module docstring); jit/vmap/scan-safe."""

    def __init__(self, env: Env, steps: int = 8, sigma_0: float = 3.0):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"invalid diffusion-augmented setting steps={steps!r}; allowed: an integer >= 1")
        if not sigma_0 > 0:
            raise ValueError(f"invalid diffusion-augmented setting sigma_0={sigma_0!r}; allowed: > 0")
        self.env = env
        self.steps = steps
        self.sigma_0 = float(sigma_0)
        spec = env.spec
        self.spec = dataclasses.replace(
            spec, name=f"{spec.name}+da{steps}", obs_size=spec.obs_size + spec.action_size + steps,
            episode_length=spec.episode_length * steps,
            task_episode_lengths=None if spec.task_episode_lengths is None
            else tuple(n * steps for n in spec.task_episode_lengths),
        )

    def split_obs(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(s, x_t, t) of augmented observations [..., obs_size]; t as int32."""
        n, a = self.env.spec.obs_size, self.env.spec.action_size
        return obs[..., :n], obs[..., n:n + a], jnp.argmax(obs[..., n + a:], axis=-1).astype(jnp.int32)

    def _obs(self, s: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
        return jnp.concatenate([s, x.astype(s.dtype), jax.nn.one_hot(t, self.steps, dtype=s.dtype)])

    def _prior(self, key: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return (self.sigma_0 * jax.random.normal(key, (self.env.spec.action_size,))).astype(dtype)

    def _wrap(self, env_state: EnvState, x: jax.Array, t: jax.Array, env_steps: jax.Array,
              key: jax.Array, obs: jax.Array, final_obs: jax.Array) -> EnvState:
        return env_state.replace(
            inner=AugmentedInner(env_state, x, t, env_steps), obs=obs, final_obs=final_obs, key=key)

    def reset(self, key: jax.Array) -> EnvState:
        """Reset the env and draw x_0 ~ N(0, sigma_0^2 I), t = 0."""
        env_key, prior_key, keep = jax.random.split(key, 3)
        env_state = self.env.reset(env_key)
        x = self._prior(prior_key, env_state.obs.dtype)
        t = jnp.zeros((), jnp.int32)
        obs = self._obs(env_state.obs, x, t)
        return self._wrap(env_state, x, t, jnp.zeros((), jnp.int32), keep, obs, obs)

    def advance_latent(self, state: EnvState, action: jax.Array) -> EnvState:
        """An intermediate step (t + 1 < K): x <- action, t <- t + 1, env untouched, reward 0, no end."""
        inner = state.inner
        x = jnp.asarray(action, inner.x.dtype)
        t = inner.t + 1
        obs = self._obs(inner.env.obs, x, t)
        zero = jnp.zeros_like(state.reward)
        nxt = self._wrap(inner.env, x, t, inner.env_steps, state.key, obs, obs)
        return nxt.replace(reward=zero, done=jnp.zeros_like(state.done),
                           truncation=jnp.zeros_like(state.truncation))

    def advance_env(self, state: EnvState, action: jax.Array) -> EnvState:
        """The last step (t + 1 = K): the env steps with clip(tanh(action)), a fresh x_0, t <- 0."""
        inner = state.inner
        key, prior_key = jax.random.split(state.key)
        env_state = self.env.step(inner.env, jnp.clip(jnp.tanh(action), -ACTION_CLIP, ACTION_CLIP))
        x = self._prior(prior_key, inner.x.dtype)
        t = jnp.zeros_like(inner.t)
        obs = self._obs(env_state.obs, x, t)
        final_obs = self._obs(env_state.final_obs, x, t)
        return self._wrap(env_state, x, t, inner.env_steps + 1, key, obs, final_obs)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One augmented step (`advance_latent` or `advance_env` by t). Under vmap `lax.cond` becomes a
        select, so the env is evaluated on every step; a rollout that knows t (all envs share it)
        can call the two methods directly to pay for the env once per K steps."""
        last = state.inner.t + 1 >= self.steps
        return jax.lax.cond(last, self.advance_env, self.advance_latent, state, action)


def soft_rewards(env_reward: jax.Array, log_pi: jax.Array, log_q: jax.Array, is_last: jax.Array,
                 alpha: jax.Array | float) -> jax.Array:
    """Per augmented step: where(is_last, env_reward, 0) - alpha * sg(log pi - log q).

    log_pi / log_q are those of the step's own action x_t -> x_{t+1}: log pi(x_{t+1}|x_t, s) and
    log q(x_t|x_{t+1}). Intermediate steps earn -alpha (log pi - log q) (DA-MDP's intermediate reward);
    the last step earns the env reward plus its own soft term, so one env step's K rewards sum to
    r + alpha * entropy_estimate. The reference REPPO writes r - gamma alpha sg(log pi - log q) with
    the *next* augmented action's log-ratio (SAC's placement): the same terms shifted one step later
    and discounted once; pass shifted log-probs and gamma * alpha to get it. The log-ratio is
    stop-gradiented (rewards are data); shapes broadcast elementwise.
    """
    ratio = jax.lax.stop_gradient(log_pi - log_q)
    return jnp.where(is_last, env_reward, jnp.zeros_like(env_reward)) - alpha * ratio


def entropy_estimate(log_pi: jax.Array, log_q: jax.Array) -> jax.Array:
    """-sum_t (log pi - log q) over the last axis (the K steps of one chain).

    With p the chain's joint and x_K its last latent, E[log p(x_{0:K}) - log q(x_{0:K-1}|x_K)] >=
    E[log p(x_K)] (Jensen; gap E KL(p(x_{0:K-1}|x_K) || q(x_{0:K-1}|x_K))), so
        H(x_K) >= H(N(0, sigma_0^2 I)) + E[entropy_estimate],
    an ELBO-style lower bound on the pre-tanh action entropy up to the prior's constant entropy. The
    tanh's log-Jacobian E[sum log(1 - tanh(x_K)^2)] is not included (nor is it in the reference).
    """
    return -jnp.sum(log_pi - log_q, axis=-1)
