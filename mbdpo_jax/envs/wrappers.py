"""Generic wrappers that turn a raw env into the `Env` that `make` returns.

A *raw* env has the same interface as `Env` (spec, reset, step) but never resets itself and leaves
the bookkeeping fields of `EnvState` (step_count, episode statistics) alone. Its `step` sets
`inner`, `obs`, `reward` and `done` (termination) and nothing else that matters here.

`make` stacks the wrappers as AutoReset(TimeLimit(ActionRepeat(raw))). Every wrapper is written
with `jnp.where` selects and `lax.scan`, never Python control flow on traced values, so the
wrapped functions jit, vmap, scan and differentiate.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.envs.base import Env, EnvSpec, EnvState


def strip_weak_type(tree: Any) -> Any:
    """Return `tree` with every array leaf made strongly typed (same dtype).

    Weakly typed leaves (from Python scalars) would otherwise make reset and step states differ
    in type, which breaks `lax.scan` carries and causes recompiles.
    """

    def strong(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        return x.astype(x.dtype) if x.weak_type else x

    return jax.tree.map(strong, tree)


def initial_state(inner: Any, obs: jax.Array, key: jax.Array) -> EnvState:
    """Build the `EnvState` of a freshly reset episode (all statistics zero).

    Float statistics take the dtype of `obs` so that float64 toy envs stay float64 under x64.
    """
    obs = jnp.asarray(obs)
    zero = jnp.zeros((), obs.dtype)
    count = jnp.zeros((), jnp.int32)
    return EnvState(
        inner=inner, obs=obs, reward=zero, done=zero, truncation=zero, final_obs=obs,
        step_count=count, episode_return=zero, episode_length=count, last_return=zero,
        last_length=count, episodes_done=count, key=key,
    )


def select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise `jnp.where(pred, on_true, on_false)` over two pytrees of equal structure.

    `pred` is a scalar (per env under vmap); the result keeps the dtypes of `on_false`.
    """

    def pick(t: jax.Array, f: jax.Array) -> jax.Array:
        out = jnp.where(pred, t, f)
        return out if out.dtype == f.dtype else out.astype(f.dtype)

    return jax.tree.map(pick, on_true, on_false)


def actuator_range(mj_model: Any) -> np.ndarray:
    """Control range per actuator of a `mujoco.MjModel` ([nu, 2]); unlimited ones are [-1, 1]."""
    limited = np.asarray(mj_model.actuator_ctrllimited, bool)[:, None]
    return np.where(limited, mj_model.actuator_ctrlrange, np.array([-1.0, 1.0]))


def flat_obs_size(name: str, reset: Callable[[jax.Array], Any]) -> int:
    """Observation size of a backend's `reset` (traced abstractly, nothing runs or compiles).

    Raises ValueError naming the env if the observation is a dict (pixels, privileged state).
    """
    obs = jax.eval_shape(reset, jax.random.PRNGKey(0)).obs
    if isinstance(obs, dict) or not hasattr(obs, "shape") or len(obs.shape) != 1:
        raise ValueError(f"{name}: only flat array observations are supported, got {obs}")
    return int(obs.shape[0])


def rescale_action(ctrl_range: np.ndarray) -> Callable[[jax.Array], jax.Array]:
    """Return a map from actions in [-1, 1] to the actuator range `ctrl_range` ([nu, 2]).

    Returns the identity when every range already is [-1, 1], so nothing is added to the graph.
    """
    low, high = np.asarray(ctrl_range, np.float32).T
    if np.allclose(low, -1.0) and np.allclose(high, 1.0):
        return lambda action: action
    center, half = (high + low) / 2.0, (high - low) / 2.0
    return lambda action: center + half * action


class BackendAdapter:
    """Raw env over a backend env whose state has `obs`, `reward` and `done` (playground, brax).

    `EnvState.inner` holds the backend's state. Actions in [-1, 1] pass through `rescale_action`
    of the actuator ranges; the backend's `done` is termination, and so is a non-finite observation
    or reward (diverged physics), whose reward counts 0: brax's fall tests (`|angle| > 0.2`) are
    False for NaN, so a diverged pendulum would otherwise collect its full healthy reward.
    """

    def __init__(self, env: Any, spec: EnvSpec, ctrl_range: np.ndarray):
        self.env = env
        self.spec = spec
        self._scale = rescale_action(ctrl_range)
        # Nested jits are inlined by XLA but let JAX reuse the traced backend reset (traced three
        # times: reset, auto-reset inside step, obs size) instead of retracing MJX each time.
        self._reset = jax.jit(env.reset)
        self._step = jax.jit(env.step)

    def reset(self, key: jax.Array) -> EnvState:
        """Reset the backend env with a key split from `key`."""
        keep, sample = jax.random.split(key)
        inner = strip_weak_type(self._reset(sample))
        return initial_state(inner, inner.obs, keep)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One backend control step (its own physics substeps included)."""
        inner = strip_weak_type(self._step(state.inner, self._scale(action)))
        finite = jnp.all(jnp.isfinite(inner.obs)) & jnp.isfinite(inner.reward)
        done = jnp.maximum(inner.done.astype(state.done.dtype), (~finite).astype(state.done.dtype))
        return state.replace(inner=inner, obs=inner.obs, reward=jnp.where(finite, inner.reward, 0.0).astype(
            inner.reward.dtype), done=done)


class ActionRepeat:
    """Apply each action `repeat` times; rewards are summed until the episode terminates.

    Once a repeat terminates the episode, the remaining repeats leave the state unchanged and add
    no reward. The spec's episode_length is divided by `repeat` (it counts agent steps).
    """

    def __init__(self, env: Env, repeat: int):
        if repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self.env = env
        self.repeat = repeat
        self.spec = dataclasses.replace(
            env.spec,
            action_repeat=env.spec.action_repeat * repeat,
            episode_length=max(1, env.spec.episode_length // repeat),
        )

    def reset(self, key: jax.Array) -> EnvState:
        """Reset the wrapped env."""
        return self.env.reset(key)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Step the wrapped env `repeat` times with the same action."""
        if self.repeat == 1:
            return self.env.step(state, action)

        def body(carry: tuple[EnvState, jax.Array, jax.Array], _: None):
            current, total, ended = carry
            nxt = self.env.step(current, action)
            total = total + jnp.where(ended, 0.0, nxt.reward).astype(total.dtype)
            current = select(ended, current, nxt)
            ended = jnp.logical_or(ended, nxt.done > 0)
            return (current, total, ended), None

        start = (state, jnp.zeros_like(state.reward), jnp.zeros((), bool))
        (last, total, ended), _ = jax.lax.scan(body, start, None, length=self.repeat)
        return last.replace(reward=total, done=ended.astype(last.done.dtype))


class TimeLimit:
    """Count agent steps and set `truncation` = 1 when step_count reaches `episode_length`.

    `done` stays termination only; a step that both terminates and hits the limit reports
    done = 1, truncation = 0.
    """

    def __init__(self, env: Env, episode_length: int):
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.env = env
        self.spec = dataclasses.replace(env.spec, episode_length=episode_length)

    def reset(self, key: jax.Array) -> EnvState:
        """Reset the wrapped env with step_count = 0."""
        state = self.env.reset(key)
        return state.replace(step_count=jnp.zeros_like(state.step_count))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Step the wrapped env and flag truncation at the time limit."""
        nxt = self.env.step(state, action)
        count = state.step_count + 1
        hit = jnp.logical_and(count >= self.spec.episode_length, nxt.done <= 0)
        return nxt.replace(step_count=count, truncation=hit.astype(nxt.done.dtype))


class AutoReset:
    """Reset as soon as an episode ends (done or truncation), keeping the final observation.

    On the step that ends an episode the returned state has `obs` = first observation of the new
    episode, `final_obs` = last observation of the finished one, `reward`/`done`/`truncation` of
    the finishing transition, and last_return/last_length/episodes_done updated. The reset key is
    split from `state.key`.
    """

    def __init__(self, env: Env):
        self.env = env
        self.spec = env.spec

    def reset(self, key: jax.Array) -> EnvState:
        """Reset the wrapped env."""
        return self.env.reset(key)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Step the wrapped env, update episode statistics and reset if the episode ended."""
        nxt = self.env.step(state, action)
        ret = state.episode_return + nxt.reward
        length = state.episode_length + 1
        ended = jnp.logical_or(nxt.done > 0, nxt.truncation > 0)
        key, reset_key = jax.random.split(state.key)
        running = nxt.replace(
            final_obs=nxt.obs, episode_return=ret, episode_length=length,
            last_return=state.last_return, last_length=state.last_length,
            episodes_done=state.episodes_done, key=key,
        )
        fresh = self.env.reset(reset_key)
        restarted = fresh.replace(
            reward=nxt.reward, done=nxt.done, truncation=nxt.truncation, final_obs=nxt.obs,
            episode_return=jnp.zeros_like(ret), episode_length=jnp.zeros_like(length),
            last_return=ret, last_length=length, episodes_done=state.episodes_done + 1, key=key,
        )
        return select(ended, restarted, running)


def wrap(env: Env, action_repeat: int = 1, episode_length: int | None = None) -> Env:
    """Stack AutoReset(TimeLimit(ActionRepeat(env))); episode_length counts agent steps."""
    repeated = ActionRepeat(env, action_repeat)
    limit = repeated.spec.episode_length if episode_length is None else episode_length
    return AutoReset(TimeLimit(repeated, limit))


def reset_batch(env: Env, key: jax.Array, num_envs: int) -> EnvState:
    """Reset `num_envs` independent envs (vmap over split keys); jit the caller, not this."""
    return jax.vmap(env.reset)(jax.random.split(key, num_envs))


def step_batch(env: Env, states: EnvState, actions: jax.Array) -> EnvState:
    """Step a batch of envs (vmap over the leading axis of `states` and `actions`)."""
    return jax.vmap(env.step)(states, actions)
