"""Pure-JAX toy envs: cheap, differentiable, actions in [-1, 1].

- toy/pendulum: gym's Pendulum-v1 dynamics and reward (torque = 2 * action), 200-step episodes.
- toy/point-mass: a damped 2-D point pushed by a force towards a goal sampled at reset; reward is
  minus the (smoothed) distance to the goal, 100-step episodes.
- toy/multigoal: a 2-D point that starts near the origin and moves with velocity = action; four
  equally rewarding Gaussian goals at (+-1, +-1), 50-step episodes. A multimodal test bed.
- toy/gmm-bandit, toy/double-well, toy/multi-well: the multimodal tasks of `envs.multimodal`.

These are raw envs (see wrappers.py): they never reset themselves or terminate. Computations
follow the default float dtype, so under `jax.enable_x64(True)` they run in float64. Reset
splits its key into the one kept in the state and the one used for sampling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mbdpo_jax.envs import multimodal
from mbdpo_jax.envs.base import EnvSpec, EnvState
from mbdpo_jax.envs.wrappers import initial_state


def angle_normalize(x: jax.Array) -> jax.Array:
    """Wrap an angle to [-pi, pi) (as in gym)."""
    return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum:
    """Gym Pendulum-v1: g=10, m=l=1, dt=0.05, max torque 2, max speed 8."""

    g, m, l, dt = 10.0, 1.0, 1.0, 0.05
    max_torque, max_speed = 2.0, 8.0

    def __init__(self, name: str = "toy/pendulum"):
        self.spec = EnvSpec(name, obs_size=3, action_size=1, episode_length=200,
                            differentiable=True)

    @staticmethod
    def _obs(th_thdot: jax.Array) -> jax.Array:
        th, thdot = th_thdot[0], th_thdot[1]
        return jnp.stack([jnp.cos(th), jnp.sin(th), thdot])

    def reset(self, key: jax.Array) -> EnvState:
        """th ~ U(-pi, pi), thdot ~ U(-1, 1)."""
        keep, sample = jax.random.split(key)
        high = jnp.array([jnp.pi, 1.0])
        th_thdot = jax.random.uniform(sample, (2,), minval=-high, maxval=high)
        return initial_state(th_thdot, self._obs(th_thdot), keep)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One Euler step; the reward is computed on the state before the step."""
        th, thdot = state.inner[0], state.inner[1]
        action = jnp.asarray(action, state.obs.dtype)
        u = jnp.clip(self.max_torque * action[0], -self.max_torque, self.max_torque)
        cost = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        accel = 3 * self.g / (2 * self.l) * jnp.sin(th) + 3.0 / (self.m * self.l**2) * u
        new_thdot = jnp.clip(thdot + accel * self.dt, -self.max_speed, self.max_speed)
        inner = jnp.stack([th + new_thdot * self.dt, new_thdot])
        reward = -cost.astype(state.reward.dtype)
        return state.replace(inner=inner, obs=self._obs(inner), reward=reward,
                             done=jnp.zeros_like(state.done))


class PointMass:
    """Damped 2-D point mass: v' = v + dt (gain a - damping v), p' = p + dt v'.

    Observation [position, velocity, goal] (6). Position and goal start in U(-1, 1)^2, velocity 0.
    Reward -sqrt(|p' - goal|^2 + eps^2): the distance, smoothed so its gradient exists at the goal.
    """

    dt, gain, damping, eps = 0.1, 2.0, 1.0, 1e-3

    def __init__(self, name: str = "toy/point-mass"):
        self.spec = EnvSpec(name, obs_size=6, action_size=2, episode_length=100,
                            differentiable=True)

    def reset(self, key: jax.Array) -> EnvState:
        """Sample the start position and the goal uniformly in the square [-1, 1]^2."""
        keep, sample = jax.random.split(key)
        pos, goal = jax.random.uniform(sample, (2, 2), minval=-1.0, maxval=1.0)
        inner = {"pos": pos, "vel": jnp.zeros_like(pos), "goal": goal}
        return initial_state(inner, self._obs(inner), keep)

    @staticmethod
    def _obs(inner: dict[str, jax.Array]) -> jax.Array:
        return jnp.concatenate([inner["pos"], inner["vel"], inner["goal"]])

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Semi-implicit Euler step under force gain * clip(action, -1, 1)."""
        inner = state.inner
        action = jnp.asarray(action, state.obs.dtype)
        force = self.gain * jnp.clip(action, -1.0, 1.0)
        vel = inner["vel"] + self.dt * (force - self.damping * inner["vel"])
        pos = inner["pos"] + self.dt * vel
        dist = jnp.sqrt(jnp.sum((pos - inner["goal"]) ** 2) + self.eps**2)
        inner = {"pos": pos, "vel": vel, "goal": inner["goal"]}
        reward = -dist.astype(state.reward.dtype)
        return state.replace(inner=inner, obs=self._obs(inner), reward=reward,
                             done=jnp.zeros_like(state.done))


class MultiGoal:
    """2-D point with velocity = speed * action and four goals at (+-1, +-1).

    The start is U(-0.1, 0.1)^2. Reward max_g exp(-|p' - g|^2 / (2 sigma^2)) - cost |a|^2 with
    sigma = 0.1: every goal is equally good, so optimal policies are multimodal.
    """

    dt, speed, sigma, action_cost = 0.1, 1.0, 0.1, 0.01
    goals = ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0))

    def __init__(self, name: str = "toy/multigoal"):
        self.spec = EnvSpec(name, obs_size=2, action_size=2, episode_length=50,
                            differentiable=True)

    def reset(self, key: jax.Array) -> EnvState:
        """Start near the origin."""
        keep, sample = jax.random.split(key)
        pos = jax.random.uniform(sample, (2,), minval=-0.1, maxval=0.1)
        return initial_state(pos, pos, keep)

    def goal_reward(self, pos: jax.Array) -> jax.Array:
        """Reward of being at `pos` (without the action cost): the best of the four bumps."""
        goals = jnp.asarray(self.goals, pos.dtype)
        sq = jnp.sum((pos[None, :] - goals) ** 2, axis=-1)
        return jnp.max(jnp.exp(-sq / (2 * self.sigma**2)))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Move by dt * speed * clip(action, -1, 1)."""
        a = jnp.clip(jnp.asarray(action, state.obs.dtype), -1.0, 1.0)
        pos = state.inner + self.dt * self.speed * a
        reward = self.goal_reward(pos) - self.action_cost * jnp.sum(a**2)
        return state.replace(inner=pos, obs=pos, reward=reward.astype(state.reward.dtype),
                             done=jnp.zeros_like(state.done))


_BUILDERS = {"pendulum": Pendulum, "point-mass": PointMass, "multigoal": MultiGoal, **multimodal.BUILDERS}
TASKS: tuple[str, ...] = tuple(sorted(_BUILDERS))


def build(task: str) -> tuple[object, int]:
    """Return (raw env, default action repeat) for `toy/<task>`."""
    return _BUILDERS[task](f"toy/{task}"), 1
