"""The DA-MDP diffusion policy (mbdpo_jax.policies.diffusion).

Pinned down:
- per-step log pi(x_{t+1}|x_t, s) and log q(x_t|x_{t+1}) equal a float64 scipy re-implementation of
  the two Gaussian kernels (q with eta_{t+1}, and eta_{K-1} for t + 1 = K);
- the log-probs a sampled chain reports are the per-step ones, and its total is their sum;
- with u_theta = 0 (a zero output layer) the chain is linear-Gaussian: x_{t+1} = a_t x_t + w_t,
  a_t = 1 - eta_t / sigma_0^2, w_t ~ N(0, 2 eta_t), so Var x_K follows v_{t+1} = a_t^2 v_t + 2 eta_t,
  v_0 = sigma_0^2, per dimension;
- entropy identity (telescoping of the soft terms): with p the chain's joint over x_{0:K} and
  q(x_{0:K-1}|x_K) = prod_t q(x_t|x_{t+1}) a normalised conditional,
      H(x_K) = H(p_0) + E[-sum_t (log pi - log q)] + E_{x_K} KL(p(x_{0:K-1}|x_K) || q(x_{0:K-1}|x_K)),
  because log p(x_K) = log p(x_{0:K}) - log p(x_{0:K-1}|x_K) and log p(x_{0:K}) = log p_0(x_0) +
  sum_t log pi. In the linear-Gaussian case every term is closed form; the Monte-Carlo mean of the
  sampled -sum(log pi - log q) must match its closed form and satisfy the identity, hence the bound
  H(x_K) >= H(p_0) + E[entropy estimate];
- the ODE sampler is the deterministic map x + eta (f + 0.5 u); the SDE one adds N(0, 2 eta) noise;
- gradients w.r.t. every parameter through sampling are finite and match central finite differences
  in float64; vmap over states equals a loop; bad settings raise one-line ValueErrors naming them.
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from mbdpo_jax.policies import DiffusionPolicy, DiffusionPolicyConfig
from mbdpo_jax.envs.diffusion_augmented import entropy_estimate
from mbdpo_jax.policies.diffusion import dt_init

TINY = dict(hidden=(8, 8), time_features=4, time_out=4)
OBS, ACT = 3, 2


def policy(**overrides) -> DiffusionPolicy:
    return DiffusionPolicy(DiffusionPolicyConfig(**{**TINY, "steps": 4, **overrides}), OBS, ACT)


POLICY = policy(last_layer_scale=1.0)  # shared by most tests, so each function compiles once
N = 20_000  # chains per batch
SAMPLE_ONE = jax.jit(POLICY.sample_chain, static_argnums=3)
SAMPLE_BATCH = jax.jit(jax.vmap(POLICY.sample_chain, in_axes=(None, 0, 0, None)), static_argnums=3)


def batch_inputs(seed, states=None):
    """N states (random unless given one to repeat) and N keys."""
    keys = jax.random.split(jax.random.PRNGKey(seed), N)
    if states is None:
        return jax.random.normal(jax.random.PRNGKey(seed + 1), (N, OBS)), keys
    return jnp.broadcast_to(states, (N, OBS)), keys


@pytest.fixture(scope="module")
def params():
    """POLICY's initial parameters as numpy float32 leaves (cast per test)."""
    return jax.tree.map(np.asarray, jax.jit(POLICY.init)(jax.random.PRNGKey(0)))


def zero_score(params):
    """Params whose u_theta is identically 0 (zero output layer)."""
    head = params["score"]["params"]["head"]
    zeros = jax.tree.map(np.zeros_like, head)
    return {**params, "score": {"params": {**params["score"]["params"], "head": zeros}}}


def softplus(x):
    return np.log1p(np.exp(x))


def to64(tree):
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), tree)


def with_friction(params, values):
    """Params with softplus(friction) = values, so the dimensions differ."""
    return {**params, "friction": jnp.asarray(np.log(np.expm1(np.asarray(values))), params["dt"].dtype)}


def numpy_eta(params, t):
    """eta_t [..., A] for integer steps t [...]."""
    dt = softplus(np.asarray(params["dt"], np.float64)[np.asarray(t)])
    return dt[..., None] / softplus(np.asarray(params["friction"], np.float64))


def test_step_log_probs_match_scipy(params):
    with jax.enable_x64(True):
        pol, params = POLICY, to64(params)
        k, sigma2 = pol.cfg.steps, pol.cfg.sigma_0**2
        rng = np.random.default_rng(0)
        s, x, y = rng.normal(size=(k, OBS)), 2 * rng.normal(size=(k, ACT)), 2 * rng.normal(size=(k, ACT))
        t = np.arange(k)

        def all_three(p, s, x, y, t):
            return pol.score(p, s, x, t), pol.step_log_prob(p, s, x, y, t), pol.backward_log_prob(p, x, y, t)

        u, got_pi, got_q = jax.jit(jax.vmap(all_three, in_axes=(None, 0, 0, 0, 0)))(params, s, x, y, t)
        u = np.asarray(u)
        eta = numpy_eta(params, t)  # [K, A]
        want_pi = stats.norm.logpdf(y, x + eta * (-x / sigma2 + u), np.sqrt(2 * eta)).sum(-1)
        eta_b = numpy_eta(params, np.minimum(t + 1, k - 1))
        want_q = stats.norm.logpdf(x, y + eta_b * (-y / sigma2), np.sqrt(2 * eta_b)).sum(-1)
        np.testing.assert_allclose(got_pi, want_pi, rtol=1e-12)
        np.testing.assert_allclose(got_q, want_q, rtol=1e-12)


def test_init_schedule_and_near_zero_score():
    pol = policy()
    params = jax.jit(pol.init)(jax.random.PRNGKey(0))
    k = pol.cfg.steps
    r = (k - np.arange(k)) / k
    np.testing.assert_allclose(dt_init(pol.cfg), 0.125 * (r + (1 - r) * 0.17))
    np.testing.assert_allclose(softplus(np.asarray(params["dt"])), dt_init(pol.cfg), rtol=1e-5)
    np.testing.assert_allclose(softplus(np.asarray(params["friction"])), 0.25, rtol=1e-5)
    np.testing.assert_allclose(numpy_eta(params, 0), 0.5, rtol=1e-5)
    u = jax.jit(pol.score)(params, jnp.ones(OBS), 3 * jnp.ones(ACT), 2)
    assert u.shape == (ACT,) and float(jnp.max(jnp.abs(u))) < 1e-6


@pytest.mark.parametrize("mode", ["sde", "ode"])
def test_chain_log_probs_are_the_per_step_ones(mode, params):
    pol, k = POLICY, POLICY.cfg.steps
    s = jnp.linspace(-1.0, 1.0, OBS)
    chain = SAMPLE_ONE(params, s, jax.random.PRNGKey(2), mode)
    assert chain.latents.shape == (k + 1, ACT) and chain.log_pi.shape == chain.log_q.shape == (k,)
    x = chain.latents
    step = jax.jit(lambda p, x, y, t: (pol.step_log_prob(p, s, x, y, t), pol.backward_log_prob(p, x, y, t)))
    steps_pi, steps_q = np.array([step(params, x[t], x[t + 1], t) for t in range(k)]).T
    np.testing.assert_allclose(chain.log_pi, steps_pi, rtol=1e-5)
    np.testing.assert_allclose(chain.log_q, steps_q, rtol=1e-5)
    log_pi, log_q = jax.jit(pol.chain_log_probs)(params, s, x)
    np.testing.assert_allclose(log_pi, steps_pi, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(chain.log_pi), np.sum(steps_pi), rtol=1e-5)
    np.testing.assert_allclose(chain.log_prior, stats.norm.logpdf(x[0], 0, 3.0).sum(), rtol=1e-5)
    np.testing.assert_allclose(chain.action, np.tanh(x[-1]), rtol=1e-6)


def test_ode_is_deterministic_and_sde_is_not(params):
    pol, k = POLICY, POLICY.cfg.steps
    s = jnp.ones(OBS)
    states, keys = batch_inputs(3, s)

    @jax.jit
    def residuals(x):
        """x_{t+1} minus the ODE step and the SDE residual / sqrt(2 eta_t), for every chain and t."""
        def one(x_t, x_next, t):
            ode = x_next - pol.step_mean(params, s, x_t, t, 0.5)
            sde = (x_next - pol.step_mean(params, s, x_t, t)) / jnp.sqrt(2 * pol.eta(params, t))
            return ode, sde
        per_t = jax.vmap(jax.vmap(one, in_axes=(0, 0, None)), in_axes=(1, 1, 0), out_axes=1)
        return per_t(x[:, :-1], x[:, 1:], jnp.arange(k))

    ode_x = SAMPLE_BATCH(params, states, keys, "ode").latents
    ode_gap, _ = residuals(ode_x)
    np.testing.assert_allclose(ode_gap, 0.0, atol=1e-6)
    sde_x = SAMPLE_BATCH(params, states, keys, "sde").latents
    _, z = residuals(sde_x)  # [N, K, A], should be N(0, 1)
    np.testing.assert_allclose(jnp.std(z, axis=0), 1.0, atol=0.03)
    np.testing.assert_allclose(jnp.mean(z, axis=0), 0.0, atol=0.03)
    np.testing.assert_array_equal(ode_x[:, 0], sde_x[:, 0])  # same key, same x_0
    assert float(jnp.mean(jnp.abs(sde_x[:, -1] - ode_x[:, -1]))) > 0.1
    for mode, x in (("ode", ode_x), ("sde", sde_x)):  # reproducible for a key
        np.testing.assert_array_equal(SAMPLE_BATCH(params, states, keys, mode).latents, x)


def linear_gaussian_moments(eta, sigma2):
    """Per dimension: joint covariance of x_{0:K} [K+1, K+1], and q's chain x_{0:K-1} = M x_K + noise
    as (M [K], Q [K, K]), for a_t = 1 - eta_t / sigma2 (eta [K] of one dimension)."""
    k = len(eta)
    a = 1 - eta / sigma2
    v = np.empty(k + 1)
    v[0] = sigma2
    for t in range(k):
        v[t + 1] = a[t] ** 2 * v[t] + 2 * eta[t]
    cov = np.empty((k + 1, k + 1))
    for i in range(k + 1):
        for j in range(i, k + 1):
            cov[i, j] = cov[j, i] = np.prod(a[i:j]) * v[i]
    eta_b = eta[np.minimum(np.arange(k) + 1, k - 1)]  # q(x_t | x_{t+1}) uses eta_{t+1}
    b = 1 - eta_b / sigma2
    # backward chain from x_K: x_t = b_t x_{t+1} + n_t, n_t ~ N(0, 2 eta_b_t)
    m = np.array([np.prod(b[t:]) for t in range(k)])
    w = np.empty(k)  # Var(x_t | x_K) under q
    w[k - 1] = 2 * eta_b[k - 1]
    for t in range(k - 2, -1, -1):
        w[t] = b[t] ** 2 * w[t + 1] + 2 * eta_b[t]
    q = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):  # Cov(x_i, x_j | x_K) = prod_{i<=l<j} b_l * Var(x_j | x_K), i <= j
            q[i, j] = q[j, i] = np.prod(b[i:j]) * w[j]
    return cov, eta_b, b, m, q


def closed_form_terms(eta, sigma2):
    """(H(x_K), H(p_0), E[sum(log pi - log q)], E KL(posterior || q)) of one dimension."""
    cov, eta_b, b, m, q = linear_gaussian_moments(eta, sigma2)
    k = len(eta)
    h_joint = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    h_prior = 0.5 * np.log(2 * np.pi * np.e * sigma2)
    h_last = 0.5 * np.log(2 * np.pi * np.e * cov[k, k])
    sq = np.array([cov[t, t] - 2 * b[t] * cov[t, t + 1] + b[t] ** 2 * cov[t + 1, t + 1] for t in range(k)])
    e_log_q = np.sum(-0.5 * np.log(2 * np.pi * 2 * eta_b) - 0.5 * sq / (2 * eta_b))
    e_ratio = -h_joint + h_prior - e_log_q  # E[sum log pi] = E[log p_joint] - E[log p_0]
    gain = cov[:k, k] / cov[k, k]  # posterior p(x_{0:K-1} | x_K): mean gain x_K, covariance s
    s = cov[:k, :k] - np.outer(cov[:k, k], cov[:k, k]) / cov[k, k]
    q_inv = np.linalg.inv(q)
    d = gain - m
    kl = 0.5 * (np.trace(q_inv @ s) + d @ q_inv @ d * cov[k, k] - k
                + np.linalg.slogdet(q)[1] - np.linalg.slogdet(s)[1])
    return h_last, h_prior, e_ratio, kl, cov[k, k]


def test_linear_gaussian_marginal_and_entropy_identity(params):
    pol = POLICY
    params = with_friction(zero_score(params), [0.25, 0.6])
    s = jnp.ones(OBS)
    assert float(jnp.max(jnp.abs(pol.score(params, s, jnp.ones(ACT), 1)))) == 0.0
    chains = SAMPLE_BATCH(params, *batch_inputs(5, s), "sde")
    sigma2 = pol.cfg.sigma_0**2
    eta = numpy_eta(params, np.arange(pol.cfg.steps))  # [K, A]
    terms = [closed_form_terms(eta[:, i], sigma2) for i in range(ACT)]
    h_last, h_prior, e_ratio, kl, var_last = (np.array(col) for col in zip(*terms))
    # marginal of x_K: N(0, v_K) per dimension (relative standard error of a variance: sqrt(2 / N))
    x_last = np.asarray(chains.latents[:, -1], np.float64)
    np.testing.assert_allclose(np.var(x_last, axis=0), var_last, rtol=5 * np.sqrt(2 / N))
    np.testing.assert_allclose(np.mean(x_last, axis=0), 0.0, atol=5 * np.sqrt(var_last.max() / N))
    # the identity holds exactly in closed form, with a non-negative gap (the bound)
    np.testing.assert_allclose(h_last, h_prior - e_ratio + kl, rtol=1e-10)
    assert np.all(kl >= 0) and np.all(h_last >= h_prior - e_ratio)
    # the sampled log-ratios estimate the closed-form E[sum(log pi - log q)], and so the entropy
    ratio = np.asarray(jnp.sum(chains.log_pi - chains.log_q, axis=-1), np.float64)
    err = 5 * ratio.std() / np.sqrt(N)
    assert abs(ratio.mean() - e_ratio.sum()) < err, (ratio.mean(), e_ratio.sum(), err)
    mc_entropy = h_prior.sum() + entropy_estimate(chains.log_pi, chains.log_q).mean() + kl.sum()
    assert abs(float(mc_entropy) - h_last.sum()) < err


@pytest.mark.parametrize("mode", ["sde", "ode"])
def test_gradients_match_finite_differences(mode, params):
    with jax.enable_x64(True):
        pol, params = POLICY, to64(params)
        s, key = jnp.array([0.3, -0.2, 0.5]), jax.random.PRNGKey(7)

        def loss(p):
            chain = pol.sample_chain(p, s, key, mode=mode)
            return jnp.sum(chain.action) + 0.1 * jnp.sum(chain.log_pi - chain.log_q)

        flat, unravel = ravel_pytree(params)
        value_and_grad = jax.jit(jax.value_and_grad(lambda v: loss(unravel(v))))  # one compile
        flat_grad = value_and_grad(flat)[1]
        grads = unravel(flat_grad)
        assert bool(jnp.all(jnp.isfinite(flat_grad)))
        for name in ("dt", "friction"):
            assert float(jnp.max(jnp.abs(grads[name]))) > 0
        assert float(jnp.max(jnp.abs(grads["score"]["params"]["head"]["kernel"]))) > 0
        direction = jax.random.normal(jax.random.PRNGKey(8), flat.shape)
        h = 1e-5
        plus, minus = (value_and_grad(flat + sign * h * direction)[0] for sign in (1, -1))
        numeric = (plus - minus) / (2 * h)
        np.testing.assert_allclose(float(jnp.dot(flat_grad, direction)), float(numeric), rtol=1e-6)


def test_vmap_over_states_matches_loop(params):
    states, keys = batch_inputs(7)
    batched = SAMPLE_BATCH(params, states, keys, "sde")
    for i in range(3):
        single = SAMPLE_ONE(params, states[i], keys[i], "sde")
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("sigma_0", 0.0), ("dt_scale", -0.1), ("dt_schedule", "cosine"), ("dt_min", 1.5),
    ("friction", 0.0), ("hidden", ()), ("time_features", 0), ("time_out", 0), ("last_layer_scale", -1.0),
])
def test_bad_settings_raise_clear_errors(field, value):
    cfg = DiffusionPolicyConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}=") as info:
        cfg.validate()
    assert "allowed" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=field):
        DiffusionPolicy(cfg, OBS, ACT)


def test_unknown_mode_raises():
    pol = policy()
    with pytest.raises(ValueError, match="mode 'euler'; allowed: sde or ode"):
        pol.sample_chain({}, jnp.ones(OBS), jax.random.PRNGKey(0), mode="euler")
