"""The multimodal toy envs: reward maxima at the stated modes, episode lengths and terminations, the mode
boxes, and reset/step under jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax import envs
from mbdpo_jax.analysis.modes import mode_coverage
from mbdpo_jax.envs.multimodal import MODE_BOXES, DoubleWell, GMMBandit, MultiWell
from mbdpo_jax.envs.toy import MultiGoal

GRID = jnp.linspace(-1.0, 1.0, 2001)[:, None]  # actions, step 0.001


def rewards(name, actions=GRID):
    env = envs.make(name)
    state = env.reset(jax.random.PRNGKey(0))
    return np.asarray(jax.jit(jax.vmap(env.step, in_axes=(None, 0)))(state, actions).reward)


def local_maxima(r):
    inner = (r[1:-1] > r[:-2]) & (r[1:-1] >= r[2:])
    return np.asarray(GRID[1:-1, 0])[inner]


def test_gmm_bandit_rewards_log_density_peaks_at_the_four_means_and_terminates_every_step():
    r = rewards("toy/gmm-bandit")
    np.testing.assert_allclose(local_maxima(r), GMMBandit.means, atol=2e-3)
    peaks = r[np.searchsorted(np.asarray(GRID[:, 0]), np.array(GMMBandit.means) - 1e-6)]
    np.testing.assert_allclose(peaks, peaks[0], atol=1e-3)  # equally good modes
    # log p integrates p to 1 over the real line (the mixture lies well inside [-1, 1])
    assert float(np.sum(np.exp(r)) * 0.001) == pytest.approx(1.0, abs=1e-3)
    env = envs.make("toy/gmm-bandit")
    assert env.spec.episode_length == 1 and env.spec.terminates
    state = env.step(env.reset(jax.random.PRNGKey(0)), jnp.array([0.25]))
    assert float(state.done) == 1.0 and float(state.truncation) == 0.0 and int(state.episodes_done) == 1
    np.testing.assert_array_equal(np.asarray(state.obs), [1.0])


@pytest.mark.parametrize("name, wells, barrier", [("toy/double-well", (-0.5, 0.5), 0.85),
                                                  ("toy/multi-well", (-0.75, -0.25, 0.25, 0.75), 0.85)])
def test_turning_wells_peak_at_one_at_the_wells_with_barriers_between(name, wells, barrier):
    """Turns of a * 90 degrees: wells at +-45 (double) or +-22.5, +-67.5 degrees (multi) reward 1, the
    barriers between wells 0.85."""
    r = rewards(name)
    np.testing.assert_allclose(local_maxima(r), wells, atol=2e-3)
    assert r.max() == pytest.approx(1.0, abs=1e-5)
    grid = np.asarray(GRID[:, 0])
    for lo, hi in zip(wells[:-1], wells[1:]):
        between = (grid > lo) & (grid < hi)
        assert r[between].min() == pytest.approx(barrier, abs=1e-3)
    if name == "toy/double-well":  # the reference's profile: 0 at +-90 degrees
        assert r[0] == pytest.approx(0.0, abs=1e-6) and r[-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["toy/double-well", "toy/multi-well"])
def test_turning_walker_snaps_turns_to_the_wells_and_truncates_after_25_steps(name):
    env = envs.make(name)
    assert env.spec.episode_length == 25 and not env.spec.terminates
    state = env.reset(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(state.obs), [1.0, 0.0])
    step = jax.jit(env.step)
    snapped = 45.0 if name == "toy/double-well" else 22.5
    state = step(state, jnp.array([0.1]))  # a 9 degree turn snaps to the nearest well
    np.testing.assert_allclose(np.asarray(state.obs), [np.cos(np.deg2rad(snapped)), np.sin(np.deg2rad(snapped))],
                               atol=1e-6)
    for _ in range(24):
        state = step(state, jnp.array([0.5]))
    assert float(state.truncation) == 1.0 and float(state.done) == 0.0 and int(state.last_length) == 25


@pytest.mark.parametrize("name", sorted(MODE_BOXES))
def test_envs_jit_and_vmap_and_every_well_lies_in_its_own_mode_box(name):
    env = envs.make(name)
    states = jax.jit(lambda k: envs.reset_batch(env, k, 5))(jax.random.PRNGKey(1))
    actions = jnp.zeros((5, env.spec.action_size))
    nxt = jax.jit(lambda s, a: envs.step_batch(env, s, a))(states, actions)
    assert nxt.obs.shape == (5, env.spec.obs_size) and np.all(np.isfinite(np.asarray(nxt.reward)))
    boxes = MODE_BOXES[name]
    assert boxes.shape[1:] == (env.spec.action_size, 2)
    if env.spec.action_size == 1:
        centres = {"toy/gmm-bandit": GMMBandit.means, "toy/double-well": (-0.5, 0.5),
                   "toy/multi-well": tuple(w / 90.0 for w in MultiWell.wells_deg)}[name]
        counts, reached = mode_coverage(np.array(centres)[:, None], boxes, min_fraction=0.0)
        np.testing.assert_array_equal(np.asarray(counts), np.ones(len(centres)))
    else:  # toy/multigoal: the quadrant of the first action, in the order of the goals
        counts, _ = mode_coverage(np.array(MultiGoal.goals) * 0.5, boxes)
        np.testing.assert_array_equal(np.asarray(counts), np.ones(4))
    assert DoubleWell.barrier == 0.85
