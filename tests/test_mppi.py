"""MPPI planner on objectives with a known optimum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.planners import mppi


def _quadratic(target):
    return lambda actions: -jnp.sum((actions - target) ** 2, axis=(1, 2))


def test_mppi_beats_random_search_on_a_quadratic():
    """With the same number of objective evaluations, MPPI's plan is far closer to the optimum than
    the best of uniformly random sequences."""
    horizon, action_size = 3, 4
    cfg = mppi.MPPIConfig(horizon=horizon, iterations=6, num_samples=64, num_elites=8, num_pi_trajs=0)
    budget = cfg.iterations * cfg.num_samples
    mppi_err, random_err = [], []
    for seed in range(5):
        k_t, k_p, k_r = jax.random.split(jax.random.PRNGKey(seed), 3)
        target = jax.random.uniform(k_t, (horizon, action_size), minval=-0.8, maxval=0.8)
        f = _quadratic(target)
        _, mean, _ = mppi.plan(k_p, f, jnp.zeros((0, horizon, action_size)), jnp.zeros((horizon, action_size)),
                               cfg, eval_mode=True)
        mppi_err.append(float(-f(mean[None])[0]))
        rand = jax.random.uniform(k_r, (budget, horizon, action_size), minval=-1, maxval=1)
        random_err.append(float(-f(rand).max()))
    assert np.mean(mppi_err) < 0.2 * np.mean(random_err), (mppi_err, random_err)


def test_prior_trajectories_are_used():
    """If a prior sequence is exactly optimal, the plan's first action matches it."""
    target = jnp.full((3, 2), 0.3)
    cfg = mppi.MPPIConfig(iterations=2, num_samples=16, num_elites=4, num_pi_trajs=4, temperature=50.0)
    prior = jnp.broadcast_to(target, (4, 3, 2))
    action, _, _ = mppi.plan(jax.random.PRNGKey(0), _quadratic(target), prior, jnp.zeros((3, 2)), cfg, True)
    np.testing.assert_allclose(action, target[0], atol=1e-5)


def test_warm_start_shift_and_reset():
    """The warm start moves one step forward with a zero tail, and is zero after an episode ends."""
    mean = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(mppi.shift_warm_start(mean, jnp.array(False)), [[2, 3], [4, 5], [0, 0]])
    np.testing.assert_array_equal(mppi.shift_warm_start(mean, jnp.array(True)), np.zeros((3, 2)))


def test_invalid_planner_settings_are_rejected():
    """More elites than samples is a clear error naming the setting."""
    with pytest.raises(ValueError, match="num_elites=100"):
        mppi.MPPIConfig(num_samples=10, num_elites=100).validate()
