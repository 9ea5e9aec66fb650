"""The amortised score network s_phi of MBDPO, its Monte-Carlo targets and score-only planning."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbdpo_jax.agents.mbdpo import MBDPO, MBDPOConfig
from mbdpo_jax.envs.base import EnvSpec
from mbdpo_jax.planners import mbd
from mbdpo_jax.planners.score import ScoreConfig, ScoreModel, monte_carlo_target, time_embedding
from mbdpo_jax.train import checkpoint
from mbdpo_jax.models.learner import LearnerConfig

TOY_PLANNER = mbd.MBDConfig(diffusion_steps=8, num_samples=64, num_elites=8, num_pi_trajs=0)
TOY_HORIZON = 2
TARGET = jnp.array([[0.5], [-0.4]])  # optimum of the toy objective over [H=2, A=1] sequences


def _toy_value(actions, key=None):
    return -jnp.sum((actions - TARGET) ** 2, axis=(1, 2))


def test_time_embedding_shape_range_and_distinct_steps():
    """time_embedding maps integer steps to [.., dim] vectors in [-1, 1] that differ from step to step."""
    emb = np.asarray(time_embedding(jnp.arange(1, 21), 64))
    assert emb.shape == (20, 64) and time_embedding(jnp.int32(3), 64).shape == (64,)
    assert np.abs(emb).max() <= 1.0
    dists = np.linalg.norm(emb[:, None] - emb[None], axis=-1) + np.eye(20) * 1e9
    assert dists.min() > 0.1


@pytest.mark.parametrize("seed", range(3))
def test_monte_carlo_target_matches_float64_reference(seed):
    """The score target equals the formula computed independently in float64 numpy: candidates
    clip(x_k / sqrt(abar) + sqrt((1 - abar) / abar) eps), J standardised with the unbiased std, top-k
    softmax weights, x0bar, score = (-x_k + sqrt(abar) x0bar) / (1 - abar)."""
    rng = np.random.default_rng(seed)
    n, elites, temp = 64, 8, 0.5
    x_k = rng.uniform(-1, 1, (3, 2))
    abar = float(rng.uniform(0.8, 0.999))
    w_lin, w_quad = rng.normal(size=(3, 2)), rng.uniform(0.5, 2, (3, 2))
    key = jax.random.PRNGKey(seed)
    value = lambda a, k: jnp.sum(w_lin * a - w_quad * a**2, axis=(1, 2))
    score, x0_bar = monte_carlo_target(key, value, jnp.asarray(x_k, jnp.float32), jnp.float32(abar), n, elites, temp)

    k_candidates, _ = jax.random.split(key)  # monte_carlo_target proposes with the first half of its key
    eps = np.asarray(jax.random.normal(k_candidates, (n, 3, 2)), np.float64)
    cand = np.clip(x_k / np.sqrt(abar) + np.sqrt((1 - abar) / abar) * eps, -1, 1)
    j = np.sum(w_lin * cand - w_quad * cand**2, axis=(1, 2))
    s = (j - j.mean()) / j.std(ddof=1)
    idx = np.argsort(-s)[:elites]
    w = np.exp((s[idx] - s[idx].max()) / temp)
    w /= w.sum()
    expected_bar = np.einsum("i,ihw->hw", w, cand[idx])
    expected = (-x_k + np.sqrt(abar) * expected_bar) / (1 - abar)
    np.testing.assert_allclose(np.asarray(x0_bar), expected_bar, atol=1e-5)
    np.testing.assert_allclose(np.asarray(score), expected, rtol=1e-3, atol=1e-3 / (1 - abar))


def _toy_model(lr=3e-3):
    return ScoreModel(ScoreConfig(score_hidden=(64, 64), score_samples=64, score_lr=lr), TOY_PLANNER,
                      horizon=TOY_HORIZON, latent_dim=4, action_size=1)


def _train_toy(model, steps=400, batch=128):
    """Fit s_phi on the fixed quadratic J with x0 uniform in [-1, 1]; returns (state, per-step losses)."""
    z = jnp.zeros((batch, 4))

    def step(state, key):
        k_pairs, k_mc, k_x = jax.random.split(key, 3)
        x0 = jax.random.uniform(k_x, (batch, 2, 1), minval=-1, maxval=1)
        k, x_k = model.training_pairs(k_pairs, x0)
        x0_bar = model.targets(k_mc, lambda _: _toy_value, z, x_k, k)
        return model.update(state, z, x_k, k, x0_bar)

    state, metrics = jax.jit(lambda s, ks: jax.lax.scan(step, s, ks))(
        model.init(jax.random.PRNGKey(0)), jax.random.split(jax.random.PRNGKey(1), steps))
    return state, np.asarray(metrics["score_loss"])


@pytest.fixture(scope="module")
def trained_toy():
    model = _toy_model()
    state, losses = _train_toy(model)
    return model, state, losses


def _precise_x0_bar(model, x_k, k):
    """A low-variance Monte-Carlo x0bar (4096 candidates, same elite fraction) per sample."""
    def one(x, step, key):
        return monte_carlo_target(key, _toy_value, x, model.abar(step), 4096, 512, TOY_PLANNER.temperature)[1]
    return jax.vmap(one)(x_k, k, jax.random.split(jax.random.PRNGKey(42), x_k.shape[0]))


def test_score_network_fits_the_monte_carlo_target(trained_toy):
    """On a fixed quadratic J the training loss falls by a large factor, the fitted x0bar is much closer
    to a precise Monte-Carlo estimate than the untrained one, and the score points toward the optimum."""
    model, state, losses = trained_toy
    assert losses[-50:].mean() < 0.3 * losses[:10].mean(), (losses[:10].mean(), losses[-50:].mean())
    x0 = jax.random.uniform(jax.random.PRNGKey(5), (256, 2, 1), minval=-1, maxval=1)
    k, x_k = model.training_pairs(jax.random.PRNGKey(6), x0)
    precise = _precise_x0_bar(model, x_k, k)
    z = jnp.zeros((256, 4))
    err_trained = float(jnp.mean((model.denoised(state.params, z, x_k, k) - precise) ** 2))
    untrained = model.init(jax.random.PRNGKey(0)).params
    err_untrained = float(jnp.mean((model.denoised(untrained, z, x_k, k) - precise) ** 2))
    assert err_trained < 0.1 * err_untrained, (err_trained, err_untrained)
    score = model.score(state.params, z, x_k, k).reshape(256, -1)
    toward = (jnp.sqrt(model.abar(k))[:, None, None] * TARGET - x_k).reshape(256, -1)
    cosine = jnp.sum(score * toward, -1) / (jnp.linalg.norm(score, axis=-1) * jnp.linalg.norm(toward, axis=-1))
    assert float(jnp.median(cosine)) > 0.9


def test_training_steps_are_the_planners_reverse_steps():
    """s_phi is trained at the schedule indices the planner's reverse steps use, k in 1..K-1 (MBDPO
    samples its score-training step in 1..K-1), all of which occur, with abar_k = mbd.schedule's k-th entry."""
    model = _toy_model()
    k, x_k = model.training_pairs(jax.random.PRNGKey(0), jnp.zeros((512, TOY_HORIZON, 1)))
    assert set(np.asarray(k).tolist()) == set(mbd.reverse_steps(TOY_PLANNER).tolist())
    assert x_k.shape == (512, TOY_HORIZON, 1)
    np.testing.assert_array_equal(model.abar(jnp.arange(8)), mbd.schedule(TOY_PLANNER)[1])


def test_invalid_score_settings_are_rejected():
    """A bad score-network setting is a one-line error naming the value and the allowed range."""
    with pytest.raises(ValueError, match=r"score_samples=0; allowed: score_samples >= 1"):
        ScoreConfig(score_samples=0).validate()
    with pytest.raises(ValueError, match=r"score_time_embed_dim=63; allowed: an even"):
        ScoreConfig(score_time_embed_dim=63).validate()
    with pytest.raises(ValueError, match=r"score_lr=0.0"):
        ScoreConfig(score_lr=0.0).validate()


def test_score_only_planning_with_the_trained_net_reaches_the_optimum(trained_toy):
    """Jitted score-only planning from a zero warm start lands near the optimum with the trained net,
    while the untrained net (score 0) stays at the warm start; outputs have the planner's shapes."""
    model, state, _ = trained_toy
    untrained = model.init(jax.random.PRNGKey(0))
    z = jnp.zeros(4)

    @jax.jit
    def plan(params, key):
        score_fn = lambda x, k: model.score(params, z, x, k)
        return mbd.plan_score_only(key, score_fn, jnp.zeros((2, 1)), TOY_PLANNER, eval_mode=True)

    action, x0, aux = plan(state.params, jax.random.PRNGKey(0))
    _, x0_untrained, _ = plan(untrained.params, jax.random.PRNGKey(0))
    gap = float(jnp.linalg.norm(x0 - TARGET))
    gap_untrained = float(jnp.linalg.norm(x0_untrained - TARGET))
    assert gap < 0.1 and gap < 0.2 * gap_untrained, (gap, gap_untrained)
    assert action.shape == (1,) and x0.shape == (2, 1)
    assert aux["elites"].shape == (1, 2, 1) and aux["weights"].shape == (1,) and bool(jnp.isnan(aux["value"]))
    a_train, _, aux_train = mbd.plan_score_only(jax.random.PRNGKey(0), lambda x, k: model.score(state.params, z, x, k),
                                                jnp.zeros((2, 1)), TOY_PLANNER, eval_mode=False)
    assert not np.allclose(a_train, aux_train["plan_action"])


def _agent(**overrides):
    spec = EnvSpec("test", obs_size=6, action_size=2, episode_length=100)
    planner = mbd.MBDConfig(diffusion_steps=4, num_samples=32, num_elites=4, num_pi_trajs=4)
    cfg = MBDPOConfig(learner=LearnerConfig(model_size="tiny", batch_size=32), planner=planner,
                      score=ScoreConfig(score_samples=16, score_batch=16))
    return MBDPO(dataclasses.replace(cfg, **overrides), spec)


def _batch(key, horizon=3, batch=32):
    obs = jax.random.normal(key, (horizon + 1, batch, 6))
    action = jnp.tanh(obs[:-1, :, :2])
    return {"obs": obs[:-1], "next_obs": obs[1:], "action": action, "plan_action": action,
            "planned": jnp.ones((horizon, batch)), "reward": obs[:-1, :, 2], "done": jnp.zeros((horizon, batch)),
            "end": jnp.zeros((horizon, batch))}


def test_mbdpo_update_trains_the_score_network_under_jit():
    """With use_score_network the jitted update reports a finite score loss and changes s_phi; without
    it the metrics have no score loss and the state has no score field (the default MBDPO layout)."""
    agent = _agent(use_score_network=True)
    state = agent.init(jax.random.PRNGKey(0))
    new, metrics = jax.jit(agent.update)(state, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    assert np.isfinite(float(metrics["score_loss"]))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.score.params),
                                                         jax.tree.leaves(state.score.params))]
    assert any(changed)
    off = _agent()
    off_state = off.init(jax.random.PRNGKey(0))
    _, off_metrics = jax.eval_shape(off.update, off_state, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    assert "score_loss" not in off_metrics and off_state.score is None


def test_score_only_agent_acts_without_the_monte_carlo_planner():
    """A score-only agent acts under jit with the usual output shapes, its untrained net (score 0) keeps
    the warm start up to the factor sqrt(alpha_1) that the reference's K-1 steps (k = K-1..1, started at
    sqrt(abar_{K-1})) leave, and its prior divergence is NaN (no sample-based planner distribution)."""
    agent = _agent(use_score_network=True, score_only=True)
    state = agent.init(jax.random.PRNGKey(0))
    warm = jnp.full((3, 2), 0.3)
    action, plan, aux = jax.jit(lambda o, p, k: agent.act(state, o, p, k, True))(jnp.ones(6), warm,
                                                                                jax.random.PRNGKey(1))
    assert action.shape == (2,) and plan.shape == (3, 2)
    np.testing.assert_allclose(plan, np.sqrt(1 - agent.cfg.planner.beta_start) * warm, rtol=1e-6)
    assert bool(jnp.isnan(aux["prior_divergence"]))


@pytest.mark.parametrize("use_score_network", [False, True])
def test_agent_state_round_trips_through_a_checkpoint(use_score_network, tmp_path):
    """MBDPO states with and without the score network save and restore exactly."""
    agent = _agent(use_score_network=use_score_network)
    state = agent.init(jax.random.PRNGKey(0))
    checkpoint.save(tmp_path, 1, state)
    template = agent.init(jax.random.PRNGKey(9))
    step, restored = checkpoint.restore_latest_good(tmp_path, template)
    assert step == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_invalid_score_options_are_rejected():
    """score_only without use_score_network names both options; a non-positive sample count is named;
    TD-MPC2's command line has no score options at all (they belong to MBDPO's config)."""
    from mbdpo_jax.agents.tdmpc2 import TDMPC2Config
    from mbdpo_jax.train.config import flat_fields

    with pytest.raises(ValueError, match="--score-only.*--use-score-network"):
        _agent(score_only=True)
    with pytest.raises(ValueError, match="score_samples=0"):
        _agent(use_score_network=True, score=ScoreConfig(score_samples=0))
    assert not any(name.startswith("score") for name in flat_fields(TDMPC2Config()))
