"""The sampled incoherence of a learned continuous-action policy against its own critic
(`analysis.deep_incoherence`): the estimator on cases with a known answer, the squashed-action density
convention, the agents' per-state estimates and the 'eval_incoherence' an evaluation logs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_online_config
from mbdpo_jax.agents.pwm import PWM, PWMConfig
from mbdpo_jax.agents.tdmpc2 import TDMPC2, TDMPC2Config
from mbdpo_jax.analysis.deep_incoherence import (IncoherenceConfig, policy_incoherence, sampled_incoherence,
                                                 squashed_gaussian_samples)
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.models import actor_critic as ac
from mbdpo_jax.models.learner import LearnerConfig
from mbdpo_jax.planners import latent
from mbdpo_jax.planners.mppi import MPPIConfig
from mbdpo_jax.train.runner import build_trainer


def _log_normal(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi)


# 1-D, on the real line: pi = N(0, 1), Q / delta = log N(a; 0.5, 1.2^2) + c, so softmax(Q / delta) is that
# Gaussian whatever c, and KL(pi || it) is closed form. 1.2^2 < 2 keeps the importance weights' variance finite.
M1, S1, M2, S2, C, DELTA = 0.0, 1.0, 0.5, 1.2, 3.7, 2.0
EXACT_KL = np.log(S2 / S1) + (S1**2 + (M1 - M2) ** 2) / (2 * S2**2) - 0.5  # 0.1163


def _gaussian_estimates(key, shape):
    a = M1 + S1 * jax.random.normal(key, shape)
    return sampled_incoherence(_log_normal(a, M1, S1), DELTA * (_log_normal(a, M2, S2) + C), DELTA)


def test_estimate_converges_to_the_exact_kl_and_is_biased_low_for_few_samples():
    """With 8 x 50,000 samples the estimate matches the closed-form KL within 0.005 (and ignores the
    constant c and the temperature delta, which log Z absorbs); with few samples its mean over 20,000
    states is below the exact value by many standard errors, less so as N grows (biased low, consistent)."""
    many = _gaussian_estimates(jax.random.PRNGKey(0), (8, 50_000))
    assert many.shape == (8,)
    assert abs(float(many.mean()) - EXACT_KL) < 0.005
    means = {}
    for n in (4, 64):
        est = np.asarray(_gaussian_estimates(jax.random.PRNGKey(n), (20_000, n)))
        means[n] = est.mean()
        assert EXACT_KL - means[n] > 5 * est.std() / np.sqrt(est.size), n
    assert means[4] < means[64] < EXACT_KL
    assert EXACT_KL - means[4] > 0.03  # 0.069 measured at N = 4


def test_estimate_is_zero_exactly_at_the_boltzmann_policy_and_positive_elsewhere():
    """pi = softmax(Q / delta) (Q = delta (log pi + c), delta != 1) gives 0 whatever N; a wrong
    temperature, a shifted mean or a wider target give > 0 (so forgetting log Z, the division by delta
    or the sign would fail here)."""
    a = jax.random.normal(jax.random.PRNGKey(1), (16,))
    log_pi = _log_normal(a, 0.0, 1.0)
    q = DELTA * (log_pi + C)
    np.testing.assert_allclose(float(sampled_incoherence(log_pi, q, DELTA)), 0.0, atol=1e-5)
    assert float(sampled_incoherence(log_pi, q, 1.0)) > 1e-3
    assert float(sampled_incoherence(log_pi, DELTA * (_log_normal(a, 0.7, 1.0) + C), DELTA)) > 1e-3
    assert float(sampled_incoherence(log_pi, DELTA * (_log_normal(a, 0.0, 1.5) + C), DELTA)) > 1e-3
    # and vmapped over states, as the agents use it
    batched = jax.vmap(sampled_incoherence, (0, 0, None))(jnp.stack([log_pi, log_pi]), jnp.stack([q, 0 * q]), DELTA)
    assert batched.shape == (2,) and abs(float(batched[0])) < 1e-5 and float(batched[1]) > 1e-3


def test_squashed_samples_carry_the_density_of_the_squashed_action_with_its_jacobian():
    """The log-density of a = tanh(u), u ~ N(m, s^2), is log N(atanh a; m, s) - log(1 - a^2) (checked in
    float64, and that it integrates to 1 over (-1, 1)); a Q equal to delta times it plus a constant then
    gives kappa 0, and the Gaussian density without the Jacobian does not. Masked dimensions are 0 and
    leave the density alone."""
    mean, log_std = jnp.array([0.3, -0.8]), jnp.log(jnp.array([0.5, 0.9]))
    actions, log_pi = squashed_gaussian_samples(jax.random.PRNGKey(2), mean, log_std, 64)
    assert actions.shape == (64, 2) and log_pi.shape == (64,) and bool(jnp.all(jnp.abs(actions) < 1))

    def reference(a):  # float64 numpy, per dimension [N, 2]
        a = np.asarray(a, np.float64)
        m, s = np.asarray(mean, np.float64), np.exp(np.asarray(log_std, np.float64))
        u = np.arctanh(a)
        return -0.5 * ((u - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi) - np.log(1 - a**2)

    np.testing.assert_allclose(log_pi, reference(actions).sum(-1), rtol=1e-4, atol=1e-4)
    grid = np.linspace(-1 + 1e-7, 1 - 1e-7, 2_000_001)[:, None].repeat(2, 1)
    mass = np.exp(reference(grid)).sum(0) * (grid[1, 0] - grid[0, 0])
    np.testing.assert_allclose(mass, [1.0, 1.0], atol=1e-3)

    q = DELTA * (jnp.asarray(reference(actions).sum(-1), jnp.float32) + C)
    assert abs(float(sampled_incoherence(log_pi, q, DELTA))) < 1e-4
    gauss_only = log_pi + jnp.sum(jnp.log(1 - actions**2), -1)  # the density of u, read as if of a
    assert float(sampled_incoherence(gauss_only, q, DELTA)) > 1e-2

    masked, log_masked = squashed_gaussian_samples(jax.random.PRNGKey(2), mean, log_std, 64, jnp.array([1.0, 0.0]))
    assert bool(jnp.all(masked[:, 1] == 0))
    np.testing.assert_allclose(log_masked, reference(actions)[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("samples,delta,message", [
    (-1, 1.0, "incoherence-samples must be 0 (off) or an integer >= 2, got -1"),
    (1, 1.0, "incoherence-samples must be 0 (off) or an integer >= 2, got 1"),
    (8, 0.0, "incoherence-delta must be a finite number > 0, got 0.0"),
    (8, float("inf"), "incoherence-delta must be a finite number > 0, got inf"),
])
def test_bad_settings_are_refused_in_one_line_naming_value_and_range(samples, delta, message):
    """Negative or single-sample counts (N = 1 always estimates 0) and non-positive or infinite
    temperatures are refused, by each agent's config too, before anything compiles."""
    bad = IncoherenceConfig(incoherence_samples=samples, incoherence_delta=delta)
    _assert_refused(bad, message)


def test_an_unknown_proposal_is_refused_naming_the_allowed_ones():
    _assert_refused(IncoherenceConfig(incoherence_proposal="gauss"),
                    "incoherence-proposal must be one of mixture, policy, got 'gauss'")


def _assert_refused(bad, message):
    for cfg in (bad, TDMPC2Config(incoherence=bad), PWMConfig(incoherence=bad)):
        with pytest.raises(ValueError) as info:
            cfg.validate()
        assert str(info.value) == message


def _quadrature_kl(mean, log_std, q_over_delta, points=200_001):
    """KL(pi || softmax(Q / delta)) on the 1-D action box (-1, 1) by the midpoint rule (float64)."""
    a = np.linspace(-1, 1, points + 1)
    a = 0.5 * (a[1:] + a[:-1])
    u, std = np.arctanh(a), np.exp(log_std)
    log_pi = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi) - np.log1p(-a**2)
    da = 2.0 / points
    log_target = q_over_delta(a) - np.log(np.sum(np.exp(q_over_delta(a))) * da)
    return float(np.sum(np.exp(log_pi) * (log_pi - log_target)) * da)


def test_the_mixture_proposal_recovers_the_kl_of_a_concentrated_policy_that_the_policy_proposal_misses():
    """A near-deterministic squashed policy (u ~ N(0.8, 0.05^2)) against a nearly flat Q (Q / delta =
    0.5 a): the KL is about log 2 - H(pi) (quadrature: ~3.1). With 32 samples, averaged over 200 states'
    draws, the defensive mixture (32 policy + 32 uniform samples) is within 0.1 of it, the policy-only
    estimate more than 1 below."""
    mean, log_std = jnp.array([0.8]), jnp.log(jnp.array([0.05]))
    exact = _quadrature_kl(0.8, np.log(0.05), lambda a: 0.5 * a)
    q_fn = lambda actions: 0.5 * actions[:, 0]
    estimate = lambda proposal: float(jnp.mean(jax.vmap(lambda k: policy_incoherence(
        k, mean, log_std, q_fn, IncoherenceConfig(incoherence_samples=32, incoherence_proposal=proposal)))(
        jax.random.split(jax.random.PRNGKey(0), 200))))
    assert 2.5 < exact < 3.5
    assert abs(estimate("mixture") - exact) < 0.1, (estimate("mixture"), exact)
    assert estimate("policy") < exact - 1.0, (estimate("policy"), exact)


def _tiny_tdmpc2(**incoherence):
    cfg = TDMPC2Config(learner=LearnerConfig(model_size="tiny", batch_size=4),
                       planner=MPPIConfig(iterations=2, num_samples=16, num_elites=4, num_pi_trajs=2),
                       incoherence=IncoherenceConfig(**incoherence))
    return TDMPC2(cfg, EnvSpec("test/tiny", 5, 2, 50))


def test_tdmpc2_prior_estimate_pairs_each_sample_with_q_at_that_action(monkeypatch):
    """At a latent z, the tdmpc2/mbdpo estimate samples the prior pi(.|z) and evaluates Q at the same
    squashed actions: with the Q ensemble replaced by delta (log pi(a|z) + c) it is 0, with the real
    ensemble it is finite and >= 0, and it is only reported in eval mode."""
    agent = _tiny_tdmpc2(incoherence_delta=0.5, incoherence_proposal="policy")
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    estimate = jax.jit(lambda params, obs, key: latent.prior_incoherence(
        agent.model, params, agent.model.encode(params, obs), key, agent.cfg.incoherence))
    kappa = estimate(state.params, jnp.ones(5), jax.random.PRNGKey(1))
    assert bool(jnp.isfinite(kappa)) and float(kappa) >= -1e-6

    def boltzmann_q(params, zs, actions, key, task=None, **kw):
        return 0.5 * (agent.model.pi_log_prob(params, zs, actions, task) + C)

    monkeypatch.setattr(agent.model, "q_value", boltzmann_q)
    estimate = jax.jit(lambda params, obs, key: latent.prior_incoherence(
        agent.model, params, agent.model.encode(params, obs), key, agent.cfg.incoherence))
    assert abs(float(estimate(state.params, jnp.ones(5), jax.random.PRNGKey(1)))) < 1e-4
    monkeypatch.undo()

    act = lambda ev: (lambda o, k: agent.act(state, o, agent.initial_act_carry(), k, ev))
    aux_eval = jax.eval_shape(act(True), jnp.ones(5), jax.random.PRNGKey(2))[2]
    aux_train = jax.eval_shape(act(False), jnp.ones(5), jax.random.PRNGKey(2))[2]
    assert aux_eval["incoherence"].shape == () and "incoherence" not in aux_train


def test_estimate_leaves_the_evaluated_actions_unchanged_and_zero_samples_switch_it_off():
    """The estimate draws from a key folded from the act key: with it on or off (0 samples) the eval-mode
    action and plan are the same, and off there is no 'incoherence' entry."""
    on, off = _tiny_tdmpc2(incoherence_samples=8), _tiny_tdmpc2(incoherence_samples=0)
    state = jax.jit(on.init)(jax.random.PRNGKey(0))
    both = jax.jit(lambda st, o, k: [agent.act(st, o, agent.initial_act_carry(), k, True) for agent in (on, off)])
    (a_on, plan_on, aux_on), (a_off, plan_off, aux_off) = both(state, jnp.ones(5), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a_on, a_off)
    np.testing.assert_array_equal(plan_on, plan_off)
    assert "incoherence" in aux_on and "incoherence" not in aux_off


@pytest.mark.parametrize("algo", ["tdmpc2", "pwm"])
def test_an_evaluation_logs_a_finite_eval_incoherence_next_to_eval_return(algo):
    """A tiny toy/pendulum evaluation of an untrained agent reports 'eval_incoherence' (the mean over the
    evaluated states), finite and >= 0; tdmpc2's also keeps 'eval_prior_divergence'; with
    --incoherence-samples 0 the entry is gone."""
    trainer = build_trainer(tiny_online_config(algo, incoherence_samples=8))
    key = jax.random.PRNGKey(0)
    agent_state = jax.jit(trainer.agent.init)(key)
    evaluation = jax.jit(trainer.evaluate)(agent_state, key)
    assert np.isfinite(float(evaluation["eval_incoherence"])) and float(evaluation["eval_incoherence"]) >= 0
    assert np.isfinite(float(evaluation["eval_return"]))
    assert ("eval_prior_divergence" in evaluation) == (algo == "tdmpc2")
    off = build_trainer(tiny_online_config(algo, incoherence_samples=0))
    assert "eval_incoherence" not in jax.eval_shape(off.evaluate, agent_state, key)


def test_pwm_estimate_is_of_the_stochastic_actor_against_its_one_step_q(monkeypatch):
    """PWM's estimate samples the actor's tanh-Gaussian (not the deterministic eval action) and scores the
    samples with r_hat + gamma min_j V_j(next z): replacing that Q by delta (log pi + c) gives 0."""
    spec = EnvSpec("test/tiny", 5, 2, 50)
    small = ac.ActorCriticConfig(actor_hidden=(32, 32), critic_hidden=(32,), critic_minibatches=1)
    agent = PWM(PWMConfig(learner=LearnerConfig(model_size="tiny", batch_size=4, horizon=4), actor_critic=small,
                          incoherence=IncoherenceConfig(incoherence_proposal="policy")), spec)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    z = jax.jit(agent.model.encode)(state.learner.params, jnp.ones(5))
    kappa = jax.jit(agent.actor_incoherence)(state, z, jax.random.PRNGKey(1))
    assert bool(jnp.isfinite(kappa)) and float(kappa) >= -1e-6
    q = jax.jit(agent.one_step_q)(state, state.learner.params, z, jnp.zeros((3, 2)))
    assert q.shape == (3,) and bool(jnp.all(q == q[0]))  # same action, same Q

    def boltzmann_q(st, params, z_, actions, task=None):
        mean, log_std = agent.actor.apply({"params": st.actor}, z_)
        u = jnp.arctanh(jnp.clip(actions, -0.999999, 0.999999))
        dens = _log_normal(u, mean, jnp.exp(log_std)) - jnp.log(1 - actions**2)
        return agent.cfg.incoherence.incoherence_delta * (dens.sum(-1) + C)

    monkeypatch.setattr(agent, "one_step_q", boltzmann_q)
    assert abs(float(jax.jit(agent.actor_incoherence)(state, z, jax.random.PRNGKey(1)))) < 1e-3
