"""The model-based reverse-diffusion planner (MBDPO) against float64 references, baselines and the
reference implementation's behaviour."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.planners import mbd, mppi, score


def _no_prior(key):
    raise AssertionError("prior_fn must not be called when num_pi_trajs is 0")


def _recorder():
    """A list and a function that appends its (runtime) arguments to it from inside jitted code."""
    seen = []

    def record(*xs):
        jax.debug.callback(lambda *v: seen.append(tuple(np.asarray(a, np.float64) for a in v)), *xs, ordered=True)
    return seen, record


def _numpy_schedule(cfg):
    """(alpha_k, abar_k), k = 0..K-1, in float64."""
    alphas = 1.0 - np.linspace(cfg.beta_start, cfg.beta_end, cfg.diffusion_steps)
    return alphas, np.cumprod(alphas)


def _numpy_weights(values, num_elites, temperature):
    """MBDPO's weights in float64: J standardised over all candidates with the unbiased std (below 1e-4
    counts as 1), then a softmax over the top-k of standardised J / temperature."""
    std = values.std(ddof=1)
    z = (values - values.mean()) / (std if std >= 1e-4 else 1.0)
    idx = np.argsort(-z)[:num_elites]
    w = np.exp((z[idx] - z[idx].max()) / temperature)
    return w / w.sum(), idx


def _numpy_reverse_step(x_k, candidates, values, alpha_k, abar_k, num_elites, temperature):
    """One k -> k-1 step of the module docstring's equations, written independently in float64 numpy."""
    w, idx = _numpy_weights(values, num_elites, temperature)
    x0_bar = np.einsum("i,ihw->hw", w, candidates[idx])
    score_k = (-x_k + np.sqrt(abar_k) * x0_bar) / (1 - abar_k)
    return (x_k + (1 - abar_k) * score_k) / np.sqrt(alpha_k), w


@pytest.mark.parametrize("seed", range(3))
def test_reverse_step_matches_float64_reference(seed):
    """One k -> k-1 update and its elite weights equal an independent float64 implementation."""
    rng = np.random.default_rng(seed)
    cfg = mbd.MBDConfig(num_samples=128, num_elites=16, temperature=0.5)
    alphas, abars = _numpy_schedule(cfg)
    k = int(rng.integers(1, cfg.diffusion_steps))
    x_k = rng.uniform(-1, 1, (3, 2))
    candidates = rng.uniform(-1, 1, (128, 3, 2))
    values = rng.normal(size=128) * 3
    expected, expected_w = _numpy_reverse_step(x_k, candidates, values, alphas[k], abars[k], 16, 0.5)
    got, _, weights, _ = mbd.reverse_step(jnp.asarray(x_k, jnp.float32), jnp.asarray(candidates, jnp.float32),
                                          jnp.asarray(values, jnp.float32), alphas[k], abars[k], cfg)
    np.testing.assert_allclose(np.asarray(weights), expected_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_tiny_value_spread_is_not_amplified():
    """A spread of J below 1e-4 is not divided out (its std counts as 1): the elite weights stay
    uniform instead of turning noise in J into a sharp preference."""
    values = 3.0 + 1e-5 * jax.random.normal(jax.random.PRNGKey(0), (64,))
    weights, _ = mbd.elite_weights(values, 8, 0.5)
    np.testing.assert_allclose(weights, 1 / 8, rtol=1e-3)


def test_schedule_is_linear_beta():
    """alpha_k = 1 - beta_k with beta linear from 1e-4 to 1e-2 over 20 steps; abar is their product."""
    alphas, abars = mbd.schedule(mbd.MBDConfig())
    betas = 1 - np.asarray(alphas)
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 1e-2], rtol=1e-3)
    np.testing.assert_allclose(np.diff(betas), np.diff(betas)[0], rtol=1e-3)
    np.testing.assert_allclose(abars[-1], np.prod(1 - np.linspace(1e-4, 1e-2, 20)), rtol=1e-5)
    np.testing.assert_array_equal(mbd.reverse_steps(mbd.MBDConfig(diffusion_steps=4)), [3, 2, 1])


# A short schedule whose adjacent noise levels differ by 30-50%, so using the wrong abar shows.
REPLAY = mbd.MBDConfig(diffusion_steps=4, beta_start=0.01, beta_end=0.06, num_samples=8192, num_elites=16,
                       num_pi_trajs=4, temperature=0.5)


def _median_and_spread(eps):
    """Median and IQR / 1.349 of pooled standardised draws: 0 and 1 for N(0, 1), unchanged by the clip
    to [-1, 1] as long as each entry's quartiles lie inside it."""
    q1, med, q3 = np.quantile(eps, [0.25, 0.5, 0.75])
    return med, (q3 - q1) / 1.349


def test_full_plan_matches_a_float64_replay_of_the_reference_chain():
    """The whole plan, replayed in float64 from the candidates and values it saw: x starts at
    sqrt(abar_{K-1}) * warm start, the K - 1 steps use k = K-1, ..., 1, each step's random candidates are
    centred on x_k / sqrt(abar_k) with spread sqrt((1 - abar_k) / abar_k), each step draws fresh prior
    sequences (its first candidates) and a fresh value key, and the plan is the clipped x_0."""
    seen, record = _recorder()
    priors, record_prior = _recorder()
    target = jnp.full((3, 2), 0.3)

    def value_fn(actions, key):
        values = -jnp.sum((actions - target) ** 2, axis=(1, 2))
        record(actions, values, key)
        return values

    def prior_fn(key):
        seqs = jax.random.uniform(key, (4, 3, 2), minval=-0.5, maxval=0.5)
        record_prior(seqs)
        return seqs

    warm = np.full((3, 2), 0.6)  # one sign everywhere, so a wrong initial abar shifts every centre alike
    _, x0, aux = jax.jit(lambda k: mbd.plan(k, value_fn, prior_fn, jnp.asarray(warm, jnp.float32), REPLAY,
                                            eval_mode=True))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    K = REPLAY.diffusion_steps
    assert len(seen) == K - 1 and len(priors) == K - 1
    assert len({keys.tobytes() for _, _, keys in seen}) == K - 1
    assert len({p[0].tobytes() for p in priors}) == K - 1
    alphas, abars = _numpy_schedule(REPLAY)
    x = np.sqrt(abars[K - 1]) * warm
    for (cands, values, _), (prior,), k in zip(seen, priors, range(K - 1, 0, -1)):
        np.testing.assert_array_equal(cands[:4], prior)
        eps = (cands[4:] - x / np.sqrt(abars[k])) / np.sqrt((1 - abars[k]) / abars[k])
        median, spread = _median_and_spread(eps)
        assert abs(median) < 0.025 and abs(spread - 1) < 0.05, (k, median, spread)
        x, _ = _numpy_reverse_step(x, cands, values, alphas[k], abars[k], REPLAY.num_elites, REPLAY.temperature)
    np.testing.assert_allclose(np.asarray(x0), np.clip(x, -1, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aux["plan_action"], np.clip(x, -1, 1)[0], rtol=1e-4, atol=1e-5)


def test_score_only_planning_follows_the_same_steps():
    """plan_score_only starts at sqrt(abar_{K-1}) * warm start, calls the score at k = K-1, ..., 1 and
    matches a float64 replay of x_{k-1} = (x_k + (1 - abar_k) s(x_k, k)) / sqrt(alpha_k), clipped."""
    steps, record = _recorder()

    def score_fn(x, k):
        record(k)
        return -(x - 0.3) * (1.0 + k)

    warm = np.full((3, 2), -0.2)
    _, x0, _ = jax.jit(lambda key: mbd.plan_score_only(key, score_fn, jnp.asarray(warm, jnp.float32), REPLAY,
                                                       eval_mode=True))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    K = REPLAY.diffusion_steps
    assert [int(s[0]) for s in steps] == list(range(K - 1, 0, -1))
    alphas, abars = _numpy_schedule(REPLAY)
    x = np.sqrt(abars[K - 1]) * warm
    for k in range(K - 1, 0, -1):
        x = (x + (1 - abars[k]) * (-(x - 0.3) * (1.0 + k))) / np.sqrt(alphas[k])
    np.testing.assert_allclose(np.asarray(x0), np.clip(x, -1, 1), rtol=1e-5, atol=1e-6)


def test_non_finite_values_count_as_zero():
    """NaN values count as 0, as the reference's nan_to_num(nan=0): prior sequences whose value is NaN
    beat candidates whose values are all below -1, so the plan follows them (as -1e9 it never would)."""
    target, prior_point = jnp.full((3, 2), -0.5), jnp.full((3, 2), 0.5)

    def value_fn(actions, key):
        values = -1.0 - jnp.sum((actions - target) ** 2, axis=(1, 2))
        return values.at[:4].set(jnp.nan)

    cfg = mbd.MBDConfig(diffusion_steps=6, num_samples=32, num_elites=4, num_pi_trajs=4, temperature=0.05)
    prior_fn = lambda key: jnp.broadcast_to(prior_point, (4, 3, 2))
    _, x0, aux = mbd.plan(jax.random.PRNGKey(0), value_fn, prior_fn, jnp.zeros((3, 2)), cfg, eval_mode=True)
    np.testing.assert_allclose(x0, prior_point, atol=1e-3)
    assert abs(float(aux["value"])) < 1e-3


def _multimodal(centers, heights):
    """J(x) = max_j heights_j - ||x - c_j||^2: several local optima, one global one."""
    def value(actions, key=None):
        d = jnp.sum((actions[:, None] - centers[None]) ** 2, axis=(2, 3))
        return jnp.max(heights[None] - d, axis=1)
    return value


def test_diffusion_planner_beats_random_search_on_a_multimodal_objective():
    """With the same number of objective evaluations, reverse diffusion gets far closer to the global
    optimum of a 4-mode objective in 12 dimensions than the best of uniformly random sequences."""
    cfg = mbd.MBDConfig(num_samples=64, num_elites=8, num_pi_trajs=0)
    budget = (cfg.diffusion_steps - 1) * cfg.num_samples
    gaps_mbd, gaps_random = [], []
    for seed in range(5):
        k_c, k_p, k_r = jax.random.split(jax.random.PRNGKey(seed), 3)
        centers = 0.6 * jnp.sign(jax.random.normal(k_c, (4, 3, 4)))
        f = _multimodal(centers, jnp.array([1.5, 0.0, 0.0, 0.0]))
        _, x0, _ = mbd.plan(k_p, f, _no_prior, jnp.zeros((3, 4)), cfg, eval_mode=True)
        gaps_mbd.append(1.5 - float(f(x0[None])[0]))
        rand = jax.random.uniform(k_r, (budget, 3, 4), minval=-1, maxval=1)
        gaps_random.append(1.5 - float(f(rand).max()))
    assert np.mean(gaps_mbd) < 0.05 * np.mean(gaps_random), (gaps_mbd, gaps_random)
    assert sum(g < 0.05 for g in gaps_mbd) >= 4, gaps_mbd  # lands in the global mode, not a local one


def test_warm_start_and_prior_candidates_are_used():
    """A prior sequence at the optimum pulls the plan onto it; exploration noise only in training."""
    target = jnp.full((3, 2), 0.4)
    cfg = mbd.MBDConfig(num_samples=32, num_elites=4, num_pi_trajs=4, temperature=0.05)
    f = lambda a, key: -jnp.sum((a - target) ** 2, axis=(1, 2))
    prior_fn = lambda key: jnp.broadcast_to(target, (4, 3, 2))
    a_eval, x0, aux = mbd.plan(jax.random.PRNGKey(0), f, prior_fn, jnp.zeros((3, 2)), cfg, eval_mode=True)
    np.testing.assert_allclose(x0, target, atol=0.02)
    np.testing.assert_allclose(a_eval, aux["plan_action"])
    a_train, _, aux_train = mbd.plan(jax.random.PRNGKey(0), f, prior_fn, jnp.zeros((3, 2)), cfg, eval_mode=False)
    assert not np.allclose(a_train, aux_train["plan_action"])
    assert aux["elites"].shape == (4, 3, 2) and aux["weights"].shape == (4,)


def test_invalid_settings_are_rejected():
    """A bad diffusion setting is a one-line error naming the value and the allowed range."""
    with pytest.raises(ValueError, match=r"diffusion_steps=1; allowed: diffusion_steps >= 2"):
        mbd.MBDConfig(diffusion_steps=1).validate()
    with pytest.raises(ValueError, match=r"num_pi_trajs=64; allowed: 0 <= num_pi_trajs < num_samples \(= 64\)"):
        mbd.MBDConfig(num_samples=64, num_elites=8, num_pi_trajs=64).validate()
    with pytest.raises(ValueError, match="beta_start=0.5"):
        mbd.MBDConfig(beta_start=0.5, beta_end=0.1).validate()


def test_config_fields_are_unique_flags():
    """MBD and score-network settings share one command line with the agent's: no name is repeated
    between them, and none is horizon, lr, batch_size or seed; MPPI's never meet MBD's on one line."""
    mbd_names = {f.name for f in dataclasses.fields(mbd.MBDConfig)}
    score_names = {f.name for f in dataclasses.fields(score.ScoreConfig)}
    mppi_names = {f.name for f in dataclasses.fields(mppi.MPPIConfig)}
    assert not mbd_names & score_names and not mppi_names & score_names
    assert not (mbd_names | score_names | mppi_names) & {"horizon", "lr", "batch_size", "seed"}
