"""MPPI planner (TD-MPC2's variant) on objectives with a known optimum, and its reference behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.planners import mppi


def _quadratic(target):
    return lambda actions, key: -jnp.sum((actions - target) ** 2, axis=(1, 2))


def _no_prior(key):
    raise AssertionError("prior_fn must not be called when num_pi_trajs is 0")


def _recorder():
    """A list and a function that appends its (runtime) argument to it from inside jitted code."""
    seen = []

    def record(x):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), x, ordered=True)
    return seen, record


def test_mppi_beats_random_search_on_a_quadratic():
    """With the same number of objective evaluations, MPPI's plan is far closer to the optimum than
    the best of uniformly random sequences."""
    horizon, action_size = 3, 4
    cfg = mppi.MPPIConfig(iterations=6, num_samples=64, num_elites=8, num_pi_trajs=0)
    budget = cfg.iterations * cfg.num_samples
    mppi_err, random_err = [], []
    for seed in range(5):
        k_t, k_p, k_r = jax.random.split(jax.random.PRNGKey(seed), 3)
        target = jax.random.uniform(k_t, (horizon, action_size), minval=-0.8, maxval=0.8)
        f = _quadratic(target)
        _, mean, _ = mppi.plan(k_p, f, _no_prior, jnp.zeros((horizon, action_size)), cfg, eval_mode=True)
        mppi_err.append(float(-f(mean[None], None)[0]))
        rand = jax.random.uniform(k_r, (budget, horizon, action_size), minval=-1, maxval=1)
        random_err.append(float(-f(rand, None).max()))
    assert np.mean(mppi_err) < 0.2 * np.mean(random_err), (mppi_err, random_err)


def test_prior_trajectories_are_used():
    """If a prior sequence is exactly optimal, the plan's first action matches it."""
    target = jnp.full((3, 2), 0.3)
    cfg = mppi.MPPIConfig(iterations=2, num_samples=16, num_elites=4, num_pi_trajs=4, temperature=50.0)
    prior_fn = lambda key: jnp.broadcast_to(target, (4, 3, 2))
    action, _, _ = mppi.plan(jax.random.PRNGKey(0), _quadratic(target), prior_fn, jnp.zeros((3, 2)), cfg, True)
    np.testing.assert_allclose(action, target[0], atol=1e-5)


def test_value_fn_gets_a_fresh_key_at_every_iteration():
    """Under jit, value_fn runs once per iteration, each time with a different key (so the value's random
    pair of Q heads and the prior's noise at z_H are redrawn every iteration, as in TD-MPC2)."""
    keys, record = _recorder()

    def value_fn(actions, key):
        record(key)
        return -jnp.sum(actions ** 2, axis=(1, 2))

    cfg = mppi.MPPIConfig(iterations=5, num_samples=16, num_elites=4, num_pi_trajs=0)
    jax.jit(lambda k: mppi.plan(k, value_fn, _no_prior, jnp.zeros((3, 2)), cfg))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert len(keys) == 5
    assert len({k.tobytes() for k in keys}) == 5


def test_prior_is_sampled_once_and_kept_for_all_iterations():
    """prior_fn runs once per plan (TD-MPC2 samples the prior's trajectories before iterating) and its
    sequences are the first candidates of every iteration."""
    priors, record_prior = _recorder()
    heads, record_head = _recorder()

    def prior_fn(key):
        seqs = jax.random.uniform(key, (4, 3, 2), minval=-1, maxval=1)
        record_prior(seqs)
        return seqs

    def value_fn(actions, key):
        record_head(actions[:4])
        return -jnp.sum(actions ** 2, axis=(1, 2))

    cfg = mppi.MPPIConfig(iterations=4, num_samples=16, num_elites=4, num_pi_trajs=4)
    jax.jit(lambda k: mppi.plan(k, value_fn, prior_fn, jnp.zeros((3, 2)), cfg))(jax.random.PRNGKey(1))
    jax.effects_barrier()
    assert len(priors) == 1 and len(heads) == 4
    for head in heads:
        np.testing.assert_array_equal(head, priors[0])


@pytest.mark.parametrize("action_size,expected", [(19, 3), (20, 5)])
def test_large_action_spaces_get_two_more_iterations(action_size, expected):
    """With 20 or more action dimensions MPPI runs cfg.iterations + 2 iterations (TD-MPC2's heuristic)."""
    calls, record = _recorder()

    def value_fn(actions, key):
        record(key)
        return -jnp.sum(actions ** 2, axis=(1, 2))

    cfg = mppi.MPPIConfig(iterations=3, num_samples=16, num_elites=4, num_pi_trajs=0)
    assert mppi.num_iterations(cfg, action_size) == expected
    jax.jit(lambda k: mppi.plan(k, value_fn, _no_prior, jnp.zeros((2, action_size)), cfg))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert len(calls) == expected


def test_non_finite_values_count_as_zero():
    """NaN values count as 0, as the reference's nan_to_num(0): prior sequences whose value is NaN beat
    candidates whose values are all below -1, so the plan follows them (with NaN as -1e9 it never would)."""
    target, prior_point = jnp.full((3, 2), -0.5), jnp.full((3, 2), 0.5)

    def value_fn(actions, key):
        values = -1.0 - jnp.sum((actions - target) ** 2, axis=(1, 2))
        return values.at[:4].set(jnp.nan)

    cfg = mppi.MPPIConfig(iterations=3, num_samples=32, num_elites=4, num_pi_trajs=4, temperature=50.0)
    prior_fn = lambda key: jnp.broadcast_to(prior_point, (4, 3, 2))
    _, mean, aux = mppi.plan(jax.random.PRNGKey(0), value_fn, prior_fn, jnp.zeros((3, 2)), cfg, eval_mode=True)
    np.testing.assert_allclose(mean, prior_point, atol=1e-3)
    np.testing.assert_allclose(aux["plan_action"], prior_point[0], atol=1e-6)
    assert float(aux["value"]) == 0.0


def test_first_action_adds_noise_only_in_training_and_clips():
    """The planners' shared last step: the sequence's first action, plus N(0, std^2) noise unless
    eval_mode, clipped to [-1, 1]; the planned action is returned before the noise."""
    seq = jnp.array([[0.9, -0.2], [0.0, 0.0]])
    key = jax.random.PRNGKey(3)
    action, planned = mppi.first_action(key, seq, 0.5, eval_mode=True)
    np.testing.assert_array_equal(action, seq[0])
    np.testing.assert_array_equal(planned, seq[0])
    action, planned = mppi.first_action(key, seq, jnp.array([0.5, 0.1]), eval_mode=False)
    expected = np.clip(seq[0] + jnp.array([0.5, 0.1]) * jax.random.normal(key, (2,)), -1, 1)
    np.testing.assert_allclose(action, expected, rtol=1e-6)
    np.testing.assert_array_equal(planned, seq[0])


def test_warm_start_shift_and_reset():
    """The warm start moves one step forward with a zero tail, and is zero after an episode ends."""
    mean = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(mppi.shift_warm_start(mean, jnp.array(False)), [[2, 3], [4, 5], [0, 0]])
    np.testing.assert_array_equal(mppi.shift_warm_start(mean, jnp.array(True)), np.zeros((3, 2)))


def test_invalid_planner_settings_are_rejected():
    """A bad setting is a one-line error naming the value and the allowed range; the prior's shape is checked."""
    with pytest.raises(ValueError, match=r"num_elites=100; allowed: 1 <= num_elites <= num_samples \(= 10\)"):
        mppi.MPPIConfig(num_samples=10, num_elites=100).validate()
    with pytest.raises(ValueError, match="min_std=3.0"):
        mppi.MPPIConfig(min_std=3.0).validate()
    cfg = mppi.MPPIConfig(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=4)
    with pytest.raises(ValueError, match=r"expected \(4, 3, 2\)"):
        mppi.plan(jax.random.PRNGKey(0), _quadratic(0.0), lambda k: jnp.zeros((4, 2, 2)), jnp.zeros((3, 2)), cfg)


def test_config_fields_are_unique_flags():
    """No MPPI setting is named like an agent flag (horizon, lr, batch_size, seed)."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(mppi.MPPIConfig)}
    assert not names & {"horizon", "lr", "batch_size", "seed"}
