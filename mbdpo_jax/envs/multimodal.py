"""Pure-JAX multimodal toy envs (registered in the toy/ family), after the DA-MDP paper's toy tasks
(arXiv 2512.02019, sanokows/Diffusion-Augmented-Markov-Decision-Processes): several equally good
actions separated by worse ones, so a policy that keeps every mode differs visibly from one that
collapses to a single mode.

- toy/gmm-bandit: a one-step episode (it terminates after every action) with a constant
  observation [1]; 1-D action a in [-1, 1] and reward log p(a) of a 4-component Gaussian mixture,
  equal weights, means -0.6, -0.2, 0.2, 0.6, std 0.08 (the reference's TurningGMM rewards
  log p(a) of a mixture as well). With reward log p and entropy weight 1 the max-entropy optimum is
  p itself.
- toy/double-well: the reference's TurningDoubleWell: a walker on the plane whose 1-D action turns
  its heading by a * 90 degrees; the reward depends on the turn only, 1 at +-45 degrees, the
  barrier 0.85 at 0 and 0 at +-90 (the reference's piecewise profile in u = (turn / 90)^2). As in the
  reference's default the transition snaps the turn to +-45 (its sign), so headings stay multiples
  of 45 degrees; the observation is the heading (cos, sin), starting at 0 (fixed, unlike the
  reference's random start, so the start state is one state). 25-step episodes (reference 100-200).
- toy/multi-well: TurningMultiWell's four wells: the same walker with turn reward
  max_w max(0, 1 - (1 - 0.85) ((turn - w) / 22.5)^2) over wells w at +-22.5 and +-67.5 degrees, so
  each well peaks at 1 and the barriers between wells (0 and +-45 degrees) are 0.85; the transition
  snaps the turn to the nearest well. 25-step episodes.

Each env class holds `MODE_BOXES`: the axis-aligned action boxes [num_modes, action_size, 2] that
`analysis.modes.mode_coverage` counts actions in (one box per optimal mode, lower bound inclusive,
upper exclusive; the outer bounds are infinite). toy/multigoal's boxes (the quadrant of the first
action, i.e. the initial heading) are `MULTIGOAL_MODE_BOXES`. These are raw envs (see wrappers.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mbdpo_jax.envs.base import EnvSpec, EnvState
from mbdpo_jax.envs.wrappers import initial_state

INF = math.inf


def boxes_1d(edges: tuple[float, ...]) -> np.ndarray:
    """Boxes [len(edges) + 1, 1, 2] of a 1-D action split at the increasing `edges` (outer ends infinite)."""
    bounds = (-INF,) + tuple(edges) + (INF,)
    return np.array([[[lo, hi]] for lo, hi in zip(bounds[:-1], bounds[1:])], np.float64)


MULTIGOAL_MODE_BOXES = np.array([[[0, INF], [0, INF]], [[0, INF], [-INF, 0]],
                                 [[-INF, 0], [0, INF]], [[-INF, 0], [-INF, 0]]], np.float64)
"""toy/multigoal's modes: the quadrant of the first action at the start, in the order of its goals
(+1, +1), (+1, -1), (-1, +1), (-1, -1)."""


class GMMBandit:
    """One-step bandit with reward log p(a), p a 4-component 1-D Gaussian mixture (equal weights)."""

    means = (-0.6, -0.2, 0.2, 0.6)
    std = 0.08
    MODE_BOXES = boxes_1d((-0.4, 0.0, 0.4))
    PEAK_BOXES = np.stack([np.array(means) - std, np.array(means) + std], axis=-1)[:, None, :]
    """+-1 std around each mean: a uniform policy on [-1, 1] puts 8% of its actions in each, p itself 17%."""

    def __init__(self, name: str = "toy/gmm-bandit"):
        self.spec = EnvSpec(name, obs_size=1, action_size=1, episode_length=1, terminates=True)

    def log_density(self, a: jax.Array) -> jax.Array:
        """log p(a) of the mixture at scalar actions a [...]."""
        means = jnp.asarray(self.means, jnp.result_type(a, float))
        z = (a[..., None] - means) / self.std
        log_n = -0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi))
        return jax.scipy.special.logsumexp(log_n, axis=-1) - math.log(len(self.means))

    def reset(self, key: jax.Array) -> EnvState:
        """The constant observation [1]."""
        keep, _ = jax.random.split(key)
        obs = jnp.ones((1,))
        return initial_state(jnp.zeros(()), obs, keep)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Reward log p(clip(a, -1, 1)); the episode terminates."""
        a = jnp.clip(jnp.asarray(action, state.obs.dtype)[0], -1.0, 1.0)
        reward = self.log_density(a).astype(state.reward.dtype)
        return state.replace(reward=reward, done=jnp.ones_like(state.done))


class _TurningWalker:
    """A walker on the plane with heading turns of a * max_turn degrees; subclasses give the turn reward and the
    turn the transition snaps to. inner = {"pos" [2], "angle" []}; obs = (cos, sin) of the heading."""

    max_turn_deg = 90.0
    step_size = 1.0
    episode_length = 25

    def __init__(self, name: str):
        self.spec = EnvSpec(name, obs_size=2, action_size=1, episode_length=self.episode_length)

    @staticmethod
    def _obs(angle: jax.Array) -> jax.Array:
        return jnp.stack([jnp.cos(angle), jnp.sin(angle)])

    def reset(self, key: jax.Array) -> EnvState:
        """At the origin, heading 0."""
        keep, _ = jax.random.split(key)
        angle = jnp.zeros(())
        inner = {"pos": jnp.zeros((2,)), "angle": angle}
        return initial_state(inner, self._obs(angle), keep)

    def turn_reward(self, turn_deg: jax.Array) -> jax.Array:
        raise NotImplementedError

    def snapped_turn(self, turn_deg: jax.Array) -> jax.Array:
        raise NotImplementedError

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Reward of the turn a * 90 degrees; the heading turns by the snapped turn and the walker moves one step."""
        a = jnp.clip(jnp.asarray(action, state.obs.dtype)[0], -1.0, 1.0)
        turn = a * self.max_turn_deg
        reward = self.turn_reward(turn).astype(state.reward.dtype)
        angle = state.inner["angle"] + jnp.deg2rad(self.snapped_turn(turn))
        angle = (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi
        obs = self._obs(angle)
        inner = {"pos": state.inner["pos"] + self.step_size * obs, "angle": angle}
        return state.replace(inner=inner, obs=obs, reward=reward, done=jnp.zeros_like(state.done))


class DoubleWell(_TurningWalker):
    """TurningDoubleWell: turn reward 1 at +-45 degrees, barrier 0.85 at 0, 0 at +-90."""

    well_deg = 45.0
    barrier = 0.85
    MODE_BOXES = boxes_1d((0.0,))

    def __init__(self, name: str = "toy/double-well"):
        super().__init__(name)

    def turn_reward(self, turn_deg: jax.Array) -> jax.Array:
        """The reference's profile in u = (turn / 90)^2, peak at u_p = (45 / 90)^2: below it
        b + (1 - b)(1 - (1 - u / u_p)^2), above it 1 - ((u - u_p) / (1 - u_p))^2."""
        u = jnp.square(jnp.clip(turn_deg, -90.0, 90.0) / 90.0)
        peak = (self.well_deg / 90.0) ** 2
        left = self.barrier + (1.0 - self.barrier) * (1.0 - (1.0 - jnp.clip(u / peak, 0.0, 1.0)) ** 2)
        right = 1.0 - jnp.clip((u - peak) / (1.0 - peak), 0.0, 1.0) ** 2
        return jnp.where(u <= peak, left, right)

    def snapped_turn(self, turn_deg: jax.Array) -> jax.Array:
        return jnp.where(turn_deg >= 0, self.well_deg, -self.well_deg)


class MultiWell(_TurningWalker):
    """TurningMultiWell: four wells of reward 1 at +-22.5 and +-67.5 degrees, barriers 0.85 between them."""

    wells_deg = (-67.5, -22.5, 22.5, 67.5)
    half_width = 22.5
    barrier = 0.85
    MODE_BOXES = boxes_1d((-0.5, 0.0, 0.5))

    def __init__(self, name: str = "toy/multi-well"):
        super().__init__(name)

    def turn_reward(self, turn_deg: jax.Array) -> jax.Array:
        wells = jnp.asarray(self.wells_deg, turn_deg.dtype)
        d = (turn_deg[..., None] - wells) / self.half_width
        return jnp.max(jnp.maximum(0.0, 1.0 - (1.0 - self.barrier) * d**2), axis=-1)

    def snapped_turn(self, turn_deg: jax.Array) -> jax.Array:
        wells = jnp.asarray(self.wells_deg, turn_deg.dtype)
        return wells[jnp.argmin(jnp.abs(turn_deg - wells))]


BUILDERS = {"gmm-bandit": GMMBandit, "double-well": DoubleWell, "multi-well": MultiWell}

MODE_BOXES: dict[str, np.ndarray] = {
    "toy/multigoal": MULTIGOAL_MODE_BOXES,
    **{f"toy/{task}": cls.MODE_BOXES for task, cls in BUILDERS.items()},
}
"""Mode boxes per multimodal env name (see the module docstring)."""

PEAK_BOXES: dict[str, np.ndarray] = {"toy/gmm-bandit": GMMBandit.PEAK_BOXES}
"""Narrow boxes around each mode's peak, where a policy that spreads evenly over the modes without
resolving them can be told from one that keeps them (only the bandit's peaks are narrow)."""
